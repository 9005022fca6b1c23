"""The DeepSpeed config of a test run, written on the fly: one writer for the pretraining runs (its
defaults: 2 ranks, a short WarmupDecayLR schedule, AdamW with explicit betas and eps) and the
fine-tuning runs (FINETUNING: one rank, the schedule's length left to the run, AdamW's own betas and
eps, and a `finetune` section)."""
from __future__ import annotations

import json
from pathlib import Path


def write_ds_config(path: Path, *, micro: int = 4, accumulation: int = 1, world: int = 2,
                    precision: str = "fp32", lr: float = 5e-4, warmup_steps: int = 2,
                    total_steps: int | None = 100, betas: tuple[float, float] | None = (0.9, 0.999),
                    eps: float | None = 1e-6, finetune: dict | None = None, **overrides) -> Path:
    """`path` written with these settings; None leaves out total_num_steps, betas or eps (and the
    `finetune` section); `overrides` replace or add top-level sections."""
    optimizer_params = {"lr": lr}
    if betas is not None:
        optimizer_params["betas"] = list(betas)
    if eps is not None:
        optimizer_params["eps"] = eps
    optimizer_params["weight_decay"] = 0.01
    schedule = {"warmup_min_lr": 0.0, "warmup_max_lr": lr, "warmup_num_steps": warmup_steps}
    if total_steps is not None:
        schedule["total_num_steps"] = total_steps
    config = {
        "train_batch_size": micro * accumulation * world,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": 1.0,
        "optimizer": {"type": "AdamW", "params": optimizer_params},
        "scheduler": {"type": "WarmupDecayLR", "params": schedule},
        "bf16": {"enabled": precision == "bf16"},
        "zero_optimization": {"stage": 1},
        "tensorboard": {"enabled": True},
    }
    if finetune is not None:
        config["finetune"] = finetune
    config.update(overrides)
    path.write_text(json.dumps(config, indent=2))
    return path


# The fine-tuning tests' defaults (tests/finetuning/conftest.py's ds_config_writer):
# functools.partial(write_ds_config, **FINETUNING), each keyword still overridable.
FINETUNING = {"micro": 2, "world": 1, "lr": 1e-3, "warmup_steps": 1, "total_steps": None, "betas": None, "eps": None,
              "finetune": {"max_regions": 12}}
