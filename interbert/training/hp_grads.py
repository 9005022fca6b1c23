"""The fp32 gradient buffer of DeepSpeed's BF16_Optimizer, written once per window instead of zeroed
and added to.

BF16_Optimizer keeps every parameter's fp32 gradient in one flat buffer. As shipped, each step ends
by zeroing the whole buffer, and each gradient of the next window is converted into a new fp32
tensor and added into it: per parameter and step, a fill, a temporary and an add, all memory
traffic over every parameter. Here the first gradient of a window is converted straight into the
buffer (`copy_`), later ones are added as before, the end of a step only marks the buffer stale,
and at the end of each backward the stale entries of parameters that got no gradient are zeroed,
before any reduction, norm or step reads the buffer. The values are the ones DeepSpeed computes
(0 + g is g), so training is bit-identical (tested with accumulation and parameters left out of
some micro-batches, on one rank and on two)."""
from __future__ import annotations

import torch

_REQUIRED = ("_update_hp_grad", "clear_hp_grads", "backward_epilogue", "fp32_groups_gradients",
             "fp32_groups_has_gradients")


def write_first_gradients(engine) -> bool:
    """Switch `engine`'s BF16_Optimizer to first-write gradients; False (nothing changed) for any
    other optimizer wrapper or a DeepSpeed whose BF16_Optimizer lacks the parts this relies on."""
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer

    optimizer = engine.optimizer
    if not isinstance(optimizer, BF16_Optimizer) or not all(hasattr(optimizer, name) for name in _REQUIRED):
        return False
    if getattr(optimizer, "autoep_folding_tp_group", None) is not None:
        return False  # expert folding corrects the gradient in place first: left as DeepSpeed does it
    add_gradient = optimizer._update_hp_grad
    epilogue = optimizer.backward_epilogue

    @torch.no_grad()
    def update_hp_grad(lp, group_idx, param_idx, clear_lp_grads):
        if lp.grad is None or optimizer.fp32_groups_has_gradients[group_idx][param_idx]:
            return add_gradient(lp, group_idx, param_idx, clear_lp_grads)
        hp_grad = optimizer.fp32_groups_gradients[group_idx][param_idx]
        hp_grad.copy_(lp.grad.view(hp_grad.shape))
        lp._hp_grad = hp_grad
        optimizer.fp32_groups_has_gradients[group_idx][param_idx] = True
        if clear_lp_grads:
            lp.grad.zero_()
        return None

    def clear_hp_grads():
        for index, group in enumerate(optimizer.fp32_groups_gradients):
            optimizer.fp32_groups_has_gradients[index] = [False] * len(group)

    @torch.no_grad()
    def backward_epilogue(*args, **kwargs):
        result = epilogue(*args, **kwargs)
        stale = [gradient for group, written in zip(optimizer.fp32_groups_gradients,
                                                    optimizer.fp32_groups_has_gradients)
                 for gradient, has in zip(group, written) if not has]
        if stale:
            torch._foreach_zero_(stale)
        return result

    optimizer._update_hp_grad = update_hp_grad
    optimizer.clear_hp_grads = clear_hp_grads
    optimizer.backward_epilogue = backward_epilogue
    return True
