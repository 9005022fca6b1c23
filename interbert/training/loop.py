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
from dataclasses import dataclass
from pathlib import Path

import torch

from interbert.evaluation.retrieval import to_device
from interbert.training import checkpoint
from interbert.training.batches import fetch_across_epochs
from interbert.training.distributed import ControlChannel, DistributedEnvironment, all_reduce_sum
from interbert.training.guard import Diverged, DivergenceGuard, GuardSettings
from interbert.training.monitor import Monitor, StepTimer, format_duration
from interbert.training.objective import Objective
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


@dataclass
class _PendingStep:
    """One optimizer step whose sums are still on the device."""
    step: int
    epoch: int
    device_sums: torch.Tensor  # loss, objective slots, non-finite count
    host_sums: list  # micro-batches, then the objective's host_slots
    learning_rate: float
    loss_scale: float
    skipped_steps: int
    grad_norm: float | torch.Tensor | None  # a device tensor is read at the flush; None: not computed


class TrainingLoop:
    def __init__(self, *, engine, objective: Objective, loader, monitor: Monitor, env: DistributedEnvironment,
                 precision: PrecisionChoice, schedule: Schedule, checkpoint_dir: Path, peak_flops: float = 0.0,
                 guard: GuardSettings = DEFAULT_GUARD, rank_timeout: float = 300.0):
        self.engine, self.objective, self.loader, self.monitor = engine, objective, loader, monitor
        self.env, self.precision, self.schedule = env, precision, schedule
        self.checkpoint_dir, self.peak_flops = checkpoint_dir, peak_flops
        self.accumulation = engine.gradient_accumulation_steps()
        self.device_slots = ("loss", *objective.slots, "nonfinite")
        self.host_slots = ("micro_batches", *objective.host_slots)
        self.step = self.epoch = 0
        self.last_saved_step: int | None = None
        self.host_reads = 0
        self.stop = StopRequest()
        self.control = ControlChannel(env)
        self.check_nonfinite = not precision.uses_loss_scaling
        self.guard = DivergenceGuard(guard, precision.uses_loss_scaling)
        self.rank_timeout = rank_timeout
        self._iterator = None
        self._pending: list[_PendingStep] = []
        self._last_values: dict[str, float] = {}
        self._window_samples = self._window_flops = 0.0
        # Entries that hold losses are zeroed for a micro-batch whose loss is not finite (fp16
        # overflow), so one skipped step does not poison a window's averages.
        self._loss_entries = torch.tensor([name == "loss" or name.startswith("loss_") for name in self.device_slots],
                                          device=env.device)

    # ------------------------------------------------------------------ data
    def _next_batch(self) -> dict:
        batch, self._iterator, self.epoch = fetch_across_epochs(self.loader, self._iterator, self.epoch)
        return batch

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> Path:
        self.flush()
        path = checkpoint.save(self.engine, self.checkpoint_dir, step=self.step, epoch=self.epoch,  # judged: kept
                               sampler_state=self.loader.state_dict(), rank=self.env.rank,
                               extra=self.objective.checkpoint_extra(), precision=self.precision.name)
        self.objective.save_state(path, self.env.rank)
        checkpoint.commit(self.checkpoint_dir, self.step, keep_last=self.schedule.keep_last, rank=self.env.rank)
        self.last_saved_step = self.step
        self.monitor.print(f"checkpoint saved: {path}")
        return path

    def resume(self) -> None:
        state = checkpoint.load(self.engine, self.checkpoint_dir, self.env.rank, self.env.world_size)
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.loader.load_state_dict(state["sampler"])
        sampler = self.loader.sampler
        if len(sampler) - sampler.consumed < self.loader.batch_size:  # the saved epoch was used up
            self.epoch += 1
        folder = self.checkpoint_dir / checkpoint.tag_for(self.step)
        self.objective.load_state(folder, self.env.rank)
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
    def _micro_step(self, batch: dict, device_sums: torch.Tensor, host_sums: list) -> torch.Tensor:
        host_sums[0] += 1
        for index, value in enumerate(self.objective.host_sums(batch), start=1):
            host_sums[index] += value
        loss, sums = self.objective.measure(self.engine, to_device(batch, self.env.device, self.precision.dtype))
        finite = torch.isfinite(loss.detach())
        values = torch.cat([loss.detach().double().reshape(1), sums.double(), (~finite).double().reshape(1)])
        device_sums += torch.where(self._loss_entries & ~finite, torch.zeros_like(values), values)
        return loss

    def _agree(self, device_sums: torch.Tensor) -> tuple[bool, int]:
        """(stop, ranks with a non-finite loss this step), the same on every rank."""
        nonfinite = 0.0
        if self.check_nonfinite:
            nonfinite = float(device_sums[-1].cpu() > 0)
            self.host_reads += 1
        flags = torch.tensor([1.0 if self.stop.requested else 0.0, nonfinite], dtype=torch.float64)
        stop, ranks = self.control.all_reduce_sum(flags).tolist()
        return stop > 0, int(ranks)

    def _train_step(self, timer: StepTimer) -> bool:
        """One optimizer step; returns whether the ranks agreed to stop after it."""
        device_sums = torch.zeros(len(self.device_slots), dtype=torch.float64, device=self.env.device)
        host_sums = [0.0] * len(self.host_slots)
        learning_rate = float(self.engine.get_lr()[0])  # the rate this step's update uses
        stop = False
        for micro in range(self.accumulation):
            fetch_start = time.perf_counter()
            batch = self._next_batch()
            timer.data_wait += time.perf_counter() - fetch_start
            loss = self._micro_step(batch, device_sums, host_sums)
            self.engine.backward(loss)
            if micro == self.accumulation - 1:
                stop, nonfinite_ranks = self._agree(device_sums)
                if nonfinite_ranks:
                    raise NonFiniteLoss(f"step {self.step + 1}: the loss was not finite on {nonfinite_ranks} of "
                                        f"{self.env.world_size} rank(s); stopped before the update was applied")
            self.engine.step()
        self.step += 1
        self.objective.after_update(self.engine.module)
        self._pending.append(_PendingStep(self.step, self.epoch, device_sums, host_sums, learning_rate,
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
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        device = self.env.device
        host = torch.tensor([p.host_sums for p in pending], dtype=torch.float64, device=device)
        table = all_reduce_sum(torch.cat([torch.stack([p.device_sums for p in pending]), host], dim=1))
        norms = torch.stack([torch.as_tensor(p.grad_norm if p.grad_norm is not None else float("nan"),
                                             dtype=torch.float64).to(device) for p in pending])
        read = torch.cat([table.flatten(), norms]).cpu()
        self.host_reads += 1
        width = table.shape[1]
        names = (*self.device_slots, *self.host_slots)
        diverged = None
        for row, step in enumerate(pending):
            sums = dict(zip(names, read[row * width:(row + 1) * width].tolist()))
            values = self.objective.step_values(sums)
            values.update({"train/learning_rate": step.learning_rate, "train/loss_scale": step.loss_scale,
                           "train/skipped_steps": float(step.skipped_steps),
                           "train/grad_norm": float(read[len(pending) * width + row])})
            self._window_samples += sums.get("samples", 0.0)
            self._window_flops += sums.get("flops", 0.0)
            self.monitor.record({"step": step.step, "epoch": step.epoch,
                                 **{k.split("/", 1)[1]: v for k, v in values.items()}})
            self._last_values = values
            if diverged is None:
                try:
                    norm = values["train/grad_norm"] if step.grad_norm is not None else None  # None: not computed
                    self.guard.judge(step.step, values["train/loss"], norm, step.skipped_steps)
                except Diverged as error:
                    diverged = error
        if diverged is not None:
            raise diverged

    def _log_window(self, timer: StepTimer, start_step: int, run_start: float) -> None:
        self.flush()
        elapsed = timer.elapsed()
        values = dict(self._last_values)
        values["perf/samples_per_second"] = self._window_samples / elapsed
        values["perf/data_wait_fraction"] = min(timer.data_wait / elapsed, 1.0)
        if self._window_flops:
            flops_per_second = self._window_flops / elapsed
            values["perf/tflops"] = flops_per_second / 1e12
            if self.peak_flops:
                values["perf/mfu"] = flops_per_second / (self.env.world_size * self.peak_flops)
        self.monitor.scalars(values, self.step)
        seconds_per_step = (time.perf_counter() - run_start) / max(self.step - start_step, 1)
        eta = format_duration(seconds_per_step * (self.schedule.max_steps - self.step))
        self.monitor.print(self.objective.console_line(self.step, self.schedule.max_steps, self.epoch, values, eta))
        self.monitor.flush()
        self._window_samples = self._window_flops = 0.0
        timer.reset()

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
        timer, start_step, run_start = StepTimer(), self.step, time.perf_counter()
        self.engine.train()
        self.guard.last_skipped_total = int(self.engine.skipped_steps)
        try:
            return self._steps(timer, start_step, run_start)
        except NonFiniteLoss as error:
            self._flush_quietly()
            self.monitor.print(f"non-finite loss: {error}; {self._back_to_last_good(self.step + 1, 'non-finite-loss')}")
        except Diverged as error:
            self.monitor.print(f"the run diverged at {error}; stopped without saving; "
                               f"{self._back_to_last_good(error.step, 'diverged')}")
        self.monitor.flush()
        return EXIT_NONFINITE

    def _steps(self, timer: StepTimer, start_step: int, run_start: float) -> int:
        schedule = self.schedule
        self.objective.between_steps(self.engine.module, self.step, schedule.max_steps)
        while self.step < schedule.max_steps:
            stop = self._train_step(timer)
            if self.step % schedule.log_every == 0 or self.step == schedule.max_steps:
                self._log_window(timer, start_step, run_start)
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
            timer.exclude(time.perf_counter() - paused)
        if self.last_saved_step != self.step:
            self.save()
        return EXIT_OK

    def _flush_quietly(self) -> None:
        """Log what is pending; a divergence found there changes nothing about the stop under way."""
        try:
            self.flush()
        except Diverged:
            pass

    def _back_to_last_good(self, error_step: int, why: str) -> str:
        """The loss of step N is computed with the weights of checkpoint N-1, so that one (and any later)
        already holds what went wrong: they are set aside and `latest` names the last good one."""
        good, moved = checkpoint.set_aside(self.checkpoint_dir, error_step, f"set-aside-{why}-at-step{error_step}",
                                           self.env.rank)
        aside = f" ({', '.join(path.name for path in moved)} kept aside)" if moved else ""
        if good is None:
            return f"no checkpoint from before it exists{aside}; start again with a lower learning rate"
        return (f"{self.checkpoint_dir / 'latest'} now names the last good checkpoint, {good.name}{aside}; to go on "
                "from it: --resume with a lower learning rate, gradient clipping or fp32 in the config (the resumed "
                "run trains at the config's schedule)")

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
