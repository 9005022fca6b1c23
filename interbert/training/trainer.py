"""The pretraining loop, in plain sight: fetch micro-batches, forward, agree across ranks,
backward, step; log, validate, checkpoint; stop cleanly on a signal or a non-finite loss.

Every micro-batch ends in one small all-reduce of a vector of sums (losses, correct/count per
task, samples, FLOPs, a non-finite flag, a stop flag). It gives every rank the same view of
the step: the same averaged losses to log, the same decision to stop on NaN before the bad
gradients are applied, and the same step at which to stop for a signal.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from interbert.config import InterBertConfig
from interbert.evaluation.retrieval import to_device
from interbert.evaluation.full_retrieval import evaluate_full_retrieval
from interbert.training.batches import fetch_across_epochs
from interbert.training import checkpoint
from interbert.training.distributed import DistributedEnvironment, all_reduce_sum
from interbert.training.flops import Peak, batch_flops
from interbert.training.monitor import TASKS, Monitor, StepTimer, console_line
from interbert.training.precision import PrecisionChoice
from interbert.training.stopping import StopRequest

# Layout of the per-micro-batch vector of sums.
SLOTS = ("loss", *(f"loss_{t}" for t in TASKS), *(f"correct_{t}" for t in TASKS),
         *(f"count_{t}" for t in TASKS), "micro_batches", "samples", "flops", "nonfinite", "stop")
SLOT = {name: i for i, name in enumerate(SLOTS)}

EXIT_OK = 0
EXIT_NONFINITE = 3


@dataclass
class Schedule:
    max_steps: int
    steps_per_epoch: int
    log_every: int
    save_every: int
    keep_last: int
    eval_every: int


class NonFiniteLoss(RuntimeError):
    pass


class Trainer:
    def __init__(self, *, engine, model_config: InterBertConfig, train_loader, validation_loader,
                 retrieval_corpus, monitor: Monitor, env: DistributedEnvironment,
                 precision: PrecisionChoice, schedule: Schedule, checkpoint_dir: Path, peak: Peak,
                 retrieval_batch_size: int | None = None, validation_batches: int = 20):
        self.engine = engine
        self.model_config = model_config
        self.loader = train_loader
        self.validation_loader = validation_loader
        self.retrieval_corpus = retrieval_corpus
        self.monitor = monitor
        self.env = env
        self.precision = precision
        self.schedule = schedule
        self.checkpoint_dir = checkpoint_dir
        self.peak = peak
        self.retrieval_batch_size = retrieval_batch_size
        self.validation_batches = validation_batches
        self.accumulation = engine.gradient_accumulation_steps()
        self.step = 0
        self.epoch = 0
        self.last_saved_step: int | None = None
        self.stop = StopRequest()
        self._iterator = None

    # ------------------------------------------------------------------ data
    def _next_batch(self) -> dict:
        batch, self._iterator, self.epoch = fetch_across_epochs(self.loader, self._iterator, self.epoch)
        return batch

    # ------------------------------------------------------------------ resume
    def resume(self) -> None:
        state = checkpoint.load(self.engine, self.checkpoint_dir, self.env.rank)
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.loader.load_state_dict(state["sampler"])
        sampler = self.loader.sampler
        remaining = len(sampler) - sampler.consumed
        if remaining < self.loader.batch_size:  # the saved epoch was used up
            self.epoch += 1
        self.last_saved_step = self.step
        self.monitor.print(f"resumed from {state['path']} at step {self.step}, epoch {self.epoch}")

    def save(self) -> Path:
        path = checkpoint.save(self.engine, self.checkpoint_dir, step=self.step, epoch=self.epoch,
                               sampler_state=self.loader.state_dict(),
                               keep_last=self.schedule.keep_last, rank=self.env.rank)
        self.last_saved_step = self.step
        self.monitor.print(f"checkpoint saved: {path}")
        return path

    # ------------------------------------------------------------------ one step
    def _micro_step(self, batch: dict, last_micro: bool) -> torch.Tensor:
        flops = batch_flops(self.model_config, batch).total
        batch = to_device(batch, self.env.device, self.precision.dtype)
        output = self.engine(**batch)
        sums = torch.zeros(len(SLOTS), dtype=torch.float64)
        loss = output.loss.detach().float()
        finite = bool(torch.isfinite(loss))
        sums[SLOT["loss"]] = float(loss) if finite else 0.0
        for task in TASKS:
            count = output.counts.get(task, 0)
            if task in output.losses:
                sums[SLOT[f"loss_{task}"]] = float(output.losses[task]) if finite else 0.0
            if count:
                sums[SLOT[f"correct_{task}"]] = float(output.accuracies[task]) * count
                sums[SLOT[f"count_{task}"]] = count
        sums[SLOT["micro_batches"]] = 1
        sums[SLOT["samples"]] = batch["itm_labels"].shape[0]
        sums[SLOT["flops"]] = flops
        sums[SLOT["nonfinite"]] = 0.0 if finite else 1.0
        sums[SLOT["stop"]] = 1.0 if (last_micro and self.stop.requested) else 0.0
        sums = all_reduce_sum(sums.to(self.env.device)).cpu()
        # fp16 overflows are the loss scaler's business (the step is skipped and counted); in
        # fp32/bf16 a non-finite loss means the run has diverged.
        if sums[SLOT["nonfinite"]] > 0 and not self.precision.uses_loss_scaling:
            raise NonFiniteLoss(
                f"step {self.step + 1}: the loss is {float(loss)} on rank {self.env.rank} "
                f"({int(sums[SLOT['nonfinite']])} of {self.env.world_size} ranks non-finite); "
                "stopping before the update is applied")
        self.engine.backward(output.loss)
        self.engine.step()
        return sums

    def _learning_rate(self) -> float:
        return float(self.engine.optimizer.param_groups[0]["lr"])

    def _step_values(self, sums: torch.Tensor, learning_rate: float) -> dict[str, float]:
        micro = max(float(sums[SLOT["micro_batches"]]), 1.0)
        values = {"train/loss": float(sums[SLOT["loss"]]) / micro}
        for task in TASKS:
            values[f"train/loss_{task}"] = float(sums[SLOT[f"loss_{task}"]]) / micro
            count = float(sums[SLOT[f"count_{task}"]])
            values[f"train/accuracy_{task}"] = (float(sums[SLOT[f"correct_{task}"]]) / count
                                                if count else float("nan"))
        values["train/learning_rate"] = learning_rate
        values["train/loss_scale"] = self._loss_scale()
        values["train/skipped_steps"] = float(self.engine.skipped_steps)
        norm = self.engine.get_global_grad_norm()
        values["train/grad_norm"] = float(norm) if norm is not None else float("nan")
        return values

    def _loss_scale(self) -> float:
        if not self.precision.uses_loss_scaling:
            return 1.0
        optimizer = self.engine.optimizer
        for name in ("cur_scale", "loss_scale"):
            value = getattr(optimizer, name, None)
            if value is not None:
                return float(value)
        return float("nan")

    # ------------------------------------------------------------------ the loop
    def train(self) -> int:
        """Run until max_steps, a stop signal or a non-finite loss; returns the exit status."""
        self.stop.install()
        try:
            return self._train()
        finally:
            self.stop.uninstall()

    def _train(self) -> int:
        schedule = self.schedule
        timer, window = StepTimer(), torch.zeros(len(SLOTS), dtype=torch.float64)
        start_step, run_start = self.step, time.perf_counter()
        self.engine.train()
        while self.step < schedule.max_steps:
            sums = torch.zeros(len(SLOTS), dtype=torch.float64)
            learning_rate = self._learning_rate()  # the rate this step's update uses
            for micro in range(self.accumulation):
                fetch_start = time.perf_counter()
                batch = self._next_batch()
                timer.data_wait += time.perf_counter() - fetch_start
                try:
                    sums += self._micro_step(batch, micro == self.accumulation - 1)
                except NonFiniteLoss as error:
                    self._report_nonfinite(error)
                    return EXIT_NONFINITE
            self.step += 1
            window += sums
            values = self._step_values(sums, learning_rate)
            self.monitor.record({"step": self.step, "epoch": self.epoch,
                                 **{k.split("/", 1)[1]: v for k, v in values.items()}})
            if self.step % schedule.log_every == 0 or self.step == schedule.max_steps:
                self._log_window(values, window, timer, start_step, run_start)
                window.zero_()
                timer.reset()
            if sums[SLOT["stop"]] > 0:
                self.monitor.print(f"stop requested ({self.stop.signal_name or 'another rank'}): "
                                   f"saving at step {self.step} and exiting")
                self.save()
                return EXIT_OK
            if schedule.save_every and self.step % schedule.save_every == 0:
                paused = time.perf_counter()
                self.save()
                timer.exclude(time.perf_counter() - paused)
            if schedule.eval_every and self.step % schedule.eval_every == 0:
                paused = time.perf_counter()
                self.validate()
                timer.exclude(time.perf_counter() - paused)
        if self.last_saved_step != self.step:
            self.save()
        return EXIT_OK

    def _log_window(self, values, window, timer, start_step, run_start) -> None:
        elapsed = timer.elapsed()
        flops_per_second = float(window[SLOT["flops"]]) / elapsed
        values = dict(values)
        values["perf/samples_per_second"] = float(window[SLOT["samples"]]) / elapsed
        values["perf/tflops"] = flops_per_second / 1e12
        values["perf/mfu"] = flops_per_second / (self.env.world_size * self.peak.flops_per_second)
        values["perf/data_wait_fraction"] = min(timer.data_wait / elapsed, 1.0)
        self.monitor.scalars(values, self.step)
        done = self.step - start_step
        seconds_per_step = (time.perf_counter() - run_start) / max(done, 1)
        eta = seconds_per_step * (self.schedule.max_steps - self.step)
        self.monitor.print(console_line(self.step, self.schedule.max_steps, self.epoch, values, eta))
        self.monitor.flush()

    def _report_nonfinite(self, error: NonFiniteLoss) -> None:
        where = (f"the last good checkpoint is {checkpoint.tag_for(self.last_saved_step)} in "
                 f"{self.checkpoint_dir} (resume from it with --resume, e.g. with a lower learning "
                 "rate or fp32)" if self.last_saved_step is not None
                 else "no checkpoint was saved yet in this run")
        self.monitor.print(f"non-finite loss: {error}; {where}")

    # ------------------------------------------------------------------ validation
    def validate(self) -> dict[str, float]:
        """Validation losses and zero-shot retrieval; written to TensorBoard as `val/*`.

        Isolated from the training random stream, so validating does not change training."""
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            return self._validate()

    def _validate(self) -> dict[str, float]:
        model = self.engine.module
        results: dict[str, float] = {}
        if self.validation_loader is not None:
            results.update(self._validation_losses(model))
        if self.retrieval_corpus is not None:
            retrieval = evaluate_full_retrieval(model, self.retrieval_corpus, device=self.env.device,
                                                dtype=self.precision.dtype, pair_batch=self.retrieval_batch_size)
            results.update({f"retrieval_{k}": v for k, v in retrieval.full.metrics.items()})
            results["retrieval_seconds"] = retrieval.full.seconds
        self.monitor.scalars({f"val/{k}": v for k, v in results.items()}, self.step)
        if results:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in results.items())
            self.monitor.print(f"validation at step {self.step}: {shown}")
            self.monitor.record({"step": self.step, "validation": results})
        return results

    def _validation_losses(self, model) -> dict[str, float]:
        was_training = model.training
        model.eval()
        sums = torch.zeros(len(SLOTS), dtype=torch.float64)
        try:
            for index, batch in enumerate(self.validation_loader):
                if index >= self.validation_batches:
                    break
                output = model(**to_device(batch, self.env.device, self.precision.dtype))
                sums[SLOT["loss"]] += float(output.loss)
                for task in TASKS:
                    sums[SLOT[f"loss_{task}"]] += float(output.losses.get(task, 0.0))
                    count = output.counts.get(task, 0)
                    if count:
                        sums[SLOT[f"correct_{task}"]] += float(output.accuracies[task]) * count
                        sums[SLOT[f"count_{task}"]] += count
                sums[SLOT["micro_batches"]] += 1
        finally:
            model.train(was_training)
        sums = all_reduce_sum(sums.to(self.env.device)).cpu()
        batches = max(float(sums[SLOT["micro_batches"]]), 1.0)
        results = {"loss": float(sums[SLOT["loss"]]) / batches}
        for task in TASKS:
            results[f"loss_{task}"] = float(sums[SLOT[f"loss_{task}"]]) / batches
            count = float(sums[SLOT[f"count_{task}"]])
            if count:
                results[f"accuracy_{task}"] = float(sums[SLOT[f"correct_{task}"]]) / count
        return results
