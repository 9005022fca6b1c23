"""Shared-memory slots through which DataLoader workers hand whole batches to the training process.

A worker that returns a tensor makes torch create a fresh shared-memory segment for it, which the
kernel must allocate and fault in page by page: for one batch of 64 × 37 × 2048 float16 region
features (9.7 MB) that costs several times what the private-memory copy costs (see
``benchmarks/dataloader.py``), and it is paid on every batch, for every array. A ``BatchRing``
allocates ``slots`` slots per worker once, in one segment, before the workers fork; a slot holds
the largest batch the dataset can build (``batch_bytes``). A worker builds a batch's large arrays
straight into its next free slot, copies the small ones (text, labels, positions) in after them,
and returns only ``RingView`` markers (offset, shape, dtype): no array crosses the process
boundary. The training process either copies each array out and frees the slot at once
(``unseal``), or uses the arrays where they lie (``views``) and frees the slot later
(``release``): the loader's zero-copy mode.

Slots are used in order and freed in order. The DataLoader keeps at most ``prefetch_factor``
batches in flight per worker, and one more is held by the training process (the batch it uses,
in the zero-copy mode), so ``prefetch_factor + 2`` slots per worker mean a worker never waits in a
normal run; one that finds its slot taken waits for it, and gives up when the ring is closed (the
loader stopping its workers) or its parent process is gone.
"""
from __future__ import annotations

import os
import time
import weakref
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


def array_bytes(shape: tuple, dtype: torch.dtype) -> int:
    return torch.Size(shape).numel() * dtype.itemsize


def slot_bytes_for(arrays: dict) -> int:
    """The slot size that holds ``arrays`` (name → (largest shape, dtype)), each aligned."""
    return sum(aligned(array_bytes(shape, dtype)) for shape, dtype in arrays.values())


def _unregister(pointer: int, buffers: torch.Tensor) -> None:
    """Undo ``BatchRing.pin`` (``buffers`` is held until then, so the memory stays mapped)."""
    torch.cuda.cudart().cudaHostUnregister(pointer)


