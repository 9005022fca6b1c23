"""Reading a DeepSpeed JSON config and checking it against the job before DeepSpeed sees it,
so that mistakes fail at once with the file, the key and the fix in the message."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

from interbert.errors import UserError
from interbert.resources import find_shipped, shipped

BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


class ConfigError(UserError, ValueError):
    pass


def load_ds_config(path: str | Path) -> dict:
    """The DeepSpeed config at ``path``; a path that does not exist but names a shipped config
    (``pretrain_v100x8.json``, ``ds_configs/pretrain_v100x8.json`` from any folder) is read from
    the shipped copy (``interbert configs``)."""
    path = Path(path)
    if not path.is_file():
        found = find_shipped(str(path), "ds_configs")
        if found is None:
            raise ConfigError(f"--deepspeed_config {path}: no such file, and no shipped config of that name "
                              f"({', '.join(shipped('ds_configs'))}; `interbert configs` lists them)")
        path = found
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a JSON object of DeepSpeed settings")
    return config


def resolve_batch_sizes(config: dict, world_size: int, path: str | Path) -> dict:
    """Fill in the one missing batch key (as DeepSpeed would) and check that
    train_batch_size == micro-batch x accumulation x world size. Returns a copy."""
    config = copy.deepcopy(config)
    given = {key: config.get(key) for key in BATCH_KEYS}
    for key, value in given.items():
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ConfigError(f"{path}: {key} must be a positive integer, got {value!r}")
    total, micro, accumulation = (given[k] for k in BATCH_KEYS)
    if micro is None:
        if total is None:
            raise ConfigError(f"{path}: set train_batch_size or train_micro_batch_size_per_gpu")
        accumulation = accumulation or 1
        if total % (accumulation * world_size):
            raise ConfigError(
                f"{path}: train_batch_size {total} is not divisible by gradient_accumulation_steps "
                f"{accumulation} x {world_size} ranks; change one of them")
        micro = total // (accumulation * world_size)
    elif total is None:
        accumulation = accumulation or 1  # as DeepSpeed: the micro-batch alone means no accumulation
        total = micro * accumulation * world_size
    elif accumulation is None:
        if total % (micro * world_size):
            raise ConfigError(
                f"{path}: train_batch_size {total} is not divisible by "
                f"train_micro_batch_size_per_gpu {micro} x {world_size} ranks; change one of them")
        accumulation = total // (micro * world_size)
    if total != micro * accumulation * world_size:
        raise ConfigError(
            f"{path}: the batch sizes disagree for {world_size} ranks: train_batch_size {total} != "
            f"train_micro_batch_size_per_gpu {micro} x gradient_accumulation_steps {accumulation} "
            f"x {world_size} ranks = {micro * accumulation * world_size}. For {world_size} ranks "
            f"set gradient_accumulation_steps to {total / (micro * world_size):g} (it must be a "
            "whole number) or change the micro-batch")
    config.update(train_batch_size=total, train_micro_batch_size_per_gpu=micro,
                  gradient_accumulation_steps=accumulation)
    return config


def tensorboard_enabled(config: dict) -> bool:
    return bool(config.get("tensorboard", {}).get("enabled", False))


EXTERNAL_MONITORS = ("wandb", "csv_monitor", "comet")


def external_monitors(config: dict) -> dict:
    """The config's wandb, csv_monitor and comet sections: DeepSpeed's own monitors, which the run
    feeds with its scalars (``Monitor``); TensorBoard is the run's own writer."""
    return {name: config[name] for name in EXTERNAL_MONITORS if config.get(name, {}).get("enabled")}


def for_engine(config: dict) -> dict:
    """The dict handed to deepspeed.initialize: the monitor sections go to the run's ``Monitor``
    (its own TensorBoard writer, and DeepSpeed's wandb / csv / comet monitors fed with the run's
    scalars, a superset of the engine's); everything else, the optimizer included, is DeepSpeed's."""
    engine_config = copy.deepcopy(config)
    for monitor in ("tensorboard", "wandb", "csv_monitor", "comet"):
        engine_config.pop(monitor, None)
    return engine_config


def scheduler_total_steps(config: dict) -> int | None:
    params = config.get("scheduler", {}).get("params", {})
    return params.get("total_num_steps")


def fit_schedule(config: dict, total_steps: int, path: str | Path) -> str:
    """Rescale a WarmupDecayLR schedule to `total_steps` (warm-up in proportion), in place;
    returns what was done, in words."""
    scheduler = config.get("scheduler", {})
    params = scheduler.get("params", {})
    if scheduler.get("type") != "WarmupDecayLR" or "total_num_steps" not in params:
        raise ConfigError(f"--fit-schedule: {path} has no WarmupDecayLR scheduler with "
                          "total_num_steps to stretch")
    old_total, old_warmup = params["total_num_steps"], params.get("warmup_num_steps", 0)
    params["total_num_steps"] = total_steps
    params["warmup_num_steps"] = max(1, round(old_warmup * total_steps / old_total))
    return (f"schedule fitted to the run: total_num_steps {old_total} -> {total_steps}, "
            f"warmup_num_steps {old_warmup} -> {params['warmup_num_steps']}")


def total_steps_for_epochs(pairs: int, epochs: float, train_batch_size: int) -> int:
    """Optimizer steps for `epochs` passes over `pairs` pairs at a global batch size."""
    return math.ceil(epochs * pairs / train_batch_size)
