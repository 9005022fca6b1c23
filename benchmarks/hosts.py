#!/usr/bin/env python
"""The cost of crossing hosts: pretraining on one host × 2 ranks against two hosts × 1 rank each,
at the same global batch, and the share of a step spent in the gradient all-reduce.

    python benchmarks/hosts.py --hosts HOSTFILE --master-addr ADDR [--preset tiny] [--steps 30]
        [--micro-batch 8] [--warmup 5] [--rounds 1] [--json FILE]

Both layouts are real `deepspeed` jobs of interbert/pretrain.py (ZeRO stage 1, fp32, AdamW): the
one-host job on this machine (hostfiles/localhost, --no_ssh_check), the two-host job on the first
two hosts of HOSTFILE, one rank each, through DeepSpeed's multi-node runner. That job's ranks get
their environment from DS_ENV_FILE or a .deepspeed_env (home or the repository) when one exists,
else from a file `interbert cluster-env` writes. The work folder (default: a new one under runs/)
must be visible from every host at the same path, like the checkout itself. --rounds N runs both
jobs N times, the order alternating, and averages.

Each rank runs this script as DeepSpeed's user script: it wraps a few of DeepSpeed's calls with
timers, then runs interbert/pretrain.py's main unchanged. Per optimizer step it records when the step
ended and the seconds spent in ZeRO-1's reduction (engine.allreduce_gradients, then the all-gather of
the updated parameters, all_gather_dp_groups) and in the collective calls inside them (the all-reduce
proper). After training it times one bare all_reduce of the model's fp32 gradients over the same
process group: the floor beside the step's figure. Threads per rank are the same in both layouts
(--threads), so only the crossing differs.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SCRIPT = "benchmarks/hosts.py"  # the user script of both jobs, relative to the repository
ONE_HOST_FILE = REPO / "hostfiles" / "localhost"  # localhost slots=2
WORKER_FLAG = "--rank-worker"  # STATS_FILE THREADS: set on the ranks' command line, never by hand
FLOOR_REPEATS = 5
MIB = 1024 ** 2
LOOPBACK_CAVEAT = ("on loopback hosts (every host an address of this machine) this measures the software path "
                   "(ssh-launched processes, gloo's TCP over lo), not a network")


class UsageProblem(Exception):
    """A mistake in the command line or its files: one line, exit status 2."""


# ---------------------------------------------------------------------------- on each rank
class StepProbe:
    """Per optimizer step of this rank: when DeepSpeedEngine.step returned, and the seconds spent in
    the gradient reduction, in the parameter all-gather, in the collective calls inside those two,
    and in the training loop's control all-reduce (wrappers around DeepSpeed's and the loop's own
    calls; every step is one micro-batch)."""

    PARTS = ("gradients", "parameters", "collectives", "control")
    ZERO_PARTS = ("gradients", "parameters")  # the collectives are counted inside these only
    COLLECTIVES = ("all_reduce", "reduce", "all_gather", "all_gather_into_tensor")

    def __init__(self):
        self.step_ends: list[float] = []
        self.seconds = {part: [] for part in self.PARTS}
        self._current = dict.fromkeys(self.PARTS, 0.0)
        self._inside_zero = 0
        self.floor: dict = {}

    def install(self) -> None:
        """Wrap the calls in place (this process only)."""
        import deepspeed.comm
        from deepspeed.runtime import engine
        from deepspeed.runtime.zero import stage_1_and_2

        from interbert.training import distributed, loop

        wrapped = [(engine.DeepSpeedEngine, "allreduce_gradients", "gradients"),
                   (stage_1_and_2, "all_gather_dp_groups", "parameters"),
                   (distributed.ControlChannel, "all_reduce_sum", "control"),
                   *((deepspeed.comm, name, "collectives") for name in self.COLLECTIVES)]
        for owner, name, part in wrapped:
            if not hasattr(owner, name):
                raise RuntimeError(f"cannot time {part}: {owner.__name__}.{name} does not exist in this DeepSpeed")
            setattr(owner, name, self._timed(getattr(owner, name), part))
        engine.DeepSpeedEngine.step = self._closing_step(engine.DeepSpeedEngine.step)
        loop.TrainingLoop.train = self._then_floor(loop.TrainingLoop.train)

    def _timed(self, function, part: str):
        def timed(*args, **kwargs):
            if part == "collectives" and not self._inside_zero:
                return function(*args, **kwargs)  # not ZeRO's: the loop's sums, checkpoints, ...
            self._inside_zero += part in self.ZERO_PARTS
            start = _synchronized_clock()
            try:
                return function(*args, **kwargs)
            finally:
                self._current[part] += _synchronized_clock() - start
                self._inside_zero -= part in self.ZERO_PARTS
        return timed

    def _closing_step(self, step):
        def closing_step(*args, **kwargs):
            result = step(*args, **kwargs)
            self.step_ends.append(_synchronized_clock())
            for part in self.PARTS:
                self.seconds[part].append(self._current[part])
                self._current[part] = 0.0
            return result
        return closing_step

    def _then_floor(self, train):
        def train_then_floor(training_loop):
            status = train(training_loop)
            self.floor = bare_allreduce_floor(training_loop.engine.module, training_loop.env.device)
            return status
        return train_then_floor

    def report(self) -> dict:
        """What rank 0 writes for this rank (JSON-able)."""
        return {"host": socket.gethostname(), "step_ends": self.step_ends, "seconds": self.seconds,
                "floor": self.floor}


def _synchronized_clock() -> float:
    """perf_counter after the accelerator's queued work (a no-op on a CPU)."""
    from deepspeed.accelerator import get_accelerator

    get_accelerator().synchronize()
    return time.perf_counter()