class BatchRing:
    """``slots`` shared-memory slots of ``slot_bytes`` for each of ``workers`` workers.

    Worker side: ``claim(worker)`` the next slot, ``tensor(shape, dtype)`` to carve arrays out of
    it, ``seal(batch)`` to move the batch's other tensors in and swap them all for ``RingView``
    markers. Training side: ``unseal(batch)`` copies them out and frees the slot; or
    ``views(batch)`` gives tensors that lie in the slot, and ``release(slots)`` frees it when the
    caller is done with them. ``reset()`` before the workers fork, ``close()`` before they are
    stopped, ``release_all()`` once they are gone.
    """

    def __init__(self, workers: int, slots: int, slot_bytes: int):
        self.workers, self.slots, self.slot_bytes = workers, slots, aligned(slot_bytes)
        self.buffers = torch.empty((workers, slots, self.slot_bytes), dtype=torch.uint8).share_memory_()
        # busy[w, s] = 1 from the worker's claim until the training process frees the slot.
        self.busy = torch.zeros((workers, slots), dtype=torch.int32).share_memory_()
        self.closed = torch.zeros(1, dtype=torch.int32).share_memory_()
        self._pinned: weakref.finalize | None = None
        self._parent = os.getpid()
        self._next = 0
        self._current: tuple | None = None
        self._used = 0
        self._flat: dict = {}  # (worker, slot) → that slot's bytes, made once in the training process

    def reset(self) -> None:
        """Every slot free, the ring open: before a new set of workers forks."""
        self.busy.zero_()
        self.closed.zero_()
        self._parent, self._next, self._current = os.getpid(), 0, None

    def close(self) -> None:
        """Tell a worker waiting for a slot to give up (the workers are being stopped)."""
        self.closed.fill_(1)

    def release_all(self) -> None:
        """Every slot free: the workers are gone, so the batches they built and nobody took too."""
        self.busy.zero_()

    def pin(self) -> bool:
        """Page-lock the whole ring for copies to the GPU (``cudaHostRegister``); False where CUDA
        refuses. Done after the workers fork and undone (``unpin``) before the next ones do, so a
        driver that keeps page-locked memory out of child processes cannot take the ring from them."""
        if self._pinned is None or not self._pinned.alive:
            pointer = self.buffers.data_ptr()
            try:
                code = int(torch.cuda.cudart().cudaHostRegister(pointer, self.buffers.numel(), 1))  # portable
            except (AttributeError, RuntimeError):  # a build without the CUDA runtime's bindings
                return False
            if code != 0:
                return False
            self._pinned = weakref.finalize(self, _unregister, pointer, self.buffers)
        return True

    def unpin(self) -> None:
        if self._pinned is not None:
            self._pinned()  # unregisters once
            self._pinned = None

    # ------------------------------------------------------------------ worker side
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
        return self._current is not None and self._used + aligned(array_bytes(shape, dtype)) <= self.slot_bytes

    def tensor(self, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised ``shape`` tensor in the current slot (check ``fits`` first)."""
        assert self._current is not None, "claim a slot first"
        worker, slot = self._current
        nbytes = array_bytes(shape, dtype)
        raw = self.buffers[worker, slot, self._used:self._used + nbytes]
        self._used += aligned(nbytes)
        return raw.view(dtype).view(shape)

    def seal(self, batch: dict) -> dict:
        """``batch`` with its tensors replaced by ``RingView``s of the current slot: those built
        elsewhere are copied in first (a tensor that does not fit stays a tensor). The slot is
        freed at once when no tensor lies in it."""
        assert self._current is not None, "claim a slot first"
        worker, slot = self._current
        base = self.buffers[worker, slot].data_ptr()
        sealed, used = {}, False
        for key, value in batch.items():
            if isinstance(value, torch.Tensor):
                inside = value.is_contiguous() and base <= value.data_ptr() < base + self.slot_bytes
                if not inside and self.fits(tuple(value.shape), value.dtype):
                    value = self.tensor(tuple(value.shape), value.dtype).copy_(value)
                    inside = True
                if inside:
                    value = RingView(worker, slot, value.data_ptr() - base, tuple(value.shape), value.dtype)
                    used = True
            sealed[key] = value
        if not used:
            self.busy[worker, slot] = 0
        self._current = None
        return sealed

    # ------------------------------------------------------------------ training side
    def _array(self, view: RingView) -> torch.Tensor:
        """The array ``view`` marks, where it lies in the ring."""
        key = (view.worker, view.slot)
        flat = self._flat.get(key)
        if flat is None:
            flat = self._flat[key] = self.buffers[view.worker, view.slot]
        return flat[view.offset:view.offset + array_bytes(view.shape, view.dtype)].view(view.dtype).view(view.shape)

    def views(self, batch: dict) -> tuple:
        """``(batch, slots)``: ``batch`` with every ``RingView`` replaced by the array itself, in
        the ring (no copy), and the ``(worker, slot)`` pairs it lies in, which stay taken until
        ``release(slots)``."""
        slots = set()
        for key, value in batch.items():
            if isinstance(value, RingView):
                batch[key] = self._array(value)
                slots.add((value.worker, value.slot))
        return batch, slots

    def release(self, slots) -> None:
        """Free ``slots`` (from ``views``): their arrays may be overwritten from now on."""
        for worker, slot in slots:
            self.busy[worker, slot] = 0

    def unseal(self, batch: dict, pin_memory: bool = False) -> dict:
        """``batch`` with every ``RingView`` replaced by a copy of its array (pinned when asked);
        frees the slot."""
        slots = set()
        for key, value in batch.items():
            if isinstance(value, RingView):
                copy = torch.empty(value.shape, dtype=value.dtype, pin_memory=pin_memory)
                batch[key] = copy.copy_(self._array(value))
                slots.add((value.worker, value.slot))
        self.release(slots)
        return batch
