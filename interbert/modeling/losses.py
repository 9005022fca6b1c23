"""The three pretraining losses (paper eq. 5-8). Each takes the rows that count (masked
positions, masked regions, pairs) and returns a TaskLoss: the loss, and the correct and total
counts behind its accuracy. An empty selection gives a zero loss that still reaches the head's
parameters, so every rank runs the same backward graph."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class TaskLoss:
    loss: torch.Tensor  # scalar
    correct: torch.Tensor  # scalar long
    count: int

    @property
    def accuracy(self) -> torch.Tensor:
        if self.count == 0:
            return torch.tensor(float("nan"))
        return self.correct.float() / self.count


def _correct(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (logits.detach().argmax(dim=-1) == targets).sum()


def msm_loss(logits: torch.Tensor, targets: torch.Tensor) -> TaskLoss:
    """Cross-entropy over the vocabulary. logits: N×V at masked positions, targets: N."""
    count = targets.numel()
    loss = F.cross_entropy(logits.float(), targets, reduction="sum") / max(count, 1)
    return TaskLoss(loss, _correct(logits, targets), count)


def mrm_loss(logits: torch.Tensor, targets: torch.Tensor, soft_targets: torch.Tensor | None,
             kind: str) -> TaskLoss:
    """Masked region modeling. logits: N×C at masked regions; targets: N detector classes;
    soft_targets: N×C detector class distributions (needed for kind "kl").

    "kl": KL(detector distribution ‖ softmax(logits)), summed over regions, divided by N (as
    released). "ce": cross-entropy against the detector's top class."""
    count = targets.numel()
    if kind == "kl":
        assert soft_targets is not None  # InterBertForPretraining._mrm refuses "kl" without them
        log_probs = F.log_softmax(logits.float(), dim=-1)
        loss = F.kl_div(log_probs, soft_targets.float(), reduction="sum") / max(count, 1)
    else:
        loss = F.cross_entropy(logits.float(), targets, reduction="sum") / max(count, 1)
    return TaskLoss(loss, _correct(logits, targets), count)


def itm_loss(logits: torch.Tensor, targets: torch.Tensor) -> TaskLoss:
    """Cross-entropy on the 2-way matching logits. logits: B×2, targets: B (1 = matched)."""
    count = targets.numel()
    loss = F.cross_entropy(logits.float(), targets, reduction="sum") / max(count, 1)
    return TaskLoss(loss, _correct(logits, targets), count)