def bare_allreduce_floor(module, device) -> dict:
    """Milliseconds of one all_reduce of the model's trainable parameter count of fp32 values over the
    default process group, every rank entering together (a barrier first): median of FLOOR_REPEATS
    after one untimed."""
    import torch
    import torch.distributed as dist

    elements = sum(p.numel() for p in module.parameters() if p.requires_grad)
    if not dist.is_initialized():
        return {"elements": elements, "ms": None}
    buffer = torch.ones(elements, dtype=torch.float32, device=device)
    times = []
    for repeat in range(FLOOR_REPEATS + 1):
        dist.barrier()
        start = _synchronized_clock()
        dist.all_reduce(buffer)
        if repeat:
            times.append((_synchronized_clock() - start) * 1e3)
    return {"elements": elements, "bytes": 4 * elements, "ms": statistics.median(times), "ms_each": times}


def run_rank(argv: list[str]) -> int:
    """Under the launcher: `--local_rank=N --rank-worker STATS THREADS <pretrain.py's arguments>`.
    Pretrains with the probe installed; rank 0 writes every rank's figures to STATS."""
    at = argv.index(WORKER_FLAG)
    stats, threads = Path(argv[at + 1]), argv[at + 2]
    pretrain_argv = argv[:at] + argv[at + 3:]
    os.environ["OMP_NUM_THREADS"] = threads  # the run keeps it (interbert.training.startup.set_cpu_threads)
    import torch

    torch.set_num_threads(int(threads))
    probe = StepProbe()
    probe.install()
    from interbert import pretrain
    from interbert.training.distributed import all_gather_objects

    status = pretrain.main(pretrain_argv)
    reports = all_gather_objects(probe.report())
    if int(os.environ.get("RANK", "0")) == 0:
        stats.write_text(json.dumps({"status": status, "threads": torch.get_num_threads(), "ranks": reports}))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # a gloo group still live at exit can abort the process
    # Leave without the interpreter's finalisation: on a rank of this worker (pretraining run in-process,
    # then the gather above) it aborted now and then after everything was written ("terminate called
    # without an active exception", exit -6, in about 2 of 5 runs on one machine; `interbert/pretrain.py`
    # run alone did not). The exit handlers (this rank's shared-memory all-reduce buffer) run first.
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


