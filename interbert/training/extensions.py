"""DeepSpeed's compiled ops: built once at set-up, and stale build locks recognised at start-up.

DeepSpeed compiles some ops the first time a run needs them (on a CPU: the shared-memory
all-reduce at every start of the process group, and CPU Adam for ZeRO-Offload). torch guards each
build with a `lock` file in its extensions cache and waits, silently and forever, while the file
exists. A start interrupted mid-build leaves the file behind, and every later start hangs.

- `./run.sh setup` runs `python -m interbert.training.extensions`, which builds the ops a CPU run
  needs (and interbert's own CPU AdamW kernel, training/cpu_adamw.py), so no run compiles; on a
  CUDA node it builds DeepSpeed's FusedAdam where nvcc of torch's
  CUDA version is there, and otherwise says why not (runs then use torch's fused AdamW);
- `use_environment_ninja` (at every start, and before the set-up's builds) puts this environment's
  `bin` first on PATH when another `ninja` would be found first: torch runs `ninja` for every op it
  loads (a no-op when the op is current), and a ninja of another version takes the build log as
  foreign and compiles every op again (half a minute on a CPU), while none on PATH fails the start;
- `check_build_locks` (at every start, before the process group) judges each lock until it is gone
  or a live process on this machine holds it (the process that took it keeps it open; the compiler
  works in its folder), which is then waited for as torch does; one that nothing here holds, old or
  left a moment ago by an interrupted start, is waited on for a bounded time with one line saying
  so (a build on another machine sharing the cache may still release it) and then stops the run
  with one line naming the file and what to do.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from interbert.errors import UsageError, UserError
from interbert.training.optimizer import load_fused_adam, probe_cuda_toolchain, why_fused_adam_cannot_build

DEFAULT_WAIT_SECONDS = 120.0  # INTERBERT_BUILD_LOCK_WAIT overrides it
POLL_SECONDS = 1.0


class StaleBuildLock(UserError, RuntimeError):
    pass


def extensions_root() -> Path:
    """Where torch builds extensions: TORCH_EXTENSIONS_DIR, else its per-user cache."""
    configured = os.environ.get("TORCH_EXTENSIONS_DIR")
    if configured:
        return Path(configured)
    from torch.utils.cpp_extension import get_default_build_root

    return Path(get_default_build_root())


def use_environment_ninja(say=print) -> bool:
    """Put the interpreter's `bin` folder first on PATH when it holds a `ninja` that PATH would not
    find first (a system ninja, or none), so that every start loads DeepSpeed's ops with the ninja
    that built them. Returns whether PATH changed (and says so)."""
    import shutil

    ours = Path(sys.executable).parent / "ninja"  # the environment's bin: not the interpreter's real path
    if not (ours.is_file() and os.access(ours, os.X_OK)):
        return False
    found = shutil.which("ninja")
    if found and Path(found).resolve() == ours.resolve():
        return False
    os.environ["PATH"] = os.pathsep.join([str(ours.parent), *filter(None, [os.environ.get("PATH")])])
    say(f"ninja: {found or 'none'} came first on PATH; DeepSpeed's ops load with this environment's {ours}, "
        "the one ./run.sh setup built them with")
    return True


def lock_wait_seconds() -> float:
    """How long a start waits for a build lock nothing on this machine holds: INTERBERT_BUILD_LOCK_WAIT."""
    value = os.environ.get("INTERBERT_BUILD_LOCK_WAIT", str(DEFAULT_WAIT_SECONDS))
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise UsageError(f"INTERBERT_BUILD_LOCK_WAIT={value!r}: expected a number of seconds (0 or more)")
    return seconds


def build_locks(root: Path) -> list[Path]:
    """The `lock` files of builds under `root` (one or two levels: with or without the
    per-Python/accelerator folder torch adds to its default root)."""
    if not root.is_dir():
        return []
    return sorted([*root.glob("*/lock"), *root.glob("*/*/lock")])


def lock_holders(lock: Path) -> list[int]:
    """Process ids on this machine that hold the lock: the process that took it keeps it open for
    the whole build (torch's FileBaton), and the compiler and ninja work in its folder."""
    folder, target = lock.parent.resolve(), str(lock.resolve())
    holders = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if Path(os.readlink(entry / "cwd")) == folder or any(
                    os.readlink(fd) == target for fd in (entry / "fd").iterdir()):
                holders.append(int(entry.name))
        except OSError:  # gone meanwhile, or another user's process
            continue
    return holders


def describe_processes(pids: list[int]) -> str:
    """`process 123 (python -m ...)`, for a line."""
    described = []
    for pid in pids[:3]:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            command = ""
        command = command.strip()
        described.append(f"process {pid}" + (f" ({command[:80]})" if command else ""))
    return ", ".join(described) + (f" and {len(pids) - 3} more" if len(pids) > 3 else "")


def lock_state(lock: Path) -> tuple[float, list[int]] | None:
    """A lock's age in seconds and the processes holding it; None once it is gone."""
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return None
    return max(age, 0.0), lock_holders(lock)


def check_build_locks(say=print, root: Path | None = None, wait_seconds: float | None = None) -> None:
    """Judge every build lock under `root` until each is gone or held by a live build on this
    machine (torch then waits for that build, and so does the start); a lock nothing here holds,
    old or made a moment ago, is waited on for `wait_seconds` (a build on another machine sharing
    the cache may still release it), with one line saying so, and then stops the start with a
    StaleBuildLock naming it."""
    root = extensions_root() if root is None else root
    wait_seconds = lock_wait_seconds() if wait_seconds is None else wait_seconds
    deadline = time.monotonic() + wait_seconds
    waiting, announced = build_locks(root), set()
    while waiting:
        unheld = []
        for lock in waiting:
            state = lock_state(lock)
            if state is None:
                continue  # released: torch takes it afresh
            age, holders = state
            if holders:
                say(f"the build lock {lock} ({age:.0f} s old) is held by {describe_processes(holders)}: the start "
                    "waits for that build, as torch does")
                continue
            if lock not in announced:
                announced.add(lock)
                say(f"waiting up to {wait_seconds:.0f} s for the build lock {lock} ({age:.0f} s old): no process on "
                    f"this machine holds it or builds there; a build on another machine sharing {root} may still "
                    "release it (INTERBERT_BUILD_LOCK_WAIT sets the wait)")
            unheld.append((lock, age))
        if not unheld:
            return
        if time.monotonic() >= deadline:
            lock, age = unheld[0]
            raise StaleBuildLock(
                f"{lock}: a build lock that no build holds ({age:.0f} s old, waited {wait_seconds:.0f} s; a start "
                f"interrupted while DeepSpeed compiled its {lock.parent.name} op leaves one, and torch then waits "
                f"for it forever); unless another machine sharing {root} is building that op right now, remove it "
                f"(rm {lock}) and start again, or rebuild the ops first with ./run.sh setup")
        waiting = [lock for lock, _ in unheld]
        time.sleep(max(min(POLL_SECONDS, deadline - time.monotonic()), 0.0))


def cpu_op_builders() -> dict:
    """The builders exactly as DeepSpeed's CPU runs reach them (another route to an op of the same
    name compiles it with other flags, and the two would rebuild over each other): the process
    group's shared-memory all-reduce through the accelerator, CPU Adam from `deepspeed.ops`."""
    from deepspeed.accelerator import get_accelerator
    from deepspeed.ops.op_builder import CPUAdamBuilder

    return {"shared-memory all-reduce": get_accelerator().create_op_builder("ShareMemCommBuilder"),
            "CPU Adam (ZeRO-Offload)": CPUAdamBuilder()}


def build_cpu_ops(say=print) -> list[str]:
    """Compile (or find compiled) the DeepSpeed ops a CPU run uses; returns their names."""
    built = []
    for name, builder in cpu_op_builders().items():
        if builder is None or not builder.is_compatible():
            say(f"{name}: not available for this accelerator, skipped")
            continue
        started = time.perf_counter()
        builder.load(verbose=False)
        say(f"{name}: ready ({time.perf_counter() - started:.1f} s)")
        built.append(name)
    return built


def build_cpu_adamw(say=print) -> bool:
    """Compile (or find compiled) interbert's one-pass CPU AdamW kernel (training/cpu_adamw.py)."""
    from interbert.training import cpu_adamw

    started = time.perf_counter()
    try:
        library = cpu_adamw.build()
    except RuntimeError as error:
        say(f"CPU AdamW kernel: not built ({error}); CPU runs keep DeepSpeed's optimizer step")
        return False
    say(f"CPU AdamW kernel: ready ({time.perf_counter() - started:.1f} s, {library})")
    return True


def build_cuda_ops(say=print, toolchain=None, build=None) -> list[str]:
    """Build DeepSpeed's FusedAdam where it can be built here; say what was built, or why not."""

    toolchain = probe_cuda_toolchain() if toolchain is None else toolchain
    if toolchain.torch_cuda is None:
        say("FusedAdam: not built (this torch has no CUDA build)")
        return []
    if toolchain.prebuilt:
        say("FusedAdam: prebuilt into DeepSpeed (deepspeed.ops.adam.fused_adam_op), nothing to build")
        return []
    problem = why_fused_adam_cannot_build(toolchain)
    if problem:
        say(f"FusedAdam: not built ({problem}); CUDA runs use torch.optim.AdamW(fused=True) instead")
        return []
    started = time.perf_counter()
    try:
        (build or load_fused_adam)()
    except Exception as error:  # noqa: BLE001 - any failed build falls back to torch; the compiler said why above
        first = (str(error).strip().splitlines() or [""])[0]
        say(f"FusedAdam: the build with {toolchain.nvcc} failed ({type(error).__name__}: {first}); CUDA runs "
            "use torch.optim.AdamW(fused=True) instead")
        return []
    say(f"FusedAdam: ready ({time.perf_counter() - started:.1f} s, nvcc {toolchain.nvcc_release} at {toolchain.nvcc})")
    return ["FusedAdam"]


def main() -> int:
    from deepspeed.accelerator import get_accelerator

    def say(message: str) -> None:
        print(f"[build-ops] {message}", flush=True)

    use_environment_ninja(say)
    check_build_locks(say)
    accelerator = get_accelerator().device_name()
    if accelerator == "cuda":
        build_cuda_ops(say)
    elif accelerator == "cpu":
        build_cpu_ops(say)
        build_cpu_adamw(say)
    else:
        say(f"accelerator {accelerator}: its ops build on first use (nothing built here)")
    return 0


if __name__ == "__main__":
    from interbert.errors import run_reporting_user_errors

    sys.exit(run_reporting_user_errors(lambda _: main(), None, "python -m interbert.training.extensions"))
