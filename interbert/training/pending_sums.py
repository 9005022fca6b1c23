"""Optimizer steps whose sums are still on the device, read all at once.

The loop adds one `PendingStep` per optimizer step; `read` sums every pending step over the ranks
and copies the table to the host in one read (the loop's `host_reads` counts it), so a GPU never
waits on the host inside a step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from interbert.training.distributed import all_reduce_sum


@dataclass
class PendingStep:
    step: int
    epoch: int
    device_sums: torch.Tensor  # one float64 per name of `PendingSums.device_names`
    host_sums: dict[str, float]
    learning_rate: float
    loss_scale: float
    skipped_steps: int
    grad_norm: float | torch.Tensor | None  # a device tensor is read with the rest; None: not computed


@dataclass
class ReadStep:
    pending: PendingStep
    sums: dict[str, float]  # over every rank and micro-batch
    grad_norm: float  # NaN when not computed


class PendingSums:
    def __init__(self, device: torch.device):
        self.device = device
        self.device_names: tuple[str, ...] = ()
        self.steps: list[PendingStep] = []

    def add(self, step: PendingStep) -> None:
        self.steps.append(step)

    def read(self) -> list[ReadStep]:
        """Collective: every rank calls it with the same steps pending."""
        steps, self.steps = self.steps, []
        if not steps:
            return []
        host_names = tuple(steps[0].host_sums)
        host = torch.tensor([[p.host_sums[name] for name in host_names] for p in steps], dtype=torch.float64,
                            device=self.device)
        table = all_reduce_sum(torch.cat([torch.stack([p.device_sums for p in steps]), host], dim=1))
        norms = torch.stack([torch.as_tensor(p.grad_norm if p.grad_norm is not None else float("nan"),
                                             dtype=torch.float64).to(self.device) for p in steps])
        read = torch.cat([table.flatten(), norms]).cpu().tolist()
        width, names = table.shape[1], (*self.device_names, *host_names)
        return [ReadStep(p, dict(zip(names, read[row * width:(row + 1) * width])), read[len(steps) * width + row])
                for row, p in enumerate(steps)]
