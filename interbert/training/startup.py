"""The start-up and wind-down that pretraining and fine-tuning share, in the order a run meets them:

1. `prepare`: who this process is, the DeepSpeed config with its batch sizes for this world, the
   device and precision, and the checkpoint folder's state; all checked before any collective, on
   every rank alike, so a mistake fails at once instead of hanging one;
2. `start`: the process group, CPU threads per rank, the first lines of the log;
3. `build_engine`: DeepSpeed's engine, with the optimizer built by DeepSpeed from the config;
4. `make_monitor`, `write_run_config`: TensorBoard, train_log.jsonl and run_config.json;
5. `consolidated_weights`: the final fp32 weights, gathered from the ranks' optimizer partitions.

Entry points pass typed `RunSettings`, never argparse Namespaces.
"""
from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from interbert.errors import UsageError, UserError

if TYPE_CHECKING:
    from interbert.training.distributed import DistributedEnvironment, JobPlacement
    from interbert.training.precision import PrecisionChoice
import shutil

import torch.distributed as torch_dist

from interbert.data.text.tokenization import VOCAB_NAME
from interbert.training import ds_config as dsc
from interbert.training.checkpoint import check_precision, needs_universal
from interbert.training.checkpoint_folder import check_latest
from interbert.training.console import install_console
from interbert.training.distributed import discover_job, init_process_group, job_device, skip_single_rank_allreduce
from interbert.training.ds_config import scheduler_total_steps
from interbert.training.extensions import check_build_locks, use_environment_ninja
from interbert.training.fused_step import fuse_optimizer_step
from interbert.training.guard import GuardSettings
from interbert.training.hosts import check_launch_host
from interbert.training.hp_grads import agree_on_gradients, write_first_gradients
from interbert.training.monitor import Monitor
from interbert.training.optimizer import adapt_to_device, describe_optimizer, parameter_groups
from interbert.training.precision import PRECISIONS, resolve_precision
from interbert.training.shared_folder import agree_on_every_host


@dataclass(frozen=True)
class RunSettings:
    """The run-shape flags shared by `interbert pretrain` and `interbert finetune`."""
    deepspeed_config: str
    output_dir: Path
    precision: str = "auto"
    max_steps: int | None = None
    epochs: float | None = None
    save_every: int = 1000
    keep_last: int = 3
    log_every: int = 50
    eval_every: int = 0
    resume: bool = False
    seed: int = 42
    local_rank: int | None = None
    loss_spike_factor: float = 10.0
    loss_spike_history: int = 3
    max_skipped_steps: int = 50
    rank_timeout: float = 300.0

    @classmethod
    def from_args(cls, args) -> RunSettings:
        values = {f.name: getattr(args, f.name) for f in fields(cls)}
        values["output_dir"] = Path(values["output_dir"])
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        for flag in ("max_steps", "log_every"):
            value = getattr(self, flag)
            if value is not None and value <= 0:
                raise UsageError(f"--{flag.replace('_', '-')} must be positive, got {value}")
        if self.epochs is not None and self.epochs <= 0:
            raise UsageError(f"--epochs must be positive, got {self.epochs}")
        for flag in ("save_every", "keep_last", "eval_every", "loss_spike_factor", "loss_spike_history",
                     "max_skipped_steps", "rank_timeout"):
            if getattr(self, flag) < 0:
                raise UsageError(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(self, flag)}")

    @property
    def checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    @property
    def guard(self):
        return GuardSettings(self.loss_spike_factor, self.loss_spike_history, self.max_skipped_steps)


def add_run_arguments(parser, *, keep_last: int, epochs_default: str, outputs: str):
    """The flags of RunSettings, shared by `interbert pretrain` and `interbert finetune`; every help
    text names its default once. `epochs_default`: where the run length comes from without a flag.
    Returns the "run" group, for an entry point's own run flags."""

    run = parser.add_argument_group("run")
    run.add_argument("--deepspeed_config", "--deepspeed-config", dest="deepspeed_config",
                     required=True, help="DeepSpeed JSON config (see ds_configs/, or `interbert configs`)")
    run.add_argument("--output-dir", required=True, help=f"{outputs} go here")
    run.add_argument("--precision", choices=PRECISIONS, default="auto",
                     help="default auto: the config's choice on CUDA, bf16 instead of fp16 on a CPU")
    length = run.add_mutually_exclusive_group()
    length.add_argument("--max-steps", type=int, help="optimizer steps to train")
    length.add_argument("--epochs", type=float, help=f"epochs to train (default: {epochs_default})")
    run.add_argument("--save-every", type=int, default=1000,
                     help="checkpoint every N steps (default 1000; 0: at the end only)")
    run.add_argument("--keep-last", type=int, default=keep_last,
                     help=f"older checkpoints kept besides the newest (default {keep_last}; 0: all)")
    run.add_argument("--log-every", type=int, default=50, help="console and TensorBoard every N steps (default 50)")
    run.add_argument("--eval-every", type=int, default=0,
                     help="validate every N steps (default 0: only at the end)")
    run.add_argument("--resume", action="store_true",
                     help="continue from the latest checkpoint in OUTPUT_DIR/checkpoints")
    run.add_argument("--seed", type=int, default=42, help="seed of every random draw (default 42)")
    run.add_argument("--local_rank", "--local-rank", type=int, default=None, help="set by the DeepSpeed launcher")
    _add_guard_arguments(parser.add_argument_group("divergence guard and watchdog"))
    return run


