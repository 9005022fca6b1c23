"""Pretraining as an objective of the training loop: the weighted MSM + MRM + ITM loss, per-task
losses and accuracies, FLOPs for MFU, and validation (held-out losses and zero-shot retrieval)."""
from __future__ import annotations

import torch

from interbert.batch_contract import to_device
from interbert.config import InterBertConfig
from interbert.evaluation.full_retrieval import evaluate_full_retrieval
from interbert.modeling.flops import batch_flops
from interbert.pretraining.console import TASKS, console_line
from interbert.training.distributed import all_reduce_sum
from interbert.training.objective import Objective


class PretrainingObjective(Objective):
    def __init__(self, model_config: InterBertConfig, *, device: torch.device, dtype: torch.dtype,
                 validation_loader=None, retrieval_corpus=None, retrieval_batch_size: int | None = None,
                 validation_batches: int = 20):
        self.model_config, self.device, self.dtype = model_config, device, dtype
        self.shown = shown_tasks(model_config.pretraining_tasks)
        self.validation_loader, self.retrieval_corpus = validation_loader, retrieval_corpus
        self.retrieval_batch_size, self.validation_batches = retrieval_batch_size, validation_batches

    def measure(self, model, batch: dict) -> dict[str, torch.Tensor]:
        """The loss, and per task slot (MSM/MLM, MRM/MOM, ITM) its loss, correct predictions and count."""
        output = model(**batch)
        zero = torch.zeros((), dtype=torch.float64, device=output.loss.device)
        counts = torch.tensor([float(output.counts.get(t, 0)) for t in TASKS], dtype=torch.float64,
                              device=output.loss.device)  # known on the host: one copy, no read back
        sums = {"loss": output.loss}
        sums.update({f"loss_{t}": output.losses[t] if t in output.losses else zero for t in TASKS})
        sums.update({f"correct_{t}": torch.nan_to_num(output.accuracies[t].double() * output.counts[t])
                     if output.counts.get(t) else zero for t in TASKS})
        sums.update({f"count_{t}": counts[index] for index, t in enumerate(TASKS)})
        return sums

    def host_sums(self, batch: dict) -> dict[str, float]:
        return {"samples": batch["itm_labels"].shape[0], "flops": batch_flops(self.model_config, batch).total}

    def step_values(self, sums: dict[str, float]) -> dict[str, float]:
        return averages(sums, self.shown)

    def console_line(self, step: int, max_steps: int, epoch: int, values: dict, eta: str) -> str:
        return console_line(step, max_steps, epoch, values, eta, [name for _, name in self.shown])

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def evaluate(self, model, step: int) -> dict[str, float]:
        results: dict[str, float] = {}
        if self.validation_loader is not None:
            results.update(self._validation_losses(model))
        if self.retrieval_corpus is not None:
            retrieval = evaluate_full_retrieval(model, self.retrieval_corpus, device=self.device, dtype=self.dtype,
                                                pair_batch=self.retrieval_batch_size)
            results.update({f"retrieval_{k}": v for k, v in retrieval.full.metrics.items()})
            results["retrieval_seconds"] = retrieval.full.seconds
        return results

    def _validation_losses(self, model) -> dict[str, float]:
        was_training = model.training
        model.eval()
        names: tuple[str, ...] = ()
        sums = torch.zeros((), dtype=torch.float64, device=self.device)
        try:
            for index, batch in enumerate(self.validation_loader):
                if index >= self.validation_batches:
                    break
                measured = self.measure(model, to_device(batch, self.device, self.dtype))
                names = (*measured, "micro_batches")
                stacked = [value.detach().double().reshape(()) for value in measured.values()]
                sums = sums + torch.stack([*stacked, sums.new_ones(())])
        finally:
            model.train(was_training)
        if not names:
            return {}
        values = dict(zip(names, all_reduce_sum(sums).cpu().tolist()))
        return {name: value for name, value in averages(values, self.shown).items()
                if value == value}  # no NaN accuracies


def shown_tasks(pretraining_tasks: str) -> list[tuple[str, str]]:
    """(output slot, name) of the tasks that run: the slot "msm" carries MSM or MLM, "mrm" MRM or MOM."""
    chosen = pretraining_tasks.split(",")
    slot = {"msm": "msm", "mlm": "msm", "mrm": "mrm", "mom": "mrm", "itm": "itm"}
    return sorted(((slot[name], name) for name in chosen), key=lambda pair: TASKS.index(pair[0]))


def averages(sums: dict[str, float], shown: list[tuple[str, str]]) -> dict[str, float]:
    """Mean losses per micro-batch and accuracies per counted item (NaN where nothing was counted),
    under the names of the tasks that run."""
    batches = max(sums["micro_batches"], 1.0)
    values = {"loss": sums["loss"] / batches}
    for slot, name in shown:
        values[f"loss_{name}"] = sums[f"loss_{slot}"] / batches
        count = sums[f"count_{slot}"]
        values[f"accuracy_{name}"] = sums[f"correct_{slot}"] / count if count else float("nan")
    return values
