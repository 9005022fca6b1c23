"""Workers hand batches over through the loader's shared-memory ring: every batch the caller
holds stays intact while later ones arrive, an abandoned epoch does not block the next, a worker
waiting for a slot gives up when the workers are stopped, and without shared memory for the ring
the loader falls back to a segment per batch."""
from __future__ import annotations

import logging

import pytest
import torch

from interbert.data.loading import loader as loader_module
from interbert.data.loading.batch_ring import BatchRing, BatchRingClosed, RingView
from interbert.data.loading.loader import build_loader
from interbert.data.pretraining.dataset import PretrainingDataset
from interbert.data.pretraining.tasks import PretrainingTasks


@pytest.fixture(scope="module")
def dataset(synth_corpus, vocab_file):
    tasks = PretrainingTasks(mrm_soft_labels=True)  # two arrays per batch in the ring
    return PretrainingDataset(synth_corpus / "features", synth_corpus / "captions.jsonl", vocab_file, tasks=tasks)


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
                                    for x, y in zip(a, b))


def test_batches_held_by_the_caller_survive_the_ring_reuse(dataset):
    expected = list(build_loader(dataset, batch_size=16, seed=3, num_workers=0))
    loader = build_loader(dataset, batch_size=16, seed=3, num_workers=2)
    held = list(loader)  # 15 batches through 2 workers x 4 slots: every slot is reused
    assert loader._ring.slots == 4 and len(held) == 15
    assert same(expected, held)
    assert held[0]["mrm_soft_labels"].dtype == torch.float16 and held[0]["region_features"].dtype == torch.float16
    assert not loader._ring.busy.any()  # every slot freed at the epoch's end


def test_an_abandoned_epoch_does_not_block_the_next(dataset):
    expected = list(build_loader(dataset, batch_size=16, seed=3, num_workers=0))
    loader = build_loader(dataset, batch_size=16, seed=3, num_workers=1, prefetch_factor=2)
    iterator = iter(loader)
    next(iterator)  # the worker has filled the slots it may; then the caller walks away
    del iterator
    loader.sampler.consumed = 0
    assert same(expected, list(loader))


def test_a_worker_waiting_for_a_slot_gives_up_when_the_ring_closes():
    ring = BatchRing(workers=1, slots=1, slot_bytes=64)
    ring.claim(0)
    sealed = ring.seal({"x": ring.tensor((4,), torch.float32), "y": torch.zeros(2)})
    assert isinstance(sealed["x"], RingView) and isinstance(sealed["y"], torch.Tensor)
    ring.close()
    with pytest.raises(BatchRingClosed):
        ring.claim(0)  # the slot is still held, as if the training process had not copied it
    ring.unseal(sealed)
    ring.claim(0)  # free again


def test_without_shared_memory_for_the_ring_each_batch_gets_its_own(dataset, monkeypatch, caplog):
    def no_memory(*args, **kwargs):
        raise RuntimeError("unable to allocate shared memory")

    monkeypatch.setattr(loader_module, "BatchRing", no_memory)
    expected = list(build_loader(dataset, batch_size=16, seed=3, num_workers=0))
    with caplog.at_level(logging.WARNING, logger="interbert.data"):
        got = list(build_loader(dataset, batch_size=16, seed=3, num_workers=1))
    assert same(expected, got)
    assert "no shared memory for the data-loader workers' batch ring" in caplog.text and "--shm-size" in caplog.text
