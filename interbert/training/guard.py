"""The divergence guard: stop a run whose loss has left its normal range, before a checkpoint or the
final model is written from diverged weights.

Judged step by step when the loop reads its sums (every flush, and always before a checkpoint):
- a loss spike: the step's loss above `spike_factor` x the median of the previous good steps' losses
  (up to `HISTORY` of them; judged once `spike_history` steps are known: 3 by default, so a run
  that blows up in its first steps is caught there, and one odd early step does not set the bar);
- in fp32/bf16, a non-finite gradient norm, or a step DeepSpeed skipped: its ZeRO optimizer skips
  the update of a step whose gradients are not finite in bf16 too ("OVERFLOW! Skipping step"), which
  is a divergence there, not an overflow a loss scaler recovers from;
- in fp16, more than `max_skipped_steps` consecutive skipped steps (a loss scale that cannot
  recover skips forever).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

HISTORY = 100


@dataclass(frozen=True)
class GuardSettings:
    spike_factor: float = 10.0  # 0: no spike check
    spike_history: int = 3
    max_skipped_steps: int = 50  # 0: no limit


class Diverged(RuntimeError):
    def __init__(self, step: int, reason: str):
        super().__init__(f"step {step}: {reason}")
        self.step = step


class DivergenceGuard:
    def __init__(self, settings: GuardSettings, loss_scaling: bool):
        self.settings, self.loss_scaling = settings, loss_scaling
        self.losses: deque[float] = deque(maxlen=HISTORY)
        self.skipped_streak = 0
        self.last_skipped_total: int | None = None

    def judge(self, step: int, loss: float, grad_norm: float | None, skipped_total: int) -> None:
        """Raise Diverged when this step is bad; otherwise remember it as a good one. `grad_norm`:
        None when the engine does not compute one (no clipping and no ZeRO)."""
        skipped = self.last_skipped_total is not None and skipped_total > self.last_skipped_total
        self.last_skipped_total = skipped_total
        if skipped and not self.loss_scaling:
            norm = "" if grad_norm is None else f" (the gradient norm is {grad_norm:g})"
            raise Diverged(step, f"the gradients were not finite{norm}: DeepSpeed skipped the update")
        if skipped:
            self.skipped_streak += 1
            limit = self.settings.max_skipped_steps
            if limit and self.skipped_streak > limit:
                raise Diverged(step, f"{self.skipped_streak} consecutive steps skipped by the fp16 loss scaler "
                                     f"(the limit is {limit}, --max-skipped-steps)")
            return  # an overflow step's loss and norm say nothing about the weights
        self.skipped_streak = 0
        if not self.loss_scaling and grad_norm is not None and not math.isfinite(grad_norm):
            raise Diverged(step, f"the gradient norm is {grad_norm}")
        factor = self.settings.spike_factor
        if factor and len(self.losses) >= self.settings.spike_history:
            median = sorted(self.losses)[len(self.losses) // 2]
            if loss > factor * median:
                raise Diverged(step, f"the loss {loss:.4g} is above {factor:g} x the median {median:.4g} of the "
                                     f"last {len(self.losses)} steps (--loss-spike-factor)")
        self.losses.append(loss)
