"""What a kind of training adds to the one training loop (`training/loop.py`).

Pretraining (`training/pretraining_objective.py`) and every fine-tuning task
(`finetuning/objective.py`) implement this interface; the loop owns everything else: micro-batches,
accumulation, backward and step through the DeepSpeed engine, the stop decision, the non-finite
check, logging windows, checkpoints and validation.

`measure` returns the loss to backpropagate and a vector of sums over the micro-batch (one entry per
name in `slots`), detached and left on the device; `host_sums` counts what the host knows from the
batch's shapes (samples, FLOPs, counters of the collate function). The loop adds both up per
optimizer step and reads them once per flush, summed over ranks.
"""
from __future__ import annotations

from pathlib import Path

import torch


class Objective:
    #: console prefix, e.g. "pretrain" or "finetune"
    name: str = "train"
    #: names of the entries of the sums vector `measure` returns
    slots: tuple[str, ...] = ()
    #: names of what `host_sums` returns; "samples" and "flops" feed the throughput figures
    host_slots: tuple[str, ...] = ("samples", "flops")
    #: (train_log.jsonl key, TensorBoard prefix) of `evaluate`'s results
    evaluation_names: tuple[str, str] = ("validation", "val")

    def measure(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward one micro-batch (already on the device): (loss, detached sums over `slots`)."""
        raise NotImplementedError

    def host_sums(self, batch: dict) -> list[float]:
        """One value per `host_slots` for a micro-batch still on the host, from shapes and counters
        (no device read). FLOPs are training FLOPs; 0 when not modelled (no MFU then)."""
        raise NotImplementedError

    def step_values(self, sums: dict[str, float]) -> dict[str, float]:
        """`train/*` scalars of one optimizer step from its sums over every rank and micro-batch
        (`sums["micro_batches"]` included)."""
        raise NotImplementedError

    def console_line(self, step: int, max_steps: int, epoch: int, values: dict, eta: str) -> str:
        shown = " | ".join(f"{k.split('/', 1)[1]} {v:.4g}" for k, v in values.items())
        return f"step {step}/{max_steps} | epoch {epoch} | {shown} | ETA {eta}"

    def after_update(self, model) -> None:
        """After each optimizer step (e.g. the EMA of the weights)."""

    def between_steps(self, model, step: int, max_steps: int) -> None:
        """Before the first step and after each one, outside the timed window (e.g. hard-negative
        mining on its schedule)."""

    def evaluate(self, model, step: int) -> dict[str, float]:
        """Validation (collective: every rank calls it at the same step)."""
        return {}

    def checkpoint_extra(self) -> dict:
        """Added to the checkpoint's client state."""
        return {}

    def save_state(self, folder: Path, rank: int) -> None:
        """Files of the objective's own beside the engine's, in the checkpoint folder."""

    def load_state(self, folder: Path, rank: int) -> None:
        """Read back what `save_state` wrote."""
