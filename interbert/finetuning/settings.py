"""The `finetune` section of a fine-tuning DeepSpeed config: the task's own knobs.

    "finetune": {"task": "flickr30k", "epochs": 20, "max_regions": 100, "max_text_len": 36,
                 "retrieval_loss": "binary", "warmup_fraction": null,
                 "hard_negatives": {"enabled": true, "pool_size": 16, "refresh_every": 100},
                 "ema": {"enabled": true, "rate": 0.9999, "warmup": false}}

DeepSpeed never sees this section (it is removed before `deepspeed.initialize`). When the
scheduler has no `total_num_steps`, the run's length fills it in; `warmup_fraction` sets
`warmup_num_steps` to that fraction of it (BERT's GLUE recipe).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

from interbert.errors import UserError

SECTION = "finetune"


class SettingsError(UserError, ValueError):
    pass


@dataclass
class HardNegativeSettings:
    enabled: bool = True
    pool_size: int = 16
    refresh_every: int = 100
    kind: str = "mined-images"  # or "release-captions" (a precomputed pool file, --hard-captions)


@dataclass
class EmaSettings:
    enabled: bool = True
    rate: float = 0.9999
    warmup: bool = False


@dataclass
class FinetuneSettings:
    task: str | None = None
    epochs: float | None = None
    max_regions: int = 100
    max_text_len: int | None = None  # default per task: 36 captions, 64 VCR, 128 GLUE
    retrieval_loss: str = "binary"
    warmup_fraction: float | None = None
    hard_negatives: HardNegativeSettings = field(default_factory=HardNegativeSettings)
    ema: EmaSettings = field(default_factory=EmaSettings)


def _build(cls, values: dict, where: str):
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise SettingsError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    return cls(**values)


def split_settings(ds_config: dict, path: str) -> tuple[dict, FinetuneSettings]:
    """(the config without our section, the parsed section) — errors name the file and key."""
    config = copy.deepcopy(ds_config)
    values = dict(config.pop(SECTION, {}) or {})
    where = f"{path}: {SECTION}"
    nested = {"hard_negatives": HardNegativeSettings, "ema": EmaSettings}
    for key, cls in nested.items():
        if key in values:
            if not isinstance(values[key], dict):
                raise SettingsError(f"{where}.{key} must be an object")
            values[key] = _build(cls, values[key], f"{where}.{key}")
    settings = _build(FinetuneSettings, values, where)
    if settings.retrieval_loss not in ("binary", "softmax"):
        raise SettingsError(f"{where}.retrieval_loss is {settings.retrieval_loss!r}: use 'binary' (per pair, as "
                            "released) or 'softmax' (over the 4 choices, as ViLBERT)")
    if not 0.0 < settings.ema.rate < 1.0:
        raise SettingsError(f"{where}.ema.rate must lie in (0, 1), got {settings.ema.rate}")
    if settings.warmup_fraction is not None and not 0.0 <= settings.warmup_fraction < 1.0:
        raise SettingsError(f"{where}.warmup_fraction must lie in [0, 1), got {settings.warmup_fraction}")
    if settings.hard_negatives.pool_size < 1 or settings.hard_negatives.refresh_every < 1:
        raise SettingsError(f"{where}.hard_negatives: pool_size and refresh_every must be at least 1")
    if settings.max_regions < 1:
        raise SettingsError(f"{where}.max_regions must be at least 1")
    return config, settings


def fill_schedule(ds_config: dict, max_steps: int, settings: FinetuneSettings) -> list[str]:
    """Complete the scheduler's step counts for a run of `max_steps`; returns notes to print."""
    notes: list[str] = []
    params = ds_config.get("scheduler", {}).get("params")
    if params is None:
        return notes
    if "total_num_steps" not in params:
        params["total_num_steps"] = max_steps
        notes.append(f"scheduler total_num_steps set to the run's {max_steps} steps")
    if settings.warmup_fraction is not None:
        params["warmup_num_steps"] = max(1, round(settings.warmup_fraction * params["total_num_steps"]))
        notes.append(f"scheduler warmup_num_steps = {settings.warmup_fraction} x total = "
                     f"{params['warmup_num_steps']}")
    return notes


@dataclass(frozen=True)
class TaskInputs:
    """The data and evaluation flags a task reads (typed, so task code never sees argparse)."""
    task: str
    vocab: str
    seed: int = 42
    eval_only: bool = False
    features: str | None = None
    gt_features: str | None = None
    captions: str | None = None
    train_split: str = "train"
    eval_split: str = "val"
    eval_images: int = 0
    vcr_train: str | None = None
    vcr_val: str | None = None
    vcr_test: str | None = None
    hard_negatives: str | None = None  # overrides finetune.hard_negatives.kind
    hard_captions: str | None = None
    glue_dir: str | None = None
    skip_malformed: bool = False
    eval_batch_size: int = 32
    pair_batch: int = 0
    two_stage_k: int = 0

    @classmethod
    def from_args(cls, args) -> TaskInputs:
        return cls(**{name: getattr(args, name) for name in cls.__dataclass_fields__})
