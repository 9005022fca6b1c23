"""Memory of one training step, measured the same way for every system in a run.

On CUDA: the allocator's peak. On a CPU there is no allocator peak to read, so the step's
memory is counted as: activations = the bytes of tensors saved for backward (a
saved-tensor hook sees every one; parameters and shared storages are counted once, and
parameters not at all), plus the model states = parameters + gradients + optimizer state
(including any fp32 master copy), read off the objects themselves.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


def _tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().nbytes()


class SavedTensorMeter:
    """Inside `with meter.counting(parameters):`, counts the bytes autograd saves."""

    def __init__(self) -> None:
        self.bytes = 0
        self._seen: set[int] = set()

    @contextmanager
    def counting(self, parameters):
        skip = {p.untyped_storage().data_ptr() for p in parameters}

        def pack(tensor):
            if tensor.device.type != "meta":
                key = tensor.untyped_storage().data_ptr()
                if key not in skip and key not in self._seen:
                    self._seen.add(key)
                    self.bytes += _tensor_bytes(tensor)
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            yield self


def _unique_bytes(tensors) -> int:
    seen, total = set(), 0
    for tensor in tensors:
        if isinstance(tensor, torch.Tensor) and tensor.numel():
            key = tensor.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += _tensor_bytes(tensor)
    return total


def _state_tensors(optimizer):
    """Every tensor an optimizer (or a DeepSpeed wrapper around one) keeps between steps."""
    seen, stack = set(), [optimizer]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for state in getattr(current, "state", {}).values():
            if isinstance(state, dict):
                yield from state.values()
        for group in getattr(current, "param_groups", []):
            yield from group["params"]
        for name in ("optimizer", "bit16_groups_flat", "single_partition_of_fp32_groups",
                     "fp32_groups_flat_partition", "bf16_groups_flat"):
            value = getattr(current, name, None)
            if isinstance(value, (list, tuple)):
                yield from (t for t in value if isinstance(t, torch.Tensor))
            elif value is not None and not isinstance(value, torch.Tensor):
                stack.append(value)


def model_state_bytes(model: torch.nn.Module, optimizer) -> dict[str, int]:
    """Bytes of parameters, gradients and optimizer state (master weights included)."""
    parameters = list(model.parameters())
    params = _unique_bytes(parameters)
    grads = _unique_bytes(p.grad for p in parameters if p.grad is not None)
    param_ptrs = {p.untyped_storage().data_ptr() for p in parameters}
    optimizer_tensors = [t for t in _state_tensors(optimizer)
                         if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in param_ptrs]
    optimizer_bytes = _unique_bytes(optimizer_tensors)
    optimizer_bytes += _unique_bytes(t.grad for t in optimizer_tensors if t.grad is not None)
    return {"parameters": params, "gradients": grads, "optimizer": optimizer_bytes}
