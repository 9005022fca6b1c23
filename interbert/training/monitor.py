"""What a run reports: TensorBoard scalars and text (rank 0), a console line every N steps,
and one JSON line per optimizer step in `<output>/train_log.jsonl` (the per-step losses that
tests and resume checks compare)."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from interbert.training.ds_config import ConfigError


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


class Window:
    """One logging window: training wall time (checkpointing and validation left out), the part of it
    spent waiting for data, and the samples and FLOPs trained; `perf/*` scalars from them."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.start = time.perf_counter()
        self.data_wait = self.excluded = self.samples = self.flops = 0.0

    def exclude(self, seconds: float) -> None:
        self.excluded += seconds

    def elapsed(self) -> float:
        return max(time.perf_counter() - self.start - self.excluded, 1e-9)

    def perf_values(self, world_size: int, peak_flops: float) -> dict[str, float]:
        """Samples/s and the data-wait share; TFLOP/s where FLOPs are modelled, MFU where a peak is known."""
        elapsed = self.elapsed()
        values = {"perf/samples_per_second": self.samples / elapsed,
                  "perf/data_wait_fraction": min(self.data_wait / elapsed, 1.0)}
        if self.flops:
            flops_per_second = self.flops / elapsed
            values["perf/tflops"] = flops_per_second / 1e12
            if peak_flops:
                values["perf/mfu"] = flops_per_second / (world_size * peak_flops)
        return values
