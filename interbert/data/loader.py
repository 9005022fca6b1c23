"""The pretraining DataLoader: the shard sampler, ``collate``, and resumable position tracking."""
from __future__ import annotations

import torch

from interbert.data.pretraining_dataset import collate
from interbert.data.sampling import DistributedShardSampler


class PretrainingLoader(torch.utils.data.DataLoader):
    """A DataLoader that tells its sampler which samples the caller has received.

    ``state_dict()`` / ``load_state_dict()`` save and restore the position (epoch, samples
    consumed); ``set_epoch(epoch)`` reshuffles the sampler and reseeds the dataset's masking.
    Workers are not persistent: each epoch's workers fork with the current epoch set.
    """

    def __iter__(self):
        for batch in super().__iter__():
            self.sampler.mark_consumed(batch["itm_labels"].shape[0])
            yield batch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
        self.dataset.set_epoch(self.sampler.epoch)


def build_pretraining_loader(dataset, batch_size: int, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                             seed: int = 0, shuffle: bool = True, drop_last: bool = False,
                             bucket_by_length: bool = False, pin_memory: bool = False,
                             prefetch_factor: int | None = None, worker_init_fn=None) -> PretrainingLoader:
    """A loader over ``dataset`` (a PretrainingDataset) for one rank.

    Batches are dicts of tensors (see ``collate``) of ``batch_size`` samples; with
    ``drop_last=False`` the epoch's last batch may be smaller. ``bucket_by_length`` groups
    captions of similar length (see ``sampling``). Workers open the feature store lazily;
    ``worker_init_fn(worker_id)`` runs first in each worker (e.g. to ignore stop signals).
    """
    lengths = dataset.text_lengths() if bucket_by_length else None
    sampler = DistributedShardSampler(len(dataset), rank=rank, world_size=world_size, seed=seed, shuffle=shuffle,
                                      drop_last=drop_last, lengths=lengths, batch_size=batch_size)
    dataset.set_epoch(sampler.epoch)
    extra = {"prefetch_factor": prefetch_factor} if num_workers > 0 and prefetch_factor else {}
    return PretrainingLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                             num_workers=num_workers, drop_last=drop_last, pin_memory=pin_memory,
                             persistent_workers=False, worker_init_fn=worker_init_fn, **extra)
