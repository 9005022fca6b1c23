"""The zero-copy hand-off (``build_loader(..., zero_copy=True)``), with real DataLoader workers and
real shared memory: the batches equal the in-process loader's, lie in the ring (no array crosses
the process boundary as a segment of its own, none is copied on the training side), every slot is
free again once the iteration ends or stops, nothing of the shared memory outlives the loader, a
killed worker ends the iteration with one line naming it, and the resume position does not depend
on the mode."""
from __future__ import annotations

import functools
import gc
import multiprocessing
import os
import signal
import time
import weakref

import pytest
import torch
from torch.multiprocessing import reductions

from interbert.batch_contract import BATCH_KEYS
from interbert.data.loading import loader as loader_module
from interbert.data.loading.batch_ring import BatchRing, RingView
from interbert.data.loading.loader import DataLoaderWorkerError, build_loader
from interbert.data.pretraining.dataset import PretrainingDataset
from interbert.data.pretraining.tasks import PretrainingTasks
from interbert.errors import UserError

BATCH = 16  # 240 train captions: 15 batches, through 2 workers x 4 slots


@pytest.fixture(scope="module")
def dataset(synth_corpus, vocab_file):
    tasks = PretrainingTasks(mrm_soft_labels=True)  # every key of the batch contract
    return PretrainingDataset(synth_corpus / "features", synth_corpus / "captions.jsonl", vocab_file, tasks=tasks)


@pytest.fixture(scope="module")
def expected(dataset):
    """The in-process loader's batches of epoch 0, seed 3."""
    return list(build_loader(dataset, batch_size=BATCH, seed=3, num_workers=0))


def in_ring(tensor: torch.Tensor, ring: BatchRing) -> bool:
    start = ring.buffers.data_ptr()
    first = tensor.data_ptr()
    return start <= first and first + tensor.numel() * tensor.element_size() <= start + ring.buffers.numel()


def same_batch(got: dict, want: dict) -> bool:
    return got.keys() == want.keys() and all(torch.equal(got[key], want[key]) for key in want)


