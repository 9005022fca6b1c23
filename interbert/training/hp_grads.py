"""The fp32 gradient buffer of DeepSpeed's BF16_Optimizer: written once per window instead of zeroed
and added to (`write_first_gradients`), and the same gradients in every rank's norm and clipping
(`agree_on_gradients`).

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


def agree_on_gradients(engine) -> bool:
    """Make every data-parallel rank's BF16_Optimizer take the same gradients into the norm and the
    clipping; False (nothing changed) on one rank or another wrapper.

    BF16_Optimizer (0.19.8) keeps, per rank, which parameters got a gradient in the window, and its step
    takes the gradient norm, and clips, only over those. But the engine's all-reduce has given every rank
    the reduced gradient of every parameter that got one on any rank: a parameter only some ranks used
    (a branch or a head that one rank's batch skipped) is left out of the norm on the others. The ranks
    then clip with different norms, and a rank that owns such a parameter's partition updates it with an
    unclipped gradient; a guard reading the norm may stop one rank and not the others. Here the step
    first takes the union of the ranks' flags (one small all-reduce, MAX, over each group's
    data-parallel group), so every rank sees one norm and clips every reduced gradient. Where every rank
    used every parameter, nothing changes."""
    import torch.distributed as torch_dist
    from deepspeed import comm as dist
    from deepspeed.accelerator import get_accelerator
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer

    optimizer = engine.optimizer
    if not isinstance(optimizer, BF16_Optimizer) or not all(
            hasattr(optimizer, name) for name in ("fp32_groups_has_gradients", "real_dp_process_group")):
        return False
    groups = optimizer.real_dp_process_group
    if all(dist.get_world_size(group=group) == 1 for group in groups):
        return False
    # The flags are host lists: where every group is the whole world (no model or expert parallelism),
    # they travel over gloo (the default group, or one made now: every rank builds the engine together),
    # so a GPU step gains no device-to-host read; otherwise over each group, through the device.
    on_host = all(dist.get_world_size(group=group) == torch_dist.get_world_size() for group in groups)
    host_group = None if not on_host or torch_dist.get_backend() == "gloo" else torch_dist.new_group(backend="gloo")
    step = optimizer.step

    def agreeing_step(*args, **kwargs):
        for index, group in enumerate(groups):
            flags = torch.tensor(optimizer.fp32_groups_has_gradients[index], dtype=torch.int32,
                                 device="cpu" if on_host else get_accelerator().current_device_name())
            if on_host:
                torch_dist.all_reduce(flags, op=torch_dist.ReduceOp.MAX, group=host_group)
            else:
                dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=group)
            optimizer.fp32_groups_has_gradients[index] = [bool(flag) for flag in flags.tolist()]
        return step(*args, **kwargs)

    optimizer.step = agreeing_step
    return True
