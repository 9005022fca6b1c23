"""The paper's setup on 8×V100-16GB, planned from measured figures.

Memory per GPU (fp16 mixed precision, ZeRO stage 1 over `gpus` ranks), for Ψ parameters:
  fp16 parameters 2Ψ + fp16 gradients 2Ψ + (fp32 master 4Ψ + Adam m 4Ψ + v 4Ψ) / gpus
  + the gradient-reduction buckets + the CUDA context, + activations × micro-batch.
Wall-clock of the whole run: samples / (gpus × per-GPU samples/s) + one fp16 gradient
all-reduce per optimizer step (ring: 2·(gpus−1)/gpus · 2Ψ bytes over the NVLink bus bandwidth).
Every micro-batch × accumulation that makes the global batch on `gpus` GPUs is listed with its
memory and whether it fits within the margin; the plan picks the largest micro-batch that fits
(fewer accumulation steps, larger matmuls). The shipped ds_configs/pretrain_v100x8.json is 32 × 2
(DeepSpeed derives the 2 from train_batch_size / (micro × GPUs)).
Every assumption is a field of PlanAssumptions and is printed with its value.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

GIB = 1024 ** 3
V100_PEAK = 125e12  # fp16 tensor-core dense FLOP/s, V100 SXM2


@dataclass
class PlanAssumptions:
    gpus: int = 8
    gpu_memory_gib: float = 16.0
    margin: float = 0.10  # of the GPU's memory kept free for fragmentation and spikes
    cuda_context_gib: float = 0.8
    bucket_elements: float = 2e8  # ZeRO reduce + all-gather buckets of ds_configs/pretrain_v100x8.json
    global_batch: int = 512
    epochs: int = 20
    pairs_per_epoch: int = 4_777_000  # CC 3.3M + SBU 890K + COCO 587K
    nvlink_bus_gb_per_s: float = 130.0  # NCCL all-reduce bus bandwidth on a DGX-1 (V100, NVLink)
    v100_peak: float = V100_PEAK


def model_state_bytes_per_gpu(parameters: int, gpus: int) -> float:
    return 2 * parameters + 2 * parameters + 12 * parameters / gpus


def micro_batch_choices(global_batch: int, gpus: int) -> list[tuple[int, int]]:
    """(micro-batch, accumulation) pairs with micro × accumulation × gpus = global_batch."""
    per_gpu = global_batch // gpus if global_batch % gpus == 0 else 0
    return [(micro, per_gpu // micro) for micro in range(1, per_gpu + 1) if per_gpu % micro == 0]


def plan(parameters: int, activation_bytes_per_sample: float, v100_samples_per_s: float,
         assumptions: PlanAssumptions) -> dict:
    """Memory of every micro-batch × accumulation that makes the global batch, the largest
    micro-batch that fits, and the projected wall-clock. `activation_bytes_per_sample` is for
    fp16/bf16."""
    a = assumptions
    fixed = (model_state_bytes_per_gpu(parameters, a.gpus) + 2 * 2 * a.bucket_elements
             + a.cuda_context_gib * GIB)
    budget = a.gpu_memory_gib * GIB * (1 - a.margin)
    rows = []
    for micro, accumulation in micro_batch_choices(a.global_batch, a.gpus):
        total = fixed + micro * activation_bytes_per_sample
        rows.append({"micro_batch": micro, "gradient_accumulation": accumulation, "memory_gib": total / GIB,
                     "fits": total <= budget, "margin_gib": (budget - total) / GIB})
    fitting = [r for r in rows if r["fits"]]
    micro = max(r["micro_batch"] for r in fitting) if fitting else None
    accumulation = a.global_batch // (a.gpus * micro) if micro else None
    samples = a.epochs * a.pairs_per_epoch
    steps = -(-samples // a.global_batch)
    compute_s = samples / (a.gpus * v100_samples_per_s)
    allreduce_s = 2 * (a.gpus - 1) / a.gpus * 2 * parameters / (a.nvlink_bus_gb_per_s * 1e9)
    total_s = compute_s + steps * allreduce_s
    return {
        "assumptions": asdict(a),
        "parameters": parameters,
        "activation_bytes_per_sample": activation_bytes_per_sample,
        "fixed_bytes_per_gpu": fixed,
        "budget_bytes_per_gpu": budget,
        "rows": rows,
        "micro_batch": micro,
        "gradient_accumulation": accumulation,
        "global_batch_check": (micro or 0) * (accumulation or 0) * a.gpus,
        "v100_samples_per_s_per_gpu": v100_samples_per_s,
        "optimizer_steps": steps,
        "allreduce_seconds_per_step": allreduce_s,
        "compute_hours": compute_s / 3600,
        "allreduce_hours": steps * allreduce_s / 3600,
        "wall_clock_hours": total_s / 3600,
        "wall_clock_days": total_s / 86400,
    }