def shared_memory_fds() -> int:
    """Shared-memory segments this process holds open (torch keeps one descriptor per segment)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("/dev/shm/")
        except OSError:  # the descriptor listdir itself used, closed since
            pass
    return count


@pytest.fixture
def segments_received(monkeypatch):
    """How many shared-memory segments the training process has received from workers: every
    tensor a worker returns arrives through one of these (looked up by name when unpickled)."""
    received = []
    for name in ("rebuild_storage_fd", "rebuild_storage_filename"):
        original = getattr(reductions, name)

        def counting(*args, original=original, **kwargs):
            received.append(1)
            return original(*args, **kwargs)

        monkeypatch.setattr(reductions, name, functools.wraps(original)(counting))
    return received


def test_zero_copy_batches_equal_the_in_process_ones_and_lie_in_the_ring(dataset, expected, segments_received):
    loader = build_loader(dataset, batch_size=BATCH, seed=3, num_workers=2, zero_copy=True)
    count = 0
    for got, want in zip(loader, expected):
        ring = loader._ring
        assert set(got) == set(BATCH_KEYS) and same_batch(got, want)  # checked before the next fetch frees it
        assert all(in_ring(value, ring) for value in got.values())  # used where the worker built it: no copy
        count += 1
    assert count == len(expected) == 15 > ring.workers * ring.slots  # every slot was reused
    assert not segments_received  # only RingView markers crossed: no array came as a segment of its own
    assert not ring.busy.any()  # the epoch is over: every slot free


def test_the_copying_mode_gives_the_same_batches_and_sends_no_segment_either(dataset, expected, segments_received):
    loader = build_loader(dataset, batch_size=BATCH, seed=3, num_workers=2)
    held = list(loader)  # the caller keeps every batch
    assert all(same_batch(got, want) for got, want in zip(held, expected)) and len(held) == len(expected)
    assert not any(in_ring(value, loader._ring) for batch in held for value in batch.values())
    assert not segments_received


def test_without_the_ring_each_array_is_a_segment_of_its_own(dataset, expected, segments_received, monkeypatch):
    """The counter sees segments when there are some (the fallback for a too small /dev/shm)."""
    def no_memory(*args, **kwargs):
        raise RuntimeError("unable to allocate shared memory")

    monkeypatch.setattr(loader_module, "BatchRing", no_memory)
    batch = next(iter(build_loader(dataset, batch_size=BATCH, seed=3, num_workers=1, zero_copy=True)))
    assert same_batch(batch, expected[0])
    assert len(segments_received) >= len(BATCH_KEYS)


def test_a_slot_holds_the_largest_batch_the_dataset_can_build(dataset, expected):
    bounds = dataset.batch_arrays(BATCH)
    assert set(bounds) == set(BATCH_KEYS)
    for batch in expected:
        for key, value in batch.items():
            shape, dtype = bounds[key]
            assert value.dtype == dtype and value.dim() == len(shape)
            assert all(size <= bound for size, bound in zip(value.shape, shape))


def test_slots_are_freed_when_an_iteration_stops_and_nothing_outlives_the_loader(dataset, expected):
    fds_before, shm_before = shared_memory_fds(), set(os.listdir("/dev/shm"))
    loader = build_loader(dataset, batch_size=BATCH, seed=3, num_workers=2, zero_copy=True)
    iterator = iter(loader)
    batches = [next(iterator) for _ in range(3)]  # the workers have filled the slots they may
    workers = {process.pid for process in multiprocessing.active_children()}
    ring = loader._ring
    assert ring.busy.any()
    iterator.close()  # the caller walks away mid-epoch
    assert not ring.busy.any()  # the batch it held and those built ahead are all free
    loader.sampler.consumed = 0
    assert all(same_batch(got, want) for got, want in zip(loader, expected))
    assert not ring.busy.any()
    assert shared_memory_fds() == fds_before + 3  # the ring's own segments (slots, busy flags, closed flag)
    gone = weakref.ref(ring)
    del loader, iterator, batches, ring
    gc.collect()
    assert gone() is None and shared_memory_fds() == fds_before
    ours = {os.getpid(), *workers}
    left = [name for name in set(os.listdir("/dev/shm")) - shm_before
            if name.startswith("torch_") and int(name.split("_")[1]) in ours]
    assert not left


def test_a_killed_worker_ends_the_iteration_with_one_line_naming_it(dataset):
    loader = build_loader(dataset, batch_size=BATCH, seed=3, num_workers=2, zero_copy=True)
    before = {process.pid for process in multiprocessing.active_children()}
    iterator = iter(loader)
    next(iterator)
    workers = sorted(process.pid for process in multiprocessing.active_children() if process.pid not in before)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)

    def hang(signum, frame):
        raise AssertionError("the iteration hangs after a worker was killed")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(60)
    start = time.monotonic()
    try:
        with pytest.raises(DataLoaderWorkerError) as caught:
            for _ in iterator:
                pass
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    message = str(caught.value)
    assert isinstance(caught.value, UserError) and "\n" not in message  # the command prints it as one line
    assert f"(pid {workers[1]}) was killed by SIGKILL" in message and message.startswith("data-loader worker ")
    assert time.monotonic() - start < 30
    assert not loader._ring.busy.any()
    assert not [process for process in multiprocessing.active_children() if process.pid in workers]


@pytest.mark.parametrize("workers, zero_copy", [(2, True), (2, False), (1, True)])
def test_the_resume_position_does_not_depend_on_the_mode(dataset, expected, workers, zero_copy):
    reference = build_loader(dataset, batch_size=BATCH, seed=3, num_workers=0)
    for _, _ in zip(range(5), reference):
        pass
    loader = build_loader(dataset, batch_size=BATCH, seed=3, num_workers=workers, zero_copy=zero_copy)
    iterator = iter(loader)
    for _ in range(5):
        next(iterator)
    assert loader.state_dict() == reference.state_dict()
    iterator.close()
    resumed = build_loader(dataset, batch_size=BATCH, seed=3, num_workers=workers, zero_copy=zero_copy)
    resumed.load_state_dict(loader.state_dict())
    rest = 0
    for got, want in zip(resumed, expected[5:]):
        assert same_batch(got, want)
        rest += 1
    assert rest == len(expected) - 5


def test_the_ring_hands_out_views_that_stay_until_released():
    ring = BatchRing(workers=1, slots=2, slot_bytes=1024)
    ring.claim(0)
    built = ring.tensor((4, 2), torch.float16).fill_(1.5)
    sealed = ring.seal({"built": built, "made": torch.arange(6), "empty": torch.zeros(0, dtype=torch.long),
                        "note": "kept"})
    assert all(isinstance(sealed[key], RingView) for key in ("built", "made", "empty")) and sealed["note"] == "kept"
    batch, slots = ring.views(sealed)
    assert slots == {(0, 0)} and int(ring.busy[0, 0]) == 1
    assert torch.equal(batch["made"], torch.arange(6)) and torch.equal(batch["built"], torch.full((4, 2), 1.5,
                                                                                                  dtype=torch.float16))
    assert in_ring(batch["made"], ring) and batch["empty"].shape == (0,)
    ring.release(slots)
    assert not ring.busy.any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA hand-off needs a GPU")
def test_on_cuda_each_batch_comes_already_on_the_device(dataset, expected):
    loader = build_loader(dataset, batch_size=BATCH, seed=3, num_workers=2, zero_copy=True, pin_memory=True)
    count = 0
    for got, want in zip(loader, expected):
        assert isinstance(got, loader_module.DeviceBatch) and all(value.is_cuda for value in got.values())
        assert all(in_ring(value, loader._ring) for value in got.host.values())
        assert same_batch({key: value.cpu() for key, value in got.items()}, want) and same_batch(got.host, want)
        count += 1
    assert count == len(expected) and not loader._ring.busy.any()