def _add_guard_arguments(group) -> None:
    """The flags of the divergence guard (training/guard.py) and the silent-rank watchdog
    (training/watchdog.py)."""
    group.add_argument("--loss-spike-factor", type=float, default=10.0,
                       help="stop when a step's loss exceeds this many times the median of the previous steps' "
                            "(default 10; 0: never)")
    group.add_argument("--loss-spike-history", type=int, default=3,
                       help="steps of loss history before spikes are judged (default 3)")
    group.add_argument("--max-skipped-steps", type=int, default=50,
                       help="fp16: stop after this many consecutive steps skipped by the loss scaler "
                            "(default 50; 0: never)")
    group.add_argument("--rank-timeout", type=float, default=300.0,
                       help="seconds a rank may stay silent (stopped, hung, its node lost) before the others end "
                            "the job naming it; collectives time out a minute later (default 300; 0: DeepSpeed's "
                            "30 minutes, no watchdog)")


@dataclass
class Job:
    run: RunSettings
    placement: JobPlacement
    ds_config: dict
    device: torch.device
    precision: PrecisionChoice
    say: Callable[[str], None]
    env: DistributedEnvironment | None = None  # after `start`
    trains: bool = True

    @property
    def started(self) -> DistributedEnvironment:
        """The process group's environment (only after `start`)."""
        if self.env is None:
            raise RuntimeError("the process group has not started yet (training.startup.start)")
        return self.env


def prepare(run: RunSettings, prefix: str, raw_config: dict | None = None, *, trains: bool = True) -> Job:
    """Everything that can be checked without the process group. `raw_config`: the DeepSpeed config
    when the caller has already read it (fine-tuning takes its `finetune` section out first)."""

    placement = discover_job(run.local_rank)

    def say(message: str) -> None:
        if placement.rank == 0:
            print(f"[{prefix}] {message}", flush=True)

    path = run.deepspeed_config
    raw = dsc.load_ds_config(path) if raw_config is None else raw_config
    ds_config = dsc.resolve_batch_sizes(raw, placement.world_size, path)
    device = job_device(placement)
    precision = resolve_precision(run.precision, ds_config, device, path)
    check_launch_host()
    return Job(run, placement, ds_config, device, precision, say, trains=trains)


def check_checkpoint_folder(job: Job) -> None:
    """--resume finds a checkpoint; a fresh run finds none. Run on every host (`start`)."""
    run = job.run
    latest = run.checkpoint_dir / "latest"
    if run.resume and not latest.is_file():
        raise UsageError(f"--resume: no checkpoint in {run.checkpoint_dir} (no 'latest' file); "
                         "start without --resume")
    if not run.resume and latest.is_file():
        raise UsageError(f"{run.checkpoint_dir} already holds checkpoints: pass --resume to continue "
                         "that run, or choose another --output-dir")
    if run.resume:

        check_latest(run.checkpoint_dir)  # every file there and complete, or the newest complete one named
        check_precision(run.checkpoint_dir, job.precision.name)


