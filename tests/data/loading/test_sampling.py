"""Per-rank shares, per-epoch reshuffling, bucketing, exact resume, and the loader."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from interbert.data.loading.loader import build_loader
from interbert.data.loading.sampler import DistributedShardSampler
from interbert.data.pretraining.dataset import PretrainingDataset


def shares(num_samples, world_size, **kwargs):
    return [list(DistributedShardSampler(num_samples, rank, world_size, seed=1, **kwargs))
            for rank in range(world_size)]


def test_two_ranks_get_disjoint_shares_that_cover_the_dataset():
    first, second = shares(100, 2)
    assert len(first) == len(second) == 50
    assert not set(first) & set(second) and set(first) | set(second) == set(range(100))


def test_uneven_size_pads_with_repeats_so_ranks_have_equal_counts():
    parts = shares(101, 4)
    assert {len(p) for p in parts} == {26}
    assert set().union(*map(set, parts)) == set(range(101))
    assert sum(map(len, parts)) - 101 == 3  # the only repeats are the padding


def test_drop_last_gives_disjoint_equal_shares():
    parts = shares(101, 4, drop_last=True)
    assert {len(p) for p in parts} == {25}
    flat = [i for p in parts for i in p]
    assert len(set(flat)) == len(flat) == 100


def test_each_epoch_reshuffles_and_the_same_epoch_repeats():
    sampler = DistributedShardSampler(50, seed=3)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    sampler.set_epoch(0)
    assert first != second and sorted(first) == sorted(second) and list(sampler) == first


def test_saved_position_resumes_exactly():
    sampler = DistributedShardSampler(40, rank=1, world_size=2, seed=7)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.mark_consumed(8)
    resumed = DistributedShardSampler(40, rank=1, world_size=2, seed=7)
    resumed.load_state_dict(sampler.state_dict())
    assert resumed.epoch == 2 and list(resumed) == full[8:]


def test_position_carries_over_to_another_world_size():
    old = DistributedShardSampler(48, rank=0, world_size=4, seed=2)
    old.mark_consumed(3)  # 4 ranks × 3 = the first 12 samples of the epoch's order
    seen = {i for rank in range(4) for i in list(DistributedShardSampler(48, rank, 4, seed=2))[:3]}
    rest = []
    for rank in range(2):
        new = DistributedShardSampler(48, rank=rank, world_size=2, seed=2)
        new.load_state_dict(old.state_dict())
        rest += list(new)
    assert not seen & set(rest) and seen | set(rest) == set(range(48))


def test_length_bucketing_groups_similar_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 37, 640)
    bucketed = list(DistributedShardSampler(640, seed=1, lengths=lengths, batch_size=16))
    plain = list(DistributedShardSampler(640, seed=1))

    def padding(order):
        batches = lengths[np.array(order)].reshape(-1, 16)
        return int((batches.max(1, keepdims=True) - batches).sum())

    assert sorted(bucketed) == list(range(640))
    assert padding(bucketed) < padding(plain) / 3


@pytest.fixture(scope="module")
def dataset(synth_corpus, vocab_file):
    return PretrainingDataset(synth_corpus / "features", synth_corpus / "captions.jsonl", vocab_file)


def test_loader_resumes_mid_epoch_with_identical_batches(dataset):
    loader = build_loader(dataset, batch_size=8, seed=4)
    loader.set_epoch(1)
    batches = list(loader)
    loader.set_epoch(1)
    iterator = iter(loader)
    for _ in range(3):
        next(iterator)
    state = loader.state_dict()
    assert state["consumed"] == 24 and state["epoch"] == 1
    fresh = build_loader(dataset, batch_size=8, seed=4)
    fresh.load_state_dict(state)
    for expected, got in zip(batches[3:], fresh, strict=True):
        for key in expected:
            assert torch.equal(expected[key], got[key])


def test_loader_with_two_forked_workers_matches_the_main_process(dataset):
    single = list(build_loader(dataset, batch_size=16, seed=1, num_workers=0))
    workers = list(build_loader(dataset, batch_size=16, seed=1, num_workers=2))
    assert len(single) == len(workers) == 15
    for a, b in zip(single, workers):
        assert all(torch.equal(a[key], b[key]) for key in a)
