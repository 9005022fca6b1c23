"""The one DataLoader of every training run (pretraining and each fine-tuning task): the shard
sampler, resumable position tracking, and batches either built whole by the dataset (pretraining's
`__getitems__`, with the shared-memory ring for workers) or collated from samples (fine-tuning)."""
from __future__ import annotations

import logging
import signal
import weakref

import torch

from interbert.data.loading.batch_ring import BatchRing
from interbert.data.loading.sampler import DistributedShardSampler
from interbert.data.store.errors import CorruptRecordError
from interbert.errors import UserError

logger = logging.getLogger("interbert.data")


class DataLoaderWorkerError(UserError, RuntimeError):
    """A DataLoader worker process ended while the training process waited for its batches."""


class DeviceBatch(dict):
    """A batch already on the GPU (the zero-copy loader on CUDA copied it there), with ``host``:
    the same arrays on the host, where the worker built them, for counts read without waiting
    on the device. Both stay valid until the next batch is fetched."""

    host: dict


class Handoff:
    """How one iteration of the loader takes the batches its workers built in the ring.

    Copying (the default): each array is copied out (into page-locked memory with ``pin_memory``)
    and the slot freed at once. Zero copy: the batch's arrays are the ring's memory itself; the
    slot is freed when the next batch is fetched (``release``) or the iteration stops. On CUDA
    (``device``) the ring is page-locked, and each batch is copied to the device on a side stream
    as it is handed out: the caller gets a ``DeviceBatch`` whose copy the current stream waits
    for, and the slot is freed once that copy has finished (checked at the next fetch; the copy
    started a whole step before, so it has normally finished).
    """

    def __init__(self, ring: BatchRing, zero_copy: bool, pin_memory: bool, device: torch.device | None):
        self.ring, self.zero_copy, self.pin_memory, self.device = ring, zero_copy, pin_memory, device
        self.held: list = []  # (slots, copy-finished event or None) of the batches handed out in place
        self.stream = None
        if device is not None:
            if not ring.pin():
                logger.warning("could not page-lock the data-loader workers' batch ring for the GPU; batches are "
                               "copied to the device from pageable memory, which is slower")
            self.stream = torch.cuda.Stream(device)

    def take(self, batch: dict) -> dict:
        if not self.zero_copy:
            return self.ring.unseal(batch, self.pin_memory)
        batch, slots = self.ring.views(batch)
        if self.stream is None:
            self.held.append((slots, None))
            return batch
        current = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.stream):
            moved = DeviceBatch((key, value.to(self.device, non_blocking=True) if isinstance(value, torch.Tensor)
                                 else value) for key, value in batch.items())
        copied = torch.cuda.Event()
        copied.record(self.stream)
        current.wait_event(copied)
        for value in moved.values():
            if isinstance(value, torch.Tensor):
                value.record_stream(current)  # allocated on the side stream, used on the current one
        moved.host = batch
        self.held.append((slots, copied))
        return moved

    def release(self) -> None:
        """Free the slots of the batches handed out so far (their copies to the device finished)."""
        for slots, copied in self.held:
            if copied is not None:
                copied.synchronize()
            self.ring.release(slots)
        self.held.clear()


def stop_workers(running: list) -> None:
    """End the worker processes of the DataLoader iterator in ``running`` (``[(iterator, ring,
    handoff)]``) now, as an iterator does when it is exhausted or collected (an error can keep it
    alive until exit); a worker waiting for a ring slot gives up first. Then every slot is free:
    the batches handed out (their copies to the device finished) and those built but not taken."""
    for batches, ring, handoff in running:
        if ring is not None:
            ring.close()
        shutdown = getattr(batches, "_shutdown_workers", None)  # absent with num_workers=0
        if shutdown is not None:
            shutdown()
        if handoff is not None:
            handoff.release()
        if ring is not None:
            ring.release_all()
            ring.unpin()
    running.clear()


def ignore_worker_deaths_outside_fetches(batches) -> None:
    """Leave a dead worker of the DataLoader iterator ``batches`` to be found at the next fetch
    (``DataLoaderWorkerError``) rather than by torch's SIGCHLD handler, which raises its own error
    wherever the training process happens to be (a forward pass, a checkpoint write)."""
    if getattr(batches, "_worker_pids_set", False):
        torch.utils.data._utils.signal_handling._remove_worker_pids(id(batches))
        batches._worker_pids_set = False


