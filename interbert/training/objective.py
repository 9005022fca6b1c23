"""What a kind of training adds to the one training loop (`training/loop.py`).

Pretraining (`pretraining/objective.py`) and every fine-tuning task (`finetuning/objective.py`)
implement this interface; the loop owns everything else: micro-batches, accumulation, backward and
step through the DeepSpeed engine, the stop decision, the non-finite check, logging windows,
checkpoints and validation.

`measure` returns named tensors: "loss" (what the loop backpropagates) and sums over the micro-batch,
left on the device; `host_sums` names what the host knows from the batch's shapes. The loop adds
both up per optimizer step and reads them once per flush, summed over ranks (`training/pending_sums.py`).
"""
from __future__ import annotations

from pathlib import Path

import torch


class Objective:
    #: (train_log.jsonl key, TensorBoard prefix) of `evaluate`'s results
    evaluation_names: tuple[str, str] = ("validation", "val")

    def measure(self, model, batch: dict) -> dict[str, torch.Tensor]:
        """Forward one micro-batch (already on the device): {"loss": the loss, name: a sum, ...}, the same
        names in the same order for every micro-batch."""
        raise NotImplementedError

    def host_sums(self, batch: dict) -> dict[str, float]:
        """Counts of a micro-batch still on the host, from shapes and counters (no device read);
        "samples" and "flops" (training FLOPs, 0 when not modelled) feed the throughput figures."""
        raise NotImplementedError

    def step_values(self, sums: dict[str, float]) -> dict[str, float]:
        """The scalars of one optimizer step (e.g. "loss", "accuracy_itm") from its sums over every rank
        and micro-batch (`sums["micro_batches"]` included)."""
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

    def state_dict(self) -> dict:
        """Entries of the checkpoint's client state (small values; rank 0's are kept)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """The client state of the checkpoint being resumed (every entry, the loop's own included)."""

    def save_files(self, folder: Path, rank: int) -> None:
        """Files of the objective's own beside the engine's, in the checkpoint folder (e.g. EMA weights)."""

    def load_files(self, folder: Path, rank: int) -> None:
        """Read back what `save_files` wrote."""
