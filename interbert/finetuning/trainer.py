"""The fine-tuning loop: the pretraining loop's habits (one all-reduce of sums per micro-batch,
a shared stop decision, checkpoints with the sampler position and random states, TensorBoard)
for one task, plus the EMA update after every optimizer step, hard-negative refreshes on
their schedule, and evaluation of the raw and the averaged weights.

Checkpoint = interbert.training.checkpoint (DeepSpeed engine state + client state) and, in the
same `global_step<N>/` folder, `ema.safetensors` (rank 0) and `hard_negatives_rank<r>.pt`.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from interbert.evaluation.retrieval import to_device
from interbert.finetuning.batching import split_counters
from interbert.finetuning.ema import EMA_FILE
from interbert.training.batches import fetch_across_epochs
from interbert.training import checkpoint
from interbert.training.distributed import all_reduce_sum, barrier
from interbert.training.monitor import Monitor, StepTimer, format_duration
from interbert.training.stopping import StopRequest

COUNTERS = ("count_hard_fallback", "count_hard_mined")
SLOTS = ("loss", "correct", "count", "micro_batches", "nonfinite", "stop", *COUNTERS)
SLOT = {name: i for i, name in enumerate(SLOTS)}
EXIT_OK, EXIT_NONFINITE = 0, 3


class FinetuneMonitor(Monitor):
    def print(self, message: str) -> None:
        if self.enabled:
            print(f"[finetune] {message}", flush=True)


class FinetuneTrainer:
    def __init__(self, *, engine, task, loader, monitor: Monitor, env, precision, schedule,
                 checkpoint_dir: Path, ema=None, miner=None):
        self.engine, self.task, self.loader, self.monitor = engine, task, loader, monitor
        self.env, self.precision, self.schedule = env, precision, schedule
        self.checkpoint_dir, self.ema, self.miner = checkpoint_dir, ema, miner
        self.accumulation = engine.gradient_accumulation_steps()
        self.step = self.epoch = 0
        self.last_saved_step = None
        self.stop = StopRequest()
        self._iterator = None

    # ------------------------------------------------------------------ data
    def _next_batch(self) -> dict:
        batch, self._iterator, self.epoch = fetch_across_epochs(self.loader, self._iterator, self.epoch)
        return batch

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> Path:
        path = checkpoint.save(self.engine, self.checkpoint_dir, step=self.step, epoch=self.epoch,
                               sampler_state=self.loader.state_dict(), keep_last=self.schedule.keep_last,
                               rank=self.env.rank, extra={"task": self.task.spec.name})
        if self.ema is not None and self.env.is_main:
            self.ema.save(path / EMA_FILE)
        if self.miner is not None:
            torch.save(self.miner.state_dict(), path / f"hard_negatives_rank{self.env.rank}.pt")
        barrier()
        self.last_saved_step = self.step
        self.monitor.print(f"checkpoint saved: {path}")
        return path

    def resume(self) -> None:
        state = checkpoint.load(self.engine, self.checkpoint_dir, self.env.rank)
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.loader.load_state_dict(state["sampler"])
        sampler = self.loader.sampler
        if len(sampler) - sampler.consumed < self.loader.batch_size:
            self.epoch += 1
        folder = self.checkpoint_dir / checkpoint.tag_for(self.step)
        if self.ema is not None:
            self.ema.load(folder / EMA_FILE)
        if self.miner is not None:
            self.miner.load_state_dict(torch.load(folder / f"hard_negatives_rank{self.env.rank}.pt",
                                                  weights_only=True))
        self.last_saved_step = self.step
        self.monitor.print(f"resumed from {folder} at step {self.step}, epoch {self.epoch}")

    # ------------------------------------------------------------------ one step
    def _micro_step(self, batch: dict, last_micro: bool) -> torch.Tensor:
        inputs, counters = split_counters(batch)
        output = self.engine(**to_device(inputs, self.env.device, self.precision.dtype))
        loss = output.loss.detach().float()
        finite = bool(torch.isfinite(loss))
        sums = torch.zeros(len(SLOTS), dtype=torch.float64)
        sums[SLOT["loss"]] = float(loss) if finite else 0.0
        sums[SLOT["correct"]], sums[SLOT["count"]] = output.correct, output.count
        sums[SLOT["micro_batches"]] = 1
        sums[SLOT["nonfinite"]] = 0.0 if finite else 1.0
        sums[SLOT["stop"]] = 1.0 if (last_micro and self.stop.requested) else 0.0
        for name in COUNTERS:
            sums[SLOT[name]] = counters.get(name, 0)
        sums = all_reduce_sum(sums.to(self.env.device)).cpu()
        if sums[SLOT["nonfinite"]] > 0 and not self.precision.uses_loss_scaling:
            raise FloatingPointError(f"step {self.step + 1}: non-finite loss on {int(sums[SLOT['nonfinite']])} "
                                     "rank(s); stopping before the update is applied")
        self.engine.backward(output.loss)
        self.engine.step()
        return sums

    def _values(self, sums: torch.Tensor) -> dict:
        micro = max(float(sums[SLOT["micro_batches"]]), 1.0)
        count = float(sums[SLOT["count"]])
        values = {"train/loss": float(sums[SLOT["loss"]]) / micro,
                  "train/learning_rate": float(self.engine.get_lr()[0]),
                  "train/skipped_steps": float(self.engine.skipped_steps)}
        if self.task.spec.kind != "regression":
            values["train/accuracy"] = float(sums[SLOT["correct"]]) / count if count else float("nan")
        norm = self.engine.get_global_grad_norm()
        values["train/grad_norm"] = float(norm) if norm is not None else float("nan")
        mined = float(sums[SLOT["count_hard_mined"]]) + float(sums[SLOT["count_hard_fallback"]])
        if mined:
            values["train/hard_negative_fallback_fraction"] = float(sums[SLOT["count_hard_fallback"]]) / mined
        return values

    # ------------------------------------------------------------------ the loop
    def train(self) -> int:
        self.stop.install()
        try:
            return self._train()
        finally:
            self.stop.uninstall()

    def _refresh_hard_negatives(self) -> None:
        started = time.perf_counter()
        pairs = self.miner.refresh(self.engine.module.pretraining)
        self.monitor.print(f"hard negatives mined at step {self.step}: {pairs} pairs scored on rank 0 in "
                           f"{time.perf_counter() - started:.1f} s (pool {self.miner.pool_size})")

    def _train(self) -> int:
        schedule = self.schedule
        timer, start_step, run_start = StepTimer(), self.step, time.perf_counter()
        window_samples = 0
        self.engine.train()
        if self.miner is not None and self.step % self.miner.refresh_every == 0:
            self._refresh_hard_negatives()
        while self.step < schedule.max_steps:
            sums = torch.zeros(len(SLOTS), dtype=torch.float64)
            learning_rate = float(self.engine.get_lr()[0])
            for micro in range(self.accumulation):
                fetch = time.perf_counter()
                batch = self._next_batch()
                timer.data_wait += time.perf_counter() - fetch
                try:
                    sums += self._micro_step(batch, micro == self.accumulation - 1)
                except FloatingPointError as error:
                    self.monitor.print(f"{error}; last checkpoint: step {self.last_saved_step}")
                    return EXIT_NONFINITE
            self.step += 1
            if self.ema is not None:
                self.ema.update(self.engine.module)
            values = self._values(sums)
            values["train/learning_rate"] = learning_rate
            window_samples += int(sums[SLOT["count"]])
            self.monitor.record({"step": self.step, "epoch": self.epoch,
                                 **{k.split("/", 1)[1]: v for k, v in values.items()}})
            if self.step % schedule.log_every == 0 or self.step == schedule.max_steps:
                elapsed = timer.elapsed()
                values["perf/samples_per_second"] = window_samples / elapsed
                values["perf/data_wait_fraction"] = min(timer.data_wait / elapsed, 1.0)
                self.monitor.scalars(values, self.step)
                eta = (time.perf_counter() - run_start) / max(self.step - start_step, 1) * (schedule.max_steps - self.step)
                shown = " | ".join(f"{k.split('/', 1)[1]} {v:.4g}" for k, v in values.items())
                self.monitor.print(f"step {self.step}/{schedule.max_steps} | epoch {self.epoch} | {shown} | "
                                   f"ETA {format_duration(eta)}")
                self.monitor.flush()
                timer.reset()
                window_samples = 0
            if sums[SLOT["stop"]] > 0:
                self.monitor.print(f"stop requested: saving at step {self.step} and exiting")
                self.save()
                return EXIT_OK
            paused = time.perf_counter()
            if schedule.save_every and self.step % schedule.save_every == 0:
                self.save()
            if schedule.eval_every and self.step % schedule.eval_every == 0:
                self.evaluate()
            if (self.miner is not None and self.step % self.miner.refresh_every == 0
                    and self.step < schedule.max_steps):
                self._refresh_hard_negatives()
            timer.exclude(time.perf_counter() - paused)
        if self.last_saved_step != self.step:
            self.save()
        return EXIT_OK

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict:
        """The task's metrics for the raw weights and, with EMA, the averaged ones (`ema_*`)."""
        model = self.engine.module
        with torch.random.fork_rng(devices=[]):
            results = dict(self.task.evaluate(model, self.env.device, self.precision.dtype))
            if self.ema is not None:
                with self.ema.swapped_in(model):
                    results.update({f"ema_{k}": v for k, v in
                                    self.task.evaluate(model, self.env.device, self.precision.dtype).items()})
        self.monitor.scalars({f"eval/{k}": v for k, v in results.items()}, self.step)
        self.monitor.print(f"evaluation at step {self.step}: "
                           + ", ".join(f"{k} {v:.4g}" for k, v in results.items()))
        self.monitor.record({"step": self.step, "evaluation": results})
        return results
