"""What a run reports: TensorBoard scalars and text (rank 0), a console line every N steps,
and one JSON line per optimizer step in `<output>/train_log.jsonl` (the per-step losses that
tests and resume checks compare)."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from interbert.training.ds_config import ConfigError

TASKS = ("msm", "mrm", "itm")
# Every scalar a training run writes (tests read them back).
TRAIN_SCALARS = (
    "train/loss", *(f"train/loss_{t}" for t in TASKS), *(f"train/accuracy_{t}" for t in TASKS),
    "train/learning_rate", "train/loss_scale", "train/skipped_steps", "train/grad_norm",
    "perf/samples_per_second", "perf/tflops", "perf/mfu", "perf/data_wait_fraction",
)


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class Monitor:
    """Rank 0 writes; other ranks hold a Monitor that does nothing.

    ``deepspeed_monitors``: the DeepSpeed config's enabled wandb / csv_monitor / comet sections
    (``ds_config.external_monitors``); DeepSpeed's own monitors for them receive every scalar.
    """

    def __init__(self, output_dir: Path, enabled: bool, tensorboard: bool, deepspeed_monitors: dict | None = None,
                 prefix: str = "pretrain"):
        self.enabled = enabled
        self.prefix = prefix
        self.writer = None
        self.external = None
        self.tensorboard_dir = output_dir / "tensorboard"
        self._jsonl = None
        if not enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.tensorboard_dir))
        if deepspeed_monitors:
            self.external = _deepspeed_monitors(deepspeed_monitors)
        self._jsonl = open(output_dir / "train_log.jsonl", "a", encoding="utf-8")

    def print(self, message: str) -> None:
        if self.enabled:
            print(f"[{self.prefix}] {message}", flush=True)

    def text(self, tag: str, value: str) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, value, 0)

    def scalars(self, values: dict[str, float], step: int) -> None:
        events = [(tag, value, step) for tag, value in values.items() if value is not None and math.isfinite(value)]
        if self.writer is not None:
            for tag, value, _ in events:
                self.writer.add_scalar(tag, value, step)
        if self.external is not None and events:
            self.external.write_events(events)

    def record(self, record: dict) -> None:
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None


class MonitorSetupError(ConfigError):
    """A monitor section of the DeepSpeed config cannot be honoured (its package is missing)."""


def _deepspeed_monitors(sections: dict):
    """DeepSpeed's MonitorMaster for these sections (TensorBoard off: the run writes its own)."""
    from deepspeed.monitor.config import get_monitor_config
    from deepspeed.monitor.monitor import MonitorMaster

    packages = {"wandb": "wandb", "comet": "comet_ml"}
    for name, package in packages.items():
        if name in sections:
            try:
                __import__(package)
            except ImportError:
                raise MonitorSetupError(f"the DeepSpeed config enables {name}, but the {package} package is not "
                                        f"installed: pip install {package}, or set {name}.enabled to false") from None
    return MonitorMaster(get_monitor_config(dict(sections)))


def console_line(step: int, total_steps: int, epoch: int, values: dict, eta: str, tasks=TASKS) -> str:
    """One line per logging window; `tasks`: the names of the tasks that run (e.g. mlm, mom, itm)."""
    losses = " ".join(f"{t} {values.get(f'train/loss_{t}', float('nan')):.3f}" for t in tasks)
    accuracies = " ".join(f"{t} {values.get(f'train/accuracy_{t}', float('nan')):.2f}"
                          for t in tasks)
    scale = values.get("train/loss_scale")
    parts = [
        f"step {step}/{total_steps}",
        f"epoch {epoch}",
        f"loss {values['train/loss']:.4f} ({losses})",
        f"acc {accuracies}",
        f"lr {values['train/learning_rate']:.2e}",
        f"gnorm {values.get('train/grad_norm', float('nan')):.2f}",
    ]
    if scale is not None and scale != 1.0:
        parts.append(f"scale {scale:g} skipped {int(values.get('train/skipped_steps', 0))}")
    parts += [
        f"{values['perf/samples_per_second']:.1f} samples/s",
        f"{values['perf/tflops'] * 1e3:.2f} GFLOP/s",
        f"MFU {100 * values['perf/mfu']:.1f}%",
        f"data {100 * values['perf/data_wait_fraction']:.0f}%",
        f"ETA {eta}",
    ]
    return " | ".join(parts)


class StepTimer:
    """Training wall time per logging window (checkpointing and validation left out), and
    the part of it spent waiting for data."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.window_start = time.perf_counter()
        self.data_wait = 0.0
        self.excluded = 0.0

    def exclude(self, seconds: float) -> None:
        self.excluded += seconds

    def elapsed(self) -> float:
        return max(time.perf_counter() - self.window_start - self.excluded, 1e-9)
