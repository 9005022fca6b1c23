"""The one DataLoader of every training run (pretraining and each fine-tuning task): the shard
sampler, resumable position tracking, and batches either built whole by the dataset (pretraining's
`__getitems__`, with the shared-memory ring for workers) or collated from samples (fine-tuning)."""
from __future__ import annotations

import logging
import weakref

import torch

from interbert.data.loading.batch_ring import BatchRing
from interbert.data.loading.sampler import DistributedShardSampler
from interbert.data.store.errors import CorruptRecordError

logger = logging.getLogger("interbert.data")


def stop_workers(running: list) -> None:
    """End the worker processes of the DataLoader iterator in ``running`` (``[(iterator, ring)]``)
    now, as an iterator does when it is exhausted or collected (an error can keep it alive until
    exit); a worker waiting for a ring slot gives up first."""
    for batches, ring in running:
        if ring is not None:
            ring.close()
        shutdown = getattr(batches, "_shutdown_workers", None)  # absent with num_workers=0
        if shutdown is not None:
            shutdown()
    running.clear()


def built_by_dataset(item: tuple) -> tuple:
    """The DataLoader's collate step: ``PretrainingDataset.__getitems__`` already built the batch."""
    return item


class NothingDropped:
    """The collate step for a dataset of samples: ``collate(samples)`` in the form a dataset that
    builds its own batches returns, ``(batch, dropped, failure)`` (picklable for workers)."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, samples: list) -> tuple:
        return self.collate(samples), (), None


class ResumableLoader(torch.utils.data.DataLoader):
    """A DataLoader that tells its sampler which samples the caller has received.

    Yields batch dicts (``samples_key`` names a key whose first dimension counts the batch's
    samples). ``state_dict()`` / ``load_state_dict()``
    save and restore the position (epoch, samples consumed, dropped corrupt ones included);
    ``set_epoch(epoch)`` reshuffles the sampler and reseeds the dataset's masking. Workers are
    not persistent: each epoch's workers fork with the current epoch set. A worker counts the
    corrupt records it skips in its own copy of the dataset; the loader adds them to
    ``dataset.skipped`` here.
    """

    sampler: DistributedShardSampler  # given as the sampler (the resumable position lives there)

    def __init__(self, *args, samples_key: str = "itm_labels", **kwargs):
        super().__init__(*args, **kwargs)
        self.samples_key = samples_key
        self._builds_batches = hasattr(self.dataset, "batch_bytes")  # and can fill the workers' ring
        self._running: list = []  # (DataLoader iterator, ring) of the epoch in progress
        self._ring: BatchRing | None = None
        self._ring_failed = False  # shared memory too small for it: a segment per batch instead
        # At exit (or when the loader goes), end workers an error left waiting: they ignore the
        # SIGTERM with which multiprocessing's own exit handler would stop them.
        weakref.finalize(self, stop_workers, self._running)

    def _batch_ring(self) -> BatchRing | None:
        """The workers' ring (made once per loader), or None: no workers, or too little shared memory."""
        if self.num_workers == 0 or self._ring_failed or not self._builds_batches:
            return None
        if self._ring is None:
            slots = (self.prefetch_factor or 2) + 2
            slot_bytes = self.dataset.batch_bytes(self.batch_size)  # type: ignore[attr-defined]  # _builds_batches
            try:
                self._ring = BatchRing(self.num_workers, slots, slot_bytes)
            except RuntimeError as error:  # e.g. a container's small /dev/shm
                logger.warning("no shared memory for the data-loader workers' batch ring (%d MiB: %s); each batch "
                               "gets a segment of its own, which is slower (raise /dev/shm, e.g. docker "
                               "--shm-size)", self.num_workers * slots * slot_bytes >> 20, error)
                self._ring_failed = True
                return None
        return self._ring

    def __iter__(self):
        stop_workers(self._running)
        ring = self._batch_ring()
        if ring is not None:
            ring.reset()
        if self._builds_batches:
            self.dataset.batch_ring = ring
        batches = super().__iter__()  # forks the workers, which inherit the ring
        self._running[:] = [(batches, ring)]
        try:
            for batch, dropped, failure in batches:
                if failure:
                    raise CorruptRecordError(failure)
                if ring is not None:
                    batch = ring.unseal(batch, self.pin_memory)
                if dropped and self.num_workers > 0:
                    self.dataset.skipped["corrupt record"] += len(dropped)
                self.sampler.mark_consumed(batch[self.samples_key].shape[0] + len(dropped))
                yield batch
        finally:
            stop_workers(self._running)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.sampler.epoch)


def build_loader(dataset, batch_size: int, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                 seed: int = 0, shuffle: bool = True, drop_last: bool = False,
                 bucket_by_length: bool = False, pin_memory: bool | None = None,
                 prefetch_factor: int | None = None, worker_init_fn=None, collate=None,
                 samples_key: str = "itm_labels") -> ResumableLoader:
    """A loader over ``dataset`` for one rank: a PretrainingDataset (it builds whole batches), or
    a dataset of samples with its ``collate`` function (fine-tuning; ``samples_key`` "labels").

    Batches are dicts of tensors (see ``PretrainingDataset``) of ``batch_size`` samples, fewer
    when ``skip_corrupt`` dropped some; with ``drop_last=False`` the epoch's last batch may be
    smaller. ``bucket_by_length`` groups captions of similar length (see ``sampler``).
    ``pin_memory`` (default: when CUDA is available) puts batches in page-locked memory, so the
    copy to the GPU can overlap compute. Workers open the feature store lazily and send region
    features as float16 through shared memory; ``worker_init_fn(worker_id)`` runs first in each
    worker (e.g. to ignore stop signals).
    """
    lengths = dataset.text_lengths() if bucket_by_length else None
    sampler = DistributedShardSampler(len(dataset), rank=rank, world_size=world_size, seed=seed, shuffle=shuffle,
                                      drop_last=drop_last, lengths=lengths, batch_size=batch_size)
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(sampler.epoch)
    extra = {"prefetch_factor": prefetch_factor} if num_workers > 0 and prefetch_factor else {}
    return ResumableLoader(dataset, batch_size=batch_size, sampler=sampler, samples_key=samples_key,
                           collate_fn=built_by_dataset if collate is None else NothingDropped(collate),
                           num_workers=num_workers, drop_last=drop_last,
                           pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
                           persistent_workers=False, worker_init_fn=worker_init_fn, **extra)