def worker_error(batches) -> DataLoaderWorkerError | None:
    """The one-line error for a worker of ``batches`` that has ended unexpectedly, or None."""
    for worker_id, process in enumerate(getattr(batches, "_workers", ())):
        code = process.exitcode
        if not code:
            continue
        try:
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        except ValueError:
            how = f"ended with status {code}"
        return DataLoaderWorkerError(
            f"data-loader worker {worker_id} (pid {process.pid}) {how} while the training process waited for "
            "its batches, so the epoch cannot go on; a worker killed by SIGKILL is most often the kernel's "
            "out-of-memory killer (fewer --num-workers or a smaller micro-batch need less memory)")
    return None


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

    def __init__(self, *args, samples_key: str = "itm_labels", zero_copy: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.samples_key = samples_key
        self.zero_copy = zero_copy
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
        if self._builds_batches:
            self.dataset.batch_ring = None  # the workers have it; the ring goes with the loader
        ignore_worker_deaths_outside_fetches(batches)
        handoff = None
        if ring is not None:  # page-locked (on CUDA) after the fork, which leaves the workers' mappings alone
            device = None
            if self.zero_copy and self.pin_memory and torch.cuda.is_available():
                device = torch.device("cuda", torch.cuda.current_device())
            handoff = Handoff(ring, self.zero_copy, self.pin_memory, device)
        self._running[:] = [(batches, ring, handoff)]
        try:
            while True:
                if handoff is not None:
                    handoff.release()  # the previous batch's arrays may be overwritten from here on
                try:
                    batch, dropped, failure = next(batches)
                except StopIteration:
                    return
                except RuntimeError:
                    died = worker_error(batches)
                    if died is None:
                        raise
                    raise died from None
                if failure:
                    raise CorruptRecordError(failure)
                if handoff is not None:
                    batch = handoff.take(batch)
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
                 samples_key: str = "itm_labels", zero_copy: bool = False) -> ResumableLoader:
    """A loader over ``dataset`` for one rank: a PretrainingDataset (it builds whole batches), or
    a dataset of samples with its ``collate`` function (fine-tuning; ``samples_key`` "labels").

    Batches are dicts of tensors (see ``PretrainingDataset``) of ``batch_size`` samples, fewer
    when ``skip_corrupt`` dropped some; with ``drop_last=False`` the epoch's last batch may be
    smaller. ``bucket_by_length`` groups captions of similar length (see ``sampler``).
    ``pin_memory`` (default: when CUDA is available) puts batches in page-locked memory, so the
    copy to the GPU can overlap compute. Workers open the feature store lazily and send region
    features as float16 through shared memory; ``worker_init_fn(worker_id)`` runs first in each
    worker (e.g. to ignore stop signals).

    ``zero_copy`` (with workers and a dataset that builds whole batches): the training process
    uses each batch's arrays where the worker built them, in the ring's shared memory, with no
    copy; they stay valid until the next batch is fetched from the same iterator, or the
    iteration stops (or starts again), when their slot is freed. Hold no batch longer. With
    ``pin_memory`` on CUDA the ring is page-locked and each batch is handed out already copied
    to the current device (a ``DeviceBatch``). Without it every batch is the caller's to keep.
    """
    lengths = dataset.text_lengths() if bucket_by_length else None
    sampler = DistributedShardSampler(len(dataset), rank=rank, world_size=world_size, seed=seed, shuffle=shuffle,
                                      drop_last=drop_last, lengths=lengths, batch_size=batch_size)
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(sampler.epoch)
    extra = {"prefetch_factor": prefetch_factor} if num_workers > 0 and prefetch_factor else {}
    return ResumableLoader(dataset, batch_size=batch_size, sampler=sampler, samples_key=samples_key,
                           zero_copy=zero_copy,
                           collate_fn=built_by_dataset if collate is None else NothingDropped(collate),
                           num_workers=num_workers, drop_last=drop_last,
                           pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
                           persistent_workers=False, worker_init_fn=worker_init_fn, **extra)
