"""BF16_Optimizer's step on a CPU with the clipping, AdamW and the bf16 copy of the weights in one pass.

As DeepSpeed ships it (0.19.8), `BF16_Optimizer.step` makes three passes over every parameter after
the gradient norm: the clipping multiplies every fp32 gradient in place, torch's fused AdamW reads
and writes the gradients, weights and moments, and `update_lp_params` copies the fp32 weights into the
bf16 ones. `fuse_optimizer_step` replaces the step of an engine's BF16_Optimizer, where its base
optimizer is torch.optim.AdamW(fused=True) on CPU partitions, by one that keeps DeepSpeed's norm (the same
function, the same gradients, the same overflow handling) and its all-gather of the bf16 partitions,
and does the rest in one pass per partition (`cpu_adamw.adamw_step`: the clipping coefficient
multiplies each gradient as it is read). The optimizer state stays torch's (`exp_avg`,
`exp_avg_sq`, `step` in `optimizer.state`), so checkpoints are unchanged. The results are
DeepSpeed's bit for bit where torch's kernel is vectorized (tests/training/test_bf16_step.py); see
csrc/adamw_step.c for the scalar tail.

Anything else (another wrapper or optimizer, AMSGrad, CUDA partitions, MoE, Muon, gradients kept
in another dtype, or no C compiler) keeps DeepSpeed's step, and the note says why.
"""
from __future__ import annotations

import torch

from interbert.training import cpu_adamw

_REQUIRED = ("fp32_groups_flat_partition", "fp32_groups_gradient_flat_partition", "bf16_partitioned_groups",
             "bf16_groups_flat", "real_dp_process_group", "get_grads_for_norm", "clear_hp_grads", "clear_lp_grads",
             "_lazy_init_hp_params_optimizer_state", "clip_grad", "norm_type", "mpu",
             "nccl_start_alignment_factor", "allgather_bucket_size")
CLIP_EPS = 1e-6  # DeepSpeed's clip_tensors_by_global_norm: max_norm / (norm + eps)


def why_not_fused(optimizer) -> str | None:
    """None when `optimizer` (an engine's optimizer wrapper) can take the fused step; else why not."""
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer

    if not isinstance(optimizer, BF16_Optimizer):
        return f"the optimizer wrapper is {type(optimizer).__name__}, not BF16_Optimizer"
    missing = [name for name in _REQUIRED if not hasattr(optimizer, name)]
    if missing:
        return f"this DeepSpeed's BF16_Optimizer lacks {', '.join(missing)}"
    basic = optimizer.optimizer
    if type(basic) is not torch.optim.AdamW:
        return f"the optimizer is {type(basic).__module__}.{type(basic).__qualname__}, not torch.optim.AdamW"
    if not basic.defaults.get("fused"):
        return "torch.optim.AdamW(fused=False) was asked for; the kernel computes as the fused one"
    for group in basic.param_groups:
        options = [name for name in ("amsgrad", "maximize", "capturable", "differentiable") if group.get(name)]
        if options:
            return f"AdamW with {', '.join(options)}"
    if getattr(optimizer, "has_moe_layers", False) or getattr(optimizer, "_uses_muon", False):
        return "MoE or Muon parameter groups"
    for partition, grad in zip(optimizer.fp32_groups_flat_partition, optimizer.fp32_groups_gradient_flat_partition):
        if partition.device.type != "cpu":
            return f"the fp32 partitions are on {partition.device.type}, the kernel is for the CPU"
        if partition.dtype != torch.float32 or grad.dtype != torch.float32:
            return f"gradients kept in {grad.dtype} (data_types.grad_accum_dtype), the kernel reads fp32"
    if cpu_adamw.load() is None:
        return f"the CPU AdamW kernel is not available ({cpu_adamw.unavailable()})"
    return None


def fuse_optimizer_step(engine) -> tuple[bool, str]:
    """Give `engine`'s BF16_Optimizer the one-pass step where it can take it: (applied, one line saying
    what the step does, or why it stays DeepSpeed's)."""
    optimizer = engine.optimizer
    problem = why_not_fused(optimizer)
    if problem is not None:
        return False, f"optimizer step: as DeepSpeed ships it ({problem})"
    optimizer.step = _fused_step(optimizer)
    return True, ("optimizer step: clipping, AdamW and the bf16 copy of the weights in one pass over each "
                  "partition (interbert's CPU AdamW kernel)")


def _fused_step(optimizer):
    from deepspeed import comm as dist
    from deepspeed.runtime.utils import all_gather_dp_groups, get_global_norm_of_tensors, is_invalid_grad_norm

    basic = optimizer.optimizer

    @torch.no_grad()
    def step(closure=None):
        if closure is not None:
            raise NotImplementedError(f"{type(optimizer).__name__} does not support closure.")
        optimizer.overflow = False
        grads_for_norm, _ = optimizer.get_grads_for_norm()
        norm = get_global_norm_of_tensors(input_tensors=grads_for_norm, mpu=optimizer.mpu,
                                          norm_type=optimizer.norm_type)
        optimizer._global_grad_norm = norm
        if is_invalid_grad_norm(norm):
            optimizer.overflow = True
            optimizer._global_grad_norm = float("inf")
            optimizer.clear_hp_grads()
            optimizer.clear_lp_grads()
            return
        multiplier = 1.0
        if optimizer.clip_grad > 0.0:
            coefficient = optimizer.clip_grad / (norm + CLIP_EPS)  # a float32 tensor, as DeepSpeed multiplies by
            if coefficient < 1:
                multiplier = float(coefficient)
        for index, group in enumerate(basic.param_groups):
            partition = optimizer.fp32_groups_flat_partition[index]
            grad = optimizer.fp32_groups_gradient_flat_partition[index]
            partition.grad = grad
            state = basic.state[partition]
            if not state:  # torch's AdamW initialises its state at the first step in the same way
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(partition, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(partition, memory_format=torch.preserve_format)
            if torch.is_tensor(state["step"]):
                state["step"] += 1
            else:  # a universal checkpoint's loader sets a number
                state["step"] = state["step"] + 1
            beta1, beta2 = group["betas"]
            rank = dist.get_rank(group=optimizer.real_dp_process_group[index])
            cpu_adamw.adamw_step(partition, grad, state["exp_avg"], state["exp_avg_sq"],
                                 optimizer.bf16_partitioned_groups[index][rank], step=int(state["step"]),
                                 lr=float(group["lr"]), beta1=float(beta1), beta2=float(beta2),
                                 eps=float(group["eps"]), weight_decay=float(group["weight_decay"]),
                                 grad_multiplier=multiplier)
        optimizer._lazy_init_hp_params_optimizer_state()
        all_gather_dp_groups(groups_flat=optimizer.bf16_groups_flat,
                             partitioned_param_groups=optimizer.bf16_partitioned_groups,
                             dp_process_group=optimizer.real_dp_process_group,
                             start_alignment_factor=optimizer.nccl_start_alignment_factor,
                             allgather_bucket_size=optimizer.allgather_bucket_size)
        optimizer.clear_hp_grads()

    return step
