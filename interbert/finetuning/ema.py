"""Exponential moving average of the weights (paper Appendix 6.2: rate 0.9999).

After every optimizer step: shadow ← rate · shadow + (1 − rate) · weight, kept in float32
whatever the training precision. `swapped_in(model)` puts the averaged weights into the model
for evaluation or saving and puts the raw ones back afterwards.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

EMA_FILE = "ema.safetensors"


class ExponentialMovingAverage:
    """An average of `model`'s trainable parameters. With `warmup`, the rate of update n is
    min(rate, (1 + n) / (10 + n)), so that a short run is not dominated by the initial weights."""

    def __init__(self, model: nn.Module, rate: float = 0.9999, warmup: bool = False):
        if not 0.0 < rate < 1.0:
            raise ValueError(f"EMA rate must lie in (0, 1), got {rate}")
        self.rate, self.warmup = float(rate), bool(warmup)
        self.updates = 0
        self.shadow = {name: p.detach().float().clone()
                       for name, p in model.named_parameters() if p.requires_grad}

    def current_rate(self) -> float:
        if not self.warmup:
            return self.rate
        return min(self.rate, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        rate = self.current_rate()
        for name, parameter in model.named_parameters():
            if name in self.shadow:
                shadow = self.shadow[name]
                shadow.mul_(rate).add_(parameter.detach().to(shadow.device, torch.float32),
                                       alpha=1.0 - rate)
        self.updates += 1

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module):
        """Within the block `model` holds the averaged weights (cast to its own dtypes)."""
        raw = {}
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name in self.shadow:
                    raw[name] = parameter.detach().clone()
                    parameter.copy_(self.shadow[name].to(parameter.device, parameter.dtype))
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, parameter in model.named_parameters():
                    if name in raw:
                        parameter.copy_(raw[name])

    def save(self, path: str | Path) -> None:
        save_file({name: t.contiguous() for name, t in self.shadow.items()}, str(path),
                  metadata={"rate": repr(self.rate), "warmup": str(self.warmup),
                            "updates": str(self.updates)})

    def load(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the checkpoint has no EMA weights; it was written "
                                    "without EMA, so resume it with EMA disabled in the config")
        tensors = load_file(str(path))
        if set(tensors) != set(self.shadow):
            raise ValueError(f"{path}: its EMA tensors do not match this model's trainable "
                             "parameters; resume with the same task and model config")
        with safe_open(str(path), "pt") as handle:
            self.updates = int(handle.metadata().get("updates", 0))
        self.shadow = {name: t.float() for name, t in tensors.items()}