# ---------------------------------------------------------------------------- the launching side
class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; UsageProblem (or argparse's one-line exit 2) for a mistake."""
    cores = os.cpu_count() or 2
    p = OneLineParser(prog="benchmarks/hosts.py", description=__doc__.splitlines()[0])
    p.add_argument("--hosts", required=True, help="DeepSpeed hostfile naming at least two hosts (`HOST slots=N`)")
    p.add_argument("--master-addr", help="address of the first host that the others reach (default: its name)")
    p.add_argument("--preset", default="tiny", help="model preset (default tiny)")
    p.add_argument("--micro-batch", type=int, default=8, help="per rank; the global batch is twice it (default 8)")
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per layout (default 30)")
    p.add_argument("--warmup", type=int, default=5,
                   help="first steps left out of every average, at least 1 (default 5)")
    p.add_argument("--threads", type=int, default=max(1, cores // 2),
                   help=f"CPU threads per rank in both layouts (default {max(1, cores // 2)}: this machine's "
                        "cores shared by the one-host layout's 2 ranks)")
    p.add_argument("--features", help="feature store (default: a synthetic corpus made in the work folder)")
    p.add_argument("--captions", help="caption manifest of --features")
    p.add_argument("--work-dir", help="folder for configs, corpus and run outputs, kept (default: a new folder "
                                      "under runs/, removed at the end)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per job before it is killed (default 900)")
    p.add_argument("--rounds", type=int, default=1,
                   help="rounds of both jobs, the order alternating; figures are their mean (default 1)")
    p.add_argument("--two-hosts-first", action="store_true", help="run the two-host job first in odd rounds")
    p.add_argument("--json", help="also write every figure here")
    args = p.parse_args(argv)
    check_args(args)
    return args


def check_args(args: argparse.Namespace) -> None:
    """Raise UsageProblem for values argparse cannot judge."""
    from interbert.config import PRESETS

    if args.preset not in PRESETS:
        raise UsageProblem(f"--preset {args.preset!r} is unknown; choose one of {', '.join(sorted(PRESETS))}")
    if min(args.micro_batch, args.threads, args.rounds) < 1:
        raise UsageProblem("--micro-batch, --threads and --rounds must be at least 1")
    if args.warmup < 1 or args.steps - args.warmup < 2:
        raise UsageProblem(f"--steps {args.steps} with --warmup {args.warmup} leaves fewer than 2 timed steps")
    if bool(args.features) != bool(args.captions):
        raise UsageProblem("give --features and --captions together (or neither, for a synthetic corpus)")
    for flag in ("features", "captions"):
        if getattr(args, flag) and not Path(getattr(args, flag)).exists():
            raise UsageProblem(f"--{flag} {getattr(args, flag)}: no such file or folder")


def read_hosts(path: str) -> list[str]:
    """The distinct host names of a DeepSpeed hostfile, in order; UsageProblem unless there are two."""
    hostfile = Path(path)
    if not hostfile.is_file():
        raise UsageProblem(f"--hosts {path}: no such hostfile")
    hosts = []
    for number, line in enumerate(hostfile.read_text().splitlines(), start=1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) != 2 or not words[1].startswith("slots="):
            raise UsageProblem(f"--hosts {path}, line {number}: expected `HOST slots=N`, got {line.strip()!r}")
        if words[0] not in hosts:
            hosts.append(words[0])
    if len(hosts) < 2:
        raise UsageProblem(f"--hosts {path} names {len(hosts)} host(s) ({', '.join(hosts) or 'none'}); the "
                           "comparison needs two")
    return hosts


def free_port() -> int:
    """A TCP port free on this machine now (the job's rendezvous port)."""
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def launching_env(threads: int) -> dict:
    """This shell's environment for the `deepspeed` command: the venv first on PATH, no rank
    variables of an enclosing job, unbuffered output, the threads per rank."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS=str(threads))
    return env


def user_env_file(env: dict) -> str | None:
    """The environment file DeepSpeed's multi-node runner would read for the ranks, if any."""
    if env.get("DS_ENV_FILE"):
        return env["DS_ENV_FILE"]
    for folder in (Path.home(), REPO):
        if (folder / ".deepspeed_env").is_file():
            return str(folder / ".deepspeed_env")
    return None


def write_env_file(env: dict, path: Path, master_addr: str, port: int) -> None:
    """`interbert cluster-env` for this job: PATH, the socket interface, MASTER_*, OMP_NUM_THREADS."""
    path.unlink(missing_ok=True)  # the previous round's, with its port
    command = [sys.executable, "-m", "interbert", "cluster-env", "--master-addr", master_addr,
               "--master-port", str(port), "--write", str(path)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise UsageProblem(f"interbert cluster-env --master-addr {master_addr} failed: "
                           f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}")


def write_ds_config(path: Path, micro: int) -> Path:
    """ZeRO stage 1, fp32, AdamW at a constant rate, 2 ranks, no accumulation, no monitors."""
    config = {
        "train_batch_size": 2 * micro, "train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "betas": [0.9, 0.999], "eps": 1e-6,
                                                  "weight_decay": 0.01}},
        "bf16": {"enabled": False}, "fp16": {"enabled": False}, "zero_optimization": {"stage": 1},
        "tensorboard": {"enabled": False}, "steps_per_print": 10 ** 9, "wall_clock_breakdown": False,
    }
    path.write_text(json.dumps(config, indent=2))
    return path


def corpus_paths(args, work: Path) -> tuple[str, str]:
    """--features/--captions, or a synthetic corpus of 64 training images made in `work`."""
    if args.features:
        return str(Path(args.features).resolve()), str(Path(args.captions).resolve())
    from interbert.data.ingest.synth import synthesize_corpus

    root = work / "corpus"
    if not (root / "captions.jsonl").is_file():
        synthesize_corpus(root, num_images=64, seed=0, val_images=0, test_images=0, progress=False)
    return str(root / "features"), str(root / "captions.jsonl")


def pretrain_argv(args, config: Path, features: str, captions: str, output: Path) -> list[str]:
    """interbert/pretrain.py's arguments: no validation, no periodic checkpoint, one log flush at the end
    (so no timed step holds it)."""
    from interbert.data.text.tokenization import default_vocab_file

    return ["--deepspeed_config", str(config), "--preset", args.preset, "--features", features,
            "--captions", captions, "--output-dir", str(output), "--num-workers", "0", "--eval-images", "0",
            "--validation-split=", "--log-every", str(args.steps), "--vocab", str(default_vocab_file()),
            "--max-steps", str(args.steps), "--save-every", "0"]


def run_job(name: str, launcher_args: list[str], rank_args: list[str], env: dict, folder: Path,
            timeout: float) -> dict:
    """One `deepspeed ... benchmarks/hosts.py --rank-worker ...` job to its end; its stats."""
    folder.mkdir(parents=True, exist_ok=True)
    stats = folder / "stats.json"
    stats.unlink(missing_ok=True)
    threads = env["OMP_NUM_THREADS"]
    command = [shutil.which("deepspeed", path=env["PATH"]) or "deepspeed", *launcher_args, SCRIPT,
               WORKER_FLAG, str(stats), threads, *rank_args]
    with open(folder / "job.log", "w") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(process)
        except BaseException:  # Ctrl-C: the job runs in a session of its own and would outlive us
            _kill(process)
            raise
    if process.returncode != 0 or not stats.is_file():
        tail = (folder / "job.log").read_text(errors="replace").splitlines()[-25:]
        raise RuntimeError(f"the {name} job ended with exit status {process.returncode} and no figures; the end "
                           f"of {folder / 'job.log'}:\n" + "\n".join(tail))
    return json.loads(stats.read_text())


def _kill(process: subprocess.Popen) -> None:
    """The job's process group on this host (launcher, pdsh, ssh); remote ranks lose their session."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def summarize(stats: dict, steps: int, warmup: int, global_batch: int) -> dict:
    """Samples/s and per-step milliseconds over the steps after `warmup`: the step period from rank 0;
    the all-reduce and ZeRO-1 reduction of the rank that arrived last, and with waiting (mean over ranks)."""
    ranks = stats["ranks"]
    if stats["status"] != 0 or any(len(r["step_ends"]) != steps for r in ranks):
        raise RuntimeError(f"the job ran {[len(r['step_ends']) for r in ranks]} steps per rank, not {steps} "
                           f"(exit status {stats['status']})")
    ends = ranks[0]["step_ends"]
    timed = len(ends) - warmup
    period = (ends[-1] - ends[warmup - 1]) / timed  # from the end of the last warm-up step

    def mean_ms(part: str) -> float:
        return statistics.mean(statistics.mean(r["seconds"][part][-timed:]) for r in ranks) * 1e3

    def last_arrived(parts: tuple) -> tuple[float, list]:
        """Mean over steps of the smallest per-rank time (that rank waited for nobody), and each rank's mean."""
        per_rank = [[sum(values) * 1e3 for values in zip(*(r["seconds"][part][-timed:] for part in parts))]
                    for r in ranks]
        return statistics.mean(min(step) for step in zip(*per_rank)), [statistics.mean(rank) for rank in per_rank]

    collectives, _ = last_arrived(("collectives",))
    zero, zero_per_rank = last_arrived(("gradients", "parameters"))
    with_waiting = statistics.mean(zero_per_rank)
    step_ms = period * 1e3
    floor = ranks[0]["floor"]
    return {"rank_hostnames": [r["host"] for r in ranks], "threads_per_rank": stats["threads"],
            "timed_steps": timed, "samples_per_s": global_batch / period, "ms_per_step": step_ms,
            "allreduce_ms_per_step": collectives, "allreduce_share": collectives / step_ms,
            "zero_reduction_ms_per_step": zero, "zero_reduction_share": zero / step_ms,
            "zero_reduction_with_waiting_ms_per_step": with_waiting,
            "zero_reduction_with_waiting_share": with_waiting / step_ms,
            "zero_reduction_with_waiting_ms_per_rank": zero_per_rank,
            "gradient_reduce_ms": mean_ms("gradients"), "parameter_allgather_ms": mean_ms("parameters"),
            "control_allreduce_ms": mean_ms("control"), "floor_allreduce_ms": floor.get("ms"),
            "floor_allreduce_ms_each": floor.get("ms_each"), "gradient_elements": floor.get("elements")}


def combine(rounds: list[dict], global_batch: int) -> dict:
    """One layout's rounds: the mean of every figure, samples/s from the mean step; each round kept."""
    combined = {key: statistics.mean(r[key] for r in rounds) for key, value in rounds[0].items()
                if isinstance(value, (int, float)) and not isinstance(value, bool)}
    combined.update(samples_per_s=global_batch / (combined["ms_per_step"] / 1e3),
                    timed_steps=sum(r["timed_steps"] for r in rounds), rank_hostnames=rounds[0]["rank_hostnames"],
                    samples_per_s_each_round=[r["samples_per_s"] for r in rounds], rounds=rounds)
    return combined


def idle_words(load: float, cores: int) -> str:
    """Whether a 1-minute load average says the machine was idle (under a quarter of its cores busy)."""
    return "looked idle" if load < 0.25 * cores else "was busy (every figure is lower for it)"


def print_report(report: dict) -> None:
    """The figures, each beside its floor, in the house style."""
    s, rows = report["setup"], report["layouts"]
    one, two = rows["one_host"], rows["two_hosts"]
    print(f"preset {s['preset']}, micro-batch {s['micro_batch']} per rank, global batch {s['global_batch']} in both "
          f"layouts, {s['steps']} steps per job, the first {s['warmup']} left out; {s['rounds']} round(s) of both "
          f"jobs, the order alternating ({one['timed_steps']} timed steps per layout); {s['threads_per_rank']} "
          "thread(s) per rank in both; ZeRO stage 1, fp32")
    later = ", ".join(f"{entry['load_average'][0]:.2f}" for entry in s["load_average_before_each_job"][1:])
    print(f"load average {s['load_average'][0]:.2f} on {s['cores']} cores before the runs: the machine "
          f"{idle_words(s['load_average'][0], s['cores'])}" + (f"; before each later job {later} (the jobs before "
                                                               "it still in it)" if later else ""))
    print("| layout | hosts | samples/s | ms/step | all-reduce ms/step | share of the step | ZeRO-1 reduction "
          "ms/step | share | with waiting ms/step | share | bare all-reduce (floor) ms |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, hosts, row in (("one host × 2 ranks", "this machine", one),
                              ("two hosts × 1 rank", " + ".join(s["hosts"]), two)):
        print(f"| {label} | {hosts} | {row['samples_per_s']:.1f} | {row['ms_per_step']:.1f} | "
              f"{row['allreduce_ms_per_step']:.1f} | {100 * row['allreduce_share']:.1f}% | "
              f"{row['zero_reduction_ms_per_step']:.1f} | {100 * row['zero_reduction_share']:.1f}% | "
              f"{row['zero_reduction_with_waiting_ms_per_step']:.1f} | "
              f"{100 * row['zero_reduction_with_waiting_share']:.1f}% | {row['floor_allreduce_ms']:.1f} |")
    ratio = report["ratio_two_hosts_over_one_host"]
    if s["rounds"] > 1:
        print("samples/s in each round: " + "; ".join(
            f"{label} {', '.join(f'{rate:.1f}' for rate in row['samples_per_s_each_round'])}"
            for label, row in (("one host", one), ("two hosts", two))))
    print(f"two hosts / one host: samples/s ×{ratio:.2f}; step {two['ms_per_step'] - one['ms_per_step']:+.1f} ms, "
          f"all-reduce {two['allreduce_ms_per_step'] - one['allreduce_ms_per_step']:+.1f} ms, ZeRO-1 reduction "
          f"{two['zero_reduction_ms_per_step'] - one['zero_reduction_ms_per_step']:+.1f} ms, bare all-reduce "
          f"{two['floor_allreduce_ms'] - one['floor_allreduce_ms']:+.1f} ms; the loop's control all-reduce "
          f"{one['control_allreduce_ms']:.1f} -> {two['control_allreduce_ms']:.1f} ms per step")
    elements = one["gradient_elements"]
    print("all-reduce: the collective calls of ZeRO-1's step (the all_reduce of the gradient bucket, the "
          "all_gather_into_tensor of the updated parameters); ZeRO-1 reduction: the whole of "
          "engine.allreduce_gradients (gradients copied into the bucket, all-reduced, each rank's partition "
          "copied out) + all_gather_dp_groups; both timed in the ranks around DeepSpeed's calls, per step the "
          "rank that arrived last (it waited for nobody); 'with waiting': the mean over ranks")
    print(f"floor: one bare all_reduce of the model's {elements:,} fp32 gradients ({4 * elements / MIB:.1f} MiB) "
          f"over the same process group after training, median of {FLOOR_REPEATS}")
    print(LOOPBACK_CAVEAT if report["loopback"] else
          "hosts that are not this machine: the figures include the network between them")


def is_loopback(hosts: list[str]) -> bool:
    """Whether every host resolves to a loopback address (127.0.0.0/8)."""
    try:
        return all(socket.gethostbyname(host).startswith("127.") for host in hosts)
    except OSError:
        return False


def benchmark(args, hosts: list[str], work: Path) -> dict:
    """Both jobs per round, one after the other (the one-host job first in odd rounds unless --two-hosts-first);
    the report."""
    cores = os.cpu_count() or 1
    load = os.getloadavg()
    master = args.master_addr or hosts[0]
    env = launching_env(args.threads)
    config = write_ds_config(work / "ds_config.json", args.micro_batch)
    features, captions = corpus_paths(args, work)
    two_hostfile = work / "hostfile-2x1"
    two_hostfile.write_text("".join(f"{host} slots=1\n" for host in hosts[:2]))
    env_file = user_env_file(env)

    def one_host(folder: Path) -> dict:
        port = free_port()
        return run_job("one-host", ["--hostfile", str(ONE_HOST_FILE), "--no_ssh_check", "--master_addr",
                                    "127.0.0.1", "--master_port", str(port)],
                       pretrain_argv(args, config, features, captions, folder), env, folder, args.timeout)

    def two_hosts(folder: Path) -> dict:
        port = free_port()
        job_env = env
        if env_file is None:  # nothing of the user's: the ranks' environment from `interbert cluster-env`
            write_env_file(env, work / "deepspeed_env", master, port)
            job_env = {**env, "DS_ENV_FILE": str(work / "deepspeed_env")}
        return run_job("two-host", ["--hostfile", str(two_hostfile), "--master_addr", master, "--master_port",
                                    str(port)],
                       pretrain_argv(args, config, features, captions, folder), job_env, folder, args.timeout)

    jobs, summaries, loads = {"one_host": one_host, "two_hosts": two_hosts}, {"one_host": [], "two_hosts": []}, []
    global_batch = 2 * args.micro_batch
    for index in range(args.rounds):  # the order alternates: a job run second is not always the same one
        order = ("two_hosts", "one_host") if (index % 2 == 1) != args.two_hosts_first else ("one_host", "two_hosts")
        for name in order:
            loads.append({"round": index + 1, "job": name, "load_average": os.getloadavg()})
            folder = work / f"{name.replace('_', '-')}-{index + 1}"
            shutil.rmtree(folder, ignore_errors=True)  # this benchmark's own run folder, from an earlier try
            summaries[name].append(summarize(jobs[name](folder), args.steps, args.warmup, global_batch))
    layouts = {name: combine(rounds, global_batch) for name, rounds in summaries.items()}
    return {
        "setup": {"preset": args.preset, "micro_batch": args.micro_batch, "global_batch": global_batch,
                  "steps": args.steps, "warmup": args.warmup, "threads_per_rank": args.threads, "cores": cores,
                  "load_average": load, "load_average_before_each_job": loads, "rounds": args.rounds,
                  "hosts": hosts[:2], "master_addr": master,
                  "rank_env_file": env_file or str(work / "deepspeed_env"), "features": features},
        "layouts": layouts,
        "ratio_two_hosts_over_one_host": layouts["two_hosts"]["samples_per_s"] / layouts["one_host"]["samples_per_s"],
        "loopback": is_loopback(hosts[:2]),
    }


def main(argv: list[str] | None = None) -> int:
    """The benchmark (exit 0), a user's mistake (one line, exit 2), a failed job (its log's end, exit 1);
    under the launcher, one rank's work."""
    argv = sys.argv[1:] if argv is None else argv
    if WORKER_FLAG in argv:
        return run_rank(argv)
    try:
        args = parse_args(argv)
        hosts = read_hosts(args.hosts)
    except UsageProblem as problem:
        print(f"benchmarks/hosts.py: error: {problem}", file=sys.stderr)
        return 2
    work = Path(args.work_dir).resolve() if args.work_dir else Path(tempfile.mkdtemp(prefix="hosts-", dir=_runs()))
    work.mkdir(parents=True, exist_ok=True)
    try:
        report = benchmark(args, hosts, work)
    except UsageProblem as problem:
        print(f"benchmarks/hosts.py: error: {problem}", file=sys.stderr)
        return 2
    except RuntimeError as failure:
        print(f"benchmarks/hosts.py: {failure}\n(work folder kept: {work})", file=sys.stderr)
        return 1
    print_report(report)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _runs() -> Path:
    """The repository's runs/ folder (ignored by git), made if missing."""
    folder = REPO / "runs"
    folder.mkdir(exist_ok=True)
    return folder


if __name__ == "__main__":
    sys.exit(main())
