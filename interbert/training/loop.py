"""The training loop of pretraining and of every fine-tuning task, in plain sight: fetch
micro-batches, forward (the objective), backward, agree across ranks, step; log, validate,
checkpoint; stop cleanly on a signal or a non-finite loss.

Host synchronisation, chosen so a GPU never waits on the host inside a step:
- The objective's sums (losses, correct/count per task) stay on the device, added up per optimizer
  step. They are summed over ranks and read once per flush: every `log_every` steps, and before a
  checkpoint, a validation or the end, so the per-step log (`train_log.jsonl`) is complete
  whenever a checkpoint exists.
- Once per optimizer step, after the last backward and before the update, the ranks agree on two
  flags over a CPU (gloo) channel: a stop signal, and in fp32/bf16 whether any micro-batch's loss
  was non-finite. Reading that flag is the one device-to-host read per step; in fp16 the loss
  scaler already skips steps whose gradients overflow, so nothing is read there.
`host_reads` counts the loop's device-to-host reads (tests pin it per step).
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from interbert.batch_contract import to_device
from interbert.training import checkpoint, checkpoint_folder
from interbert.training.distributed import ControlChannel, DistributedEnvironment
from interbert.training.guard import Diverged, DivergenceGuard, GuardSettings
from interbert.training.monitor import Monitor, Window, format_duration
from interbert.training.objective import Objective
from interbert.training.pending_sums import PendingStep, PendingSums
from interbert.training.precision import PrecisionChoice
from interbert.training.stopping import StopRequest
from interbert.training.watchdog import Heartbeat, LauncherWatch, lost_peer

EXIT_OK = 0
EXIT_NONFINITE = 3
DEFAULT_GUARD = GuardSettings()  # frozen: one instance serves every loop that is given none


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


class TrainingLoop:
    def __init__(self, *, engine, objective: Objective, loader, monitor: Monitor, env: DistributedEnvironment,
                 precision: PrecisionChoice, schedule: Schedule, checkpoint_dir: Path, peak_flops: float = 0.0,
                 guard: GuardSettings = DEFAULT_GUARD, rank_timeout: float = 300.0):
        self.engine, self.objective, self.loader, self.monitor = engine, objective, loader, monitor
        self.env, self.precision, self.schedule = env, precision, schedule
        self.checkpoint_dir, self.peak_flops = checkpoint_dir, peak_flops
        self.accumulation = engine.gradient_accumulation_steps()
        self.step = self.epoch = 0
        self.last_saved_step: int | None = None
        self.host_reads = 0
        self.stop = StopRequest()
        self.control = ControlChannel(env)
        self.check_nonfinite = not precision.uses_loss_scaling
        self.guard = DivergenceGuard(guard, precision.uses_loss_scaling)
        self.rank_timeout = rank_timeout
        self._iterator: Iterator[dict] | None = None
        self._pending = PendingSums(env.device)
        self._last_values: dict[str, float] = {}
        self.window = Window()
        # Entries that hold losses are zeroed for a micro-batch whose loss is not finite (fp16
        # overflow), so one skipped step does not poison a window's averages; set at the first measure.
        self._loss_entries: torch.Tensor | None = None

    # ------------------------------------------------------------------ data
    def _next_batch(self) -> dict:
        """The next batch, starting a new epoch when one ends. A DataLoader draws a seed from torch's global
        generator when it starts an epoch (at its first fetch); isolating every fetch keeps the dropout
        stream the same whether or not a run was resumed mid-epoch."""
        while True:
            if self._iterator is None:
                self.loader.set_epoch(self.epoch)
                self._iterator = iter(self.loader)
            try:
                with torch.random.fork_rng(devices=[]):
                    return next(self._iterator)
            except StopIteration:
                self._iterator = None
                self.epoch += 1

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """The checkpoint's client state: the loop's position, its data position, the objective's entries."""
        return {"step": self.step, "epoch": self.epoch, "sampler": self.loader.state_dict(),
                **self.objective.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Back to the position of `state` (as `checkpoint.load` returns it: this rank's sampler state)."""
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.loader.load_state_dict(state["sampler"])
        sampler = self.loader.sampler
        if len(sampler) - sampler.consumed < self.loader.batch_size:  # the saved epoch was used up
            self.epoch += 1
        self.objective.load_state_dict(state)

    def save(self) -> Path:
        self.flush()
        path = checkpoint.save(self.engine, self.checkpoint_dir, self.state_dict(), rank=self.env.rank,
                               precision=self.precision.name)
        self.objective.save_files(path, self.env.rank)
        checkpoint_folder.commit(self.checkpoint_dir, self.step, keep_last=self.schedule.keep_last, rank=self.env.rank)
        self.last_saved_step = self.step
        self.monitor.print(f"checkpoint saved: {path}")
        return path

    def resume(self) -> None:
        state = checkpoint.load(self.engine, self.checkpoint_dir, self.env.rank, self.env.world_size)
        self.load_state_dict(state)
        folder = self.checkpoint_dir / checkpoint_folder.tag_for(self.step)
        self.objective.load_files(folder, self.env.rank)
        self.last_saved_step = self.step
        self.monitor.print(f"resumed from {folder} at step {self.step}, epoch {self.epoch}")
        rate, saved = state["learning_rates"][0], state["saved_learning_rates"][0]
        if rate != saved:
            self.monitor.print(f"learning rate: step {self.step + 1} trains at {rate:.3g} from this run's "
                               f"configuration (the checkpoint's optimizer was at {saved:.3g})")
        if state["saved_world_size"] != self.env.world_size:
            self.monitor.print(f"the checkpoint was written by {state['saved_world_size']} rank(s), this run has "
                               f"{self.env.world_size}: loaded through DeepSpeed's universal checkpoint, the data "
                               "position re-sharded; dropout streams restart from this run's seeds")

    # ------------------------------------------------------------------ one step
    def _micro_step(self, batch: dict, host_sums: dict[str, float]) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward one micro-batch: (its loss, its sums as one float64 vector with a non-finite flag last)."""
        host_sums["micro_batches"] += 1
        # A batch the loader already copied to the device carries its host arrays: counts are read there.
        for name, value in self.objective.host_sums(getattr(batch, "host", batch)).items():
            host_sums[name] = host_sums.get(name, 0.0) + value
        measured = self.objective.measure(self.engine, to_device(batch, self.env.device, self.precision.dtype))
        loss = measured["loss"]
        finite = torch.isfinite(loss.detach())
        values = torch.stack([*(value.detach().double().reshape(()) for value in measured.values()),
                              (~finite).double()])
        if self._loss_entries is None:
            self._pending.device_names = names = (*measured, "nonfinite")
            self._loss_entries = torch.tensor([name == "loss" or name.startswith("loss_") for name in names],
                                              device=values.device)
        return loss, torch.where(self._loss_entries & ~finite, torch.zeros_like(values), values)

    def _agree(self, device_sums: torch.Tensor) -> tuple[bool, int]:
        """(stop, ranks with a non-finite loss this step), the same on every rank."""
        nonfinite = 0.0
        if self.check_nonfinite:
            nonfinite = float(device_sums[-1].cpu() > 0)
            self.host_reads += 1
        flags = torch.tensor([1.0 if self.stop.requested else 0.0, nonfinite], dtype=torch.float64)
        stop, ranks = self.control.all_reduce_sum(flags).tolist()
        return stop > 0, int(ranks)

    def _train_step(self) -> bool:
        """One optimizer step; returns whether the ranks agreed to stop after it."""
        device_sums = torch.zeros((), dtype=torch.float64, device=self.env.device)
        host_sums = {"micro_batches": 0.0}
        learning_rate = float(self.engine.get_lr()[0])  # the rate this step's update uses
        stop = False
        for micro in range(self.accumulation):
            fetch_start = time.perf_counter()
            batch = self._next_batch()
            self.window.data_wait += time.perf_counter() - fetch_start
            loss, sums = self._micro_step(batch, host_sums)
            device_sums = device_sums + sums
            self.engine.backward(loss)
            if micro == self.accumulation - 1:
                stop, nonfinite_ranks = self._agree(device_sums)
                if nonfinite_ranks:
                    raise NonFiniteLoss(f"step {self.step + 1}: the loss was not finite on {nonfinite_ranks} of "
                                        f"{self.env.world_size} rank(s); stopped before the update was applied")
            self.engine.step()
        self.step += 1
        self.objective.after_update(self.engine.module)
        self._pending.add(PendingStep(self.step, self.epoch, device_sums, host_sums, learning_rate,
                                      self._loss_scale(), int(self.engine.skipped_steps),
                                      self.engine.get_global_grad_norm()))
        return stop

    def _loss_scale(self) -> float:
        if not self.precision.uses_loss_scaling:
            return 1.0
        for name in ("cur_scale", "loss_scale"):
            value = getattr(self.engine.optimizer, name, None)
            if value is not None:
                return float(value)
        return float("nan")

    # ------------------------------------------------------------------ reading the sums
    def flush(self) -> None:
        """Sum the pending steps over ranks, read them once, log one record per step and judge each
        (the divergence guard: raises Diverged naming the first bad step, after logging them all)."""
        read = self._pending.read()
        if not read:
            return
        self.host_reads += 1
        diverged = None
        for step in read:
            pending, sums = step.pending, step.sums
            values = {**self.objective.step_values(sums), "learning_rate": pending.learning_rate,
                      "loss_scale": pending.loss_scale, "skipped_steps": float(pending.skipped_steps),
                      "grad_norm": step.grad_norm}
            self.window.samples += sums.get("samples", 0.0)
            self.window.flops += sums.get("flops", 0.0)
            self.monitor.record({"step": pending.step, "epoch": pending.epoch, **values})
            self._last_values = {f"train/{name}": value for name, value in values.items()}
            if diverged is None:
                try:
                    norm = step.grad_norm if pending.grad_norm is not None else None  # None: not computed
                    self.guard.judge(pending.step, values["loss"], norm, pending.skipped_steps)
                except Diverged as error:
                    diverged = error
        if diverged is not None:
            raise diverged

    def _log_window(self, start_step: int, run_start: float) -> None:
        self.flush()
        values = {**self._last_values, **self.window.perf_values(self.env.world_size, self.peak_flops)}
        self.monitor.scalars(values, self.step)
        seconds_per_step = (time.perf_counter() - run_start) / max(self.step - start_step, 1)
        eta = format_duration(seconds_per_step * (self.schedule.max_steps - self.step))
        self.monitor.print(self.objective.console_line(self.step, self.schedule.max_steps, self.epoch, values, eta))
        self.monitor.flush()
        self.window.reset()

    # ------------------------------------------------------------------ the loop
    def train(self) -> int:
        """Run until max_steps, a stop signal or a non-finite loss; returns the exit status."""
        self.stop.install()
        heartbeat = Heartbeat(self.env.rank, self.env.world_size, self.rank_timeout)
        if self.env.launcher != "single process":
            LauncherWatch(self.stop).start()
            heartbeat.start()
        try:
            return self._train()
        except RuntimeError as error:
            if lost_peer(error):
                heartbeat.end_for_lost_peer(error)  # names the rank that went away and ends this one
            raise
        finally:
            heartbeat.stop()  # what follows (evaluation, export, exit) is guarded by the collective timeout
            self.stop.uninstall()

    def _train(self) -> int:
        start_step, run_start = self.step, time.perf_counter()
        self.window.reset()
        self.engine.train()
        self.guard.last_skipped_total = int(self.engine.skipped_steps)
        try:
            return self._steps(start_step, run_start)
        except NonFiniteLoss as error:
            self._flush_quietly()
            note = checkpoint_folder.back_to_last_good(self.checkpoint_dir, self.step + 1, "non-finite-loss",
                                                       self.env.rank)
            self.monitor.print(f"non-finite loss: {error}; {note}")
        except Diverged as error:
            note = checkpoint_folder.back_to_last_good(self.checkpoint_dir, error.step, "diverged", self.env.rank)
            self.monitor.print(f"the run diverged at {error}; stopped without saving; {note}")
        self.monitor.flush()
        return EXIT_NONFINITE

    def _steps(self, start_step: int, run_start: float) -> int:
        schedule = self.schedule
        self.objective.between_steps(self.engine.module, self.step, schedule.max_steps)
        while self.step < schedule.max_steps:
            stop = self._train_step()
            if self.step % schedule.log_every == 0 or self.step == schedule.max_steps:
                self._log_window(start_step, run_start)
            if stop:
                self.monitor.print(f"stop requested ({self.stop.signal_name or 'another rank'}): "
                                   f"saving at step {self.step} and exiting")
                self.save()
                return EXIT_OK
            paused = time.perf_counter()
            if schedule.save_every and self.step % schedule.save_every == 0:
                self.save()
            if schedule.eval_every and self.step % schedule.eval_every == 0:
                self.evaluate()
            if self.step < schedule.max_steps:
                self.objective.between_steps(self.engine.module, self.step, schedule.max_steps)
            self.window.exclude(time.perf_counter() - paused)
        if self.last_saved_step != self.step:
            self.save()
        return EXIT_OK

    def _flush_quietly(self) -> None:
        """Log what is pending; a divergence found there changes nothing about the stop under way."""
        try:
            self.flush()
        except Diverged:
            pass

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float]:
        """The objective's validation, isolated from the training random stream."""
        self.flush()
        with torch.random.fork_rng(devices=[]):
            results = self.objective.evaluate(self.engine.module, self.step)
        tag, prefix = self.objective.evaluation_names
        self.monitor.scalars({f"{prefix}/{k}": v for k, v in results.items()}, self.step)
        if results:
            self.monitor.print(f"{tag} at step {self.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in results.items()))
            self.monitor.record({"step": self.step, tag: results})
        return results