def start(job: Job, checks: Sequence[Callable[[], None]] = ()):
    """The process group (collective), the checks every host must pass (the shared --output-dir,
    the checkpoint folder, then `checks`: the entry point's inputs), CPU threads, the first lines."""

    if job.placement.launcher != "single process":
        install_console(job.run.output_dir, job.placement.rank)  # prints survive a closed ssh session

    use_environment_ninja(job.say)  # the ops load with the ninja that built them
    check_build_locks(job.say)  # the process group's start may compile an op: never wait on a dead build
    timeout = job.run.rank_timeout + 60 if job.run.rank_timeout else None  # the watchdog speaks first
    env = init_process_group(job.placement, job.device, timeout)
    job.env = env
    folder_checks = [lambda: check_checkpoint_folder(job)] if job.trains else []
    try:
        agree_on_every_host(job.run.output_dir, env.rank, [*folder_checks, *checks])
    except UserError:
        if env.world_size > 1:  # a live gloo group of several ranks at exit aborts the process (134, not 2)

            torch_dist.destroy_process_group()
        raise
    set_cpu_threads(job.placement, job.device, job.say)
    job.say(f"{env.world_size} rank(s) via {env.launcher}, device {job.device}, backend {env.backend}")
    job.say(f"precision: {job.precision.name} ({job.precision.reason})")
    return env


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_cpu_threads(placement, device, say) -> None:
    """Share the cores between the ranks of this node unless OMP_NUM_THREADS says otherwise."""
    if device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return
    threads = max(1, (os.cpu_count() or 1) // max(placement.local_size, 1))
    torch.set_num_threads(threads)
    say(f"CPU threads per rank: {threads} ({os.cpu_count()} cores, {placement.local_size} ranks here)")


def plan_steps(run: RunSettings, ds_config: dict, steps_per_epoch: int, config_epochs: float | None = None,
               config_epochs_key: str = "") -> int:
    """--max-steps, else --epochs (else the config's epochs), else the scheduler's total_num_steps."""

    epochs = run.epochs or config_epochs
    if run.max_steps:
        return run.max_steps
    if epochs:
        return max(1, round(epochs * steps_per_epoch))
    total = scheduler_total_steps(ds_config)
    if not total:
        raise UsageError(f"give --max-steps or --epochs ({run.deepspeed_config} sets neither "
                         f"{config_epochs_key + ' nor ' if config_epochs_key else ''}"
                         "scheduler.params.total_num_steps to take the run length from)")
    return int(total)


def build_engine(job: Job, model):
    """(engine, the optimizer in words). DeepSpeed builds the optimizer from the config's section,
    with the model's weight-decay groups; every rank then gets its own dropout stream."""
    import deepspeed

    note = adapt_to_device(job.ds_config, job.device.type)
    if note:
        job.say(note)
    if job.run.resume and needs_universal(job.run.checkpoint_dir, job.started.world_size):
        job.ds_config.setdefault("checkpoint", {})["load_universal"] = True
    groups = parameter_groups(model, job.ds_config, job.run.deepspeed_config)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=groups, config=dsc.for_engine(job.ds_config))
    seed_everything(job.run.seed + job.started.rank)
    optimizer = describe_optimizer(engine)
    job.say(f"optimizer: {optimizer}")
    if skip_single_rank_allreduce(engine):
        job.say("gradients: one data-parallel rank, so the engine's all-reduce (a copy of the flat fp32 "
                "gradients over a world of one) is skipped")
    if write_first_gradients(engine):
        job.say("gradients: BF16_Optimizer's fp32 buffer is written by each window's first gradient "
                "(no zeroing and adding per step)")
    fused, step_note = fuse_optimizer_step(engine)
    if fused or job.device.type == "cpu":
        job.say(step_note)
    if agree_on_gradients(engine):  # after the step is chosen: it wraps whichever step the optimizer has
        job.say("gradients: every data-parallel rank takes the same gradients into the norm and the clipping "
                "(the union of the ranks' gradient flags)")
    return engine, optimizer


def make_monitor(job: Job, prefix: str):
    return Monitor(job.run.output_dir, enabled=job.started.is_main, tensorboard=dsc.tensorboard_enabled(job.ds_config),
                   deepspeed_monitors=dsc.external_monitors(job.ds_config), prefix=prefix)


def write_run_config(job: Job, monitor, summary: dict) -> None:
    """OUTPUT_DIR/run_config.json and TensorBoard's run/config text (rank 0)."""
    if not job.started.is_main:
        return
    text = json.dumps(summary, indent=2, default=str)
    (job.run.output_dir / "run_config.json").write_text(text + "\n")
    monitor.text("run/config", "```\n" + text + "\n```")


def run_loop(loop, resume: bool) -> int:
    if resume:
        loop.resume()
    return loop.train()


def consolidated_weights(engine, job: Job, keep: dict | None = None) -> dict:
    """The module's fp32 state dict now: the engine's own in fp32, otherwise the optimizer's fp32
    master weights, gathered from every rank's partition (DeepSpeed's `safe_get_full_fp32_param`, for
    DeepSpeedZeroOptimizer and BF16_Optimizer alike: DeepSpeed's reader of ZeRO checkpoint files
    refuses BF16_Optimizer's), over the module's other entries (`keep`: exact copies of entries no
    optimizer holds, e.g. frozen parameters). A collective: every rank calls it, and gets the weights."""
    state = {k: v.float() if v.is_floating_point() else v for k, v in engine.module.state_dict().items()}
    if job.precision.name == "fp32":
        return state
    from deepspeed.utils import safe_get_full_fp32_param

    master = {}
    for name, parameter in engine.module.named_parameters(remove_duplicate=False):  # tied names too
        value = safe_get_full_fp32_param(parameter)
        if value is not None:
            master[name] = value.detach().to("cpu", torch.float32).view(parameter.shape)
    return {**state, **(keep or {}), **master}


def write_model_directory(model, directory: Path, vocab: str, say, what: str = "model") -> None:
    """save_pretrained plus the run's vocab.txt, so the directory is complete on its own."""

    model.save_pretrained(directory)
    shutil.copyfile(vocab, Path(directory) / VOCAB_NAME)
    say(f"{what} saved: {directory}")
