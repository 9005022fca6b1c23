"""A fine-tuning task as an objective of the training loop (`training/loop.py`): the task's loss and
training accuracy, the EMA update after every optimizer step, hard-negative refreshes on their
schedule, and evaluation of the raw and the averaged weights.

Its checkpoint files sit beside the engine's in `global_step<N>/`: `ema.safetensors` (rank 0) and
`hard_negatives_rank<r>.pt` (one per rank).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from interbert.finetuning.batching import COUNT_PREFIX
from interbert.finetuning.ema import EMA_FILE
from interbert.training.objective import Objective

COUNTERS = ("count_hard_fallback", "count_hard_mined")


class FinetuneObjective(Objective):
    evaluation_names = ("evaluation", "eval")

    def __init__(self, task, *, device: torch.device, dtype: torch.dtype, ema=None, miner=None, say=print):
        self.task, self.device, self.dtype = task, device, dtype
        self.ema, self.miner, self.say = ema, miner, say

    def measure(self, model, batch: dict) -> dict[str, torch.Tensor]:
        output = model(**{key: value for key, value in batch.items() if not key.startswith(COUNT_PREFIX)})
        return {"loss": output.loss, "correct": output.correct}

    def host_sums(self, batch: dict) -> dict[str, float]:
        return {"samples": batch["labels"].shape[0],
                **{name: float(batch[name]) if name in batch else 0.0 for name in COUNTERS}}

    def step_values(self, sums: dict[str, float]) -> dict[str, float]:
        values = {"loss": sums["loss"] / max(sums["micro_batches"], 1.0)}
        if self.task.spec.kind != "regression":
            values["accuracy"] = sums["correct"] / sums["samples"] if sums["samples"] else float("nan")
        mined = sums["count_hard_mined"] + sums["count_hard_fallback"]
        if mined:
            values["hard_negative_fallback_fraction"] = sums["count_hard_fallback"] / mined
        return values

    def after_update(self, model) -> None:
        if self.ema is not None:
            self.ema.update(model)

    def between_steps(self, model, step: int, max_steps: int) -> None:
        if self.miner is None or step % self.miner.refresh_every:
            return
        started = time.perf_counter()
        pairs = self.miner.refresh(model.pretraining)
        self.say(f"hard negatives mined at step {step}: {pairs} pairs scored on rank 0 in "
                 f"{time.perf_counter() - started:.1f} s (pool {self.miner.pool_size})")

    def evaluate(self, model, step: int) -> dict[str, float]:
        """The task's metrics for the raw weights and, with EMA, the averaged ones (`ema_*`)."""
        results = dict(self.task.evaluate(model, self.device, self.dtype))
        if self.ema is not None:
            with self.ema.swapped_in(model):
                averaged = self.task.evaluate(model, self.device, self.dtype)
            results.update({f"ema_{k}": v for k, v in averaged.items()})
        return results

    def state_dict(self) -> dict:
        return {"task": self.task.spec.name}

    def save_files(self, folder: Path, rank: int) -> None:
        if self.ema is not None and rank == 0:
            self.ema.save(folder / EMA_FILE)
        if self.miner is not None:
            torch.save(self.miner.state_dict(), folder / f"hard_negatives_rank{rank}.pt")

    def load_files(self, folder: Path, rank: int) -> None:
        if self.ema is not None:
            self.ema.load(folder / EMA_FILE)
        if self.miner is not None:
            self.miner.load_state_dict(torch.load(folder / f"hard_negatives_rank{rank}.pt", weights_only=True))
