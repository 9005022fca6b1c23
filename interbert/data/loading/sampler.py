"""Which samples each rank sees, in which order, and where to resume.

Every epoch, ``PCG64([seed, epoch])`` shuffles all indices once (the same order on every rank);
rank r takes positions r, r + W, r + 2W, ... of that order (W = world size). Shares are disjoint
and together cover the dataset. When the dataset size is not a multiple of W:
- ``drop_last=False`` (default) repeats the first few indices of the order so every rank has
  the same count (at most W - 1 samples are seen twice per epoch);
- ``drop_last=True`` drops the last (size mod W) indices of the order (a different few each epoch).
Equal counts matter: a rank with fewer batches would hang the others at the next collective.

Optional length bucketing: the rank's share is cut into windows of ``batch_size ×
bucket_window_batches`` samples; each window is sorted by length, cut into batches, and the
batches' order is shuffled. Consecutive ``batch_size`` indices then form batches of similar
length, which cuts padding.

Resume: ``consumed`` counts the samples of this epoch the training loop has received (the loader
from ``build_loader`` advances it on each delivered batch, so prefetching does not
distort it). ``state_dict()`` / ``load_state_dict()`` save and restore ``(epoch, consumed)``;
the next iteration starts exactly after the last delivered sample.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


class DistributedShardSampler(torch.utils.data.Sampler):
    """Indices of this rank's share of a dataset of ``num_samples``, reshuffled per epoch."""

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = False, lengths: np.ndarray | None = None,
                 batch_size: int | None = None, bucket_window_batches: int = 100):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        if lengths is not None and (batch_size is None or len(lengths) != num_samples):
            raise ValueError("length bucketing needs batch_size and one length per sample")
        if num_samples < world_size and drop_last:
            raise ValueError(f"{num_samples} samples cannot give each of {world_size} ranks one with drop_last")
        self.num_samples, self.rank, self.world_size = num_samples, rank, world_size
        self.seed, self.shuffle, self.drop_last = int(seed), shuffle, drop_last
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.batch_size, self.bucket_window_batches = batch_size, bucket_window_batches
        self.epoch = 0
        self.consumed = 0

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.world_size
        return -(-self.num_samples // self.world_size)

    def epoch_indices(self) -> np.ndarray:
        """This rank's full index order for the current epoch (int64, length ``len(self)``)."""
        if self.shuffle:
            order = np.random.Generator(np.random.PCG64([self.seed, self.epoch])).permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        order = np.resize(order, len(self) * self.world_size)  # drops the tail or wraps to the front
        share = order[self.rank::self.world_size]
        if self.lengths is not None:
            share = self._bucket(share)
        return share

    def _bucket(self, share: np.ndarray) -> np.ndarray:
        rng = np.random.Generator(np.random.PCG64([self.seed, self.epoch, self.rank]))
        assert self.batch_size is not None and self.lengths is not None  # checked in __init__ when lengths are given
        window = self.batch_size * self.bucket_window_batches
        out: list[np.ndarray] = []
        for start in range(0, share.size, window):
            part = share[start:start + window]
            part = part[np.argsort(self.lengths[part], kind="stable")]
            batches = [part[i:i + self.batch_size] for i in range(0, part.size, self.batch_size)]
            # Keep a short final batch last so it stays the window's (and epoch's) only partial batch.
            full = [b for b in batches if b.size == self.batch_size]
            tail = [b for b in batches if b.size != self.batch_size]
            out.extend(full[i] for i in rng.permutation(len(full)))
            out.extend(tail)
        return np.concatenate(out) if out else share

    def __iter__(self) -> Iterator[int]:
        indices = self.epoch_indices()
        if self.consumed >= indices.size:  # a finished epoch iterated again starts over
            self.consumed = 0
        return iter(indices[self.consumed:].tolist())

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's order; a new epoch starts from its beginning, the current one resumes."""
        if int(epoch) != self.epoch:
            self.epoch = int(epoch)
            self.consumed = 0

    def mark_consumed(self, count: int) -> None:
        self.consumed += int(count)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed,
                "world_size": self.world_size, "num_samples": self.num_samples}

    def load_state_dict(self, state: dict) -> None:
        if state["num_samples"] != self.num_samples or state["seed"] != self.seed:
            raise ValueError(f"the saved sampler position is for {state['num_samples']} samples with seed "
                             f"{state['seed']}, this run has {self.num_samples} with seed {self.seed}; resume "
                             "with the same data and seed")
        consumed = state["consumed"]
        if state["world_size"] != self.world_size:
            # Rank r's first c samples are positions < c·W of the epoch order, so the global position
            # carries over to another world size (exactly when it divides evenly, and without bucketing).
            if self.lengths is not None:
                raise ValueError("a bucketed sampler resumes only with the world size it was saved with "
                                 f"({state['world_size']}, now {self.world_size})")
            consumed = consumed * state["world_size"] // self.world_size
        self.epoch, self.consumed = int(state["epoch"]), int(consumed)
