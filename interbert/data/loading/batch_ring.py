"""Shared-memory slots through which DataLoader workers hand a batch's large arrays to the
training process.

A worker that returns a tensor makes torch create a fresh shared-memory segment for it, which the
kernel must allocate and fault in page by page: for one batch of 64 × 37 × 2048 float16 region
features (9.7 MB) that costs several times what the private-memory copy costs (see
``benchmarks/dataloader.py``), and it is paid on every batch. A ``BatchRing`` allocates
``slots`` segments per worker once, before the workers fork; a worker builds a batch's large
arrays straight into its next free slot and returns only ``RingView`` markers (offset, shape,
dtype); the training process copies each out (into pinned memory when asked) and frees the slot.

Slots are used in order and freed in order. The DataLoader keeps at most ``prefetch_factor``
batches in flight per worker, and one more is out between its return and its copy, so
``prefetch_factor + 2`` slots per worker mean a worker never waits in a normal run; one that finds
its slot taken waits for it, and gives up when the ring is closed (the loader stopping its
workers) or its parent process is gone.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

ALIGNMENT = 64  # bytes; every array in a slot starts at a multiple of it
WAIT_SECONDS = 0.0005


class BatchRingClosed(RuntimeError):
    """The training process stopped the workers while one waited for a slot."""


@dataclass(frozen=True)
class RingView:
    """Where one array of a returned batch lies: ``worker``'s slot ``slot``, from byte ``offset``."""

    worker: int
    slot: int
    offset: int
    shape: tuple
    dtype: torch.dtype


def aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGNMENT) * ALIGNMENT


class BatchRing:
    """``slots`` shared-memory slots of ``slot_bytes`` for each of ``workers`` workers.

    Worker side: ``claim(worker)`` the next slot, ``tensor(shape, dtype)`` to carve arrays out of
    it, ``seal(batch)`` to swap them for ``RingView`` markers. Training side: ``unseal(batch)``
    copies them out and frees the slot. ``reset()`` before the workers fork, ``close()`` before
    they are stopped.
    """

    def __init__(self, workers: int, slots: int, slot_bytes: int):
        self.workers, self.slots, self.slot_bytes = workers, slots, aligned(slot_bytes)
        self.buffers = torch.empty((workers, slots, self.slot_bytes), dtype=torch.uint8).share_memory_()
        # busy[w, s] = 1 from the worker's claim until the training process has copied the batch out.
        self.busy = torch.zeros((workers, slots), dtype=torch.int32).share_memory_()
        self.closed = torch.zeros(1, dtype=torch.int32).share_memory_()
        self._parent = os.getpid()
        self._next = 0
        self._current: tuple | None = None
        self._used = 0

    def reset(self) -> None:
        """Every slot free, the ring open: before a new set of workers forks."""
        self.busy.zero_()
        self.closed.zero_()
        self._parent, self._next, self._current = os.getpid(), 0, None

    def close(self) -> None:
        """Tell a worker waiting for a slot to give up (the workers are being stopped)."""
        self.closed.fill_(1)

    def claim(self, worker: int) -> None:
        """Make ``worker``'s next slot the current one, waiting while the training process still
        holds it."""
        slot = self._next
        while int(self.busy[worker, slot]):
            if int(self.closed[0]) or os.getppid() != self._parent:
                raise BatchRingClosed("the training process stopped the data-loader workers")
            time.sleep(WAIT_SECONDS)
        self.busy[worker, slot] = 1
        self._current, self._used = (worker, slot), 0
        self._next = (slot + 1) % self.slots

    def fits(self, shape: tuple, dtype: torch.dtype) -> bool:
        nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        return self._current is not None and self._used + aligned(nbytes) <= self.slot_bytes

    def tensor(self, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised ``shape`` tensor in the current slot (check ``fits`` first)."""
        assert self._current is not None, "claim a slot first"
        worker, slot = self._current
        nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        raw = self.buffers[worker, slot, self._used:self._used + nbytes]
        self._used += aligned(nbytes)
        return raw.view(dtype).view(shape)

    def seal(self, batch: dict) -> dict:
        """``batch`` with its tensors that lie in the current slot replaced by ``RingView``s; the
        slot is freed at once when none does."""
        assert self._current is not None, "claim a slot first"
        worker, slot = self._current
        base = self.buffers[worker, slot].data_ptr()
        sealed, used = {}, False
        for key, value in batch.items():
            inside = isinstance(value, torch.Tensor) and base <= value.data_ptr() < base + self.slot_bytes
            if inside:
                sealed[key] = RingView(worker, slot, value.data_ptr() - base, tuple(value.shape), value.dtype)
                used = True
            else:
                sealed[key] = value
        if not used:
            self.busy[worker, slot] = 0
        self._current = None
        return sealed

    def unseal(self, batch: dict, pin_memory: bool = False) -> dict:
        """``batch`` with every ``RingView`` replaced by a copy of its array (pinned when asked);
        frees the slot."""
        freed = set()
        for key, value in batch.items():
            if isinstance(value, RingView):
                nbytes = torch.Size(value.shape).numel() * torch.empty((), dtype=value.dtype).element_size()
                source = self.buffers[value.worker, value.slot, value.offset:value.offset + nbytes]
                copy = torch.empty(value.shape, dtype=value.dtype, pin_memory=pin_memory)
                copy.view(-1).view(torch.uint8).copy_(source)
                batch[key] = copy
                freed.add((value.worker, value.slot))
        for worker, slot in freed:
            self.busy[worker, slot] = 0
        return batch
