"""DeepSpeed's compiled ops: built once at set-up, and stale build locks recognised at start-up.

DeepSpeed compiles some ops the first time a run needs them (on a CPU: the shared-memory
all-reduce at every start of the process group, and CPU Adam for ZeRO-Offload). torch guards each
build with a `lock` file in its extensions cache and waits, silently and forever, while the file
exists. A start interrupted mid-build leaves the file behind, and every later start hangs.

- `./run.sh setup` runs `python -m interbert.training.extensions`, which builds the ops a CPU run
  needs, so no run compiles; on a CUDA node it builds DeepSpeed's FusedAdam where nvcc of torch's
  CUDA version is there, and otherwise says why not (runs then use torch's fused AdamW);
- `check_build_locks` (at every start, before the process group) looks at each lock: one that a
  live process on this machine works in is waited for; one that nothing holds is waited on for a
  bounded time (a build on another machine sharing the cache may still finish it) and then stops
  the run with one line naming the file and what to do.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from interbert.errors import UserError

STALE_AFTER_SECONDS = 60.0  # a younger lock may belong to a build that has not started its compiler yet
WAIT_SECONDS = float(os.environ.get("INTERBERT_BUILD_LOCK_WAIT", "120"))


class StaleBuildLock(UserError, RuntimeError):
    pass


def extensions_root() -> Path:
    """Where torch builds extensions: TORCH_EXTENSIONS_DIR, else its per-user cache."""
    configured = os.environ.get("TORCH_EXTENSIONS_DIR")
    if configured:
        return Path(configured)
    from torch.utils.cpp_extension import get_default_build_root

    return Path(get_default_build_root())


def build_locks(root: Path) -> list[Path]:
    """The `lock` files of builds under `root` (one or two levels: with or without the
    per-Python/accelerator folder torch adds to its default root)."""
    if not root.is_dir():
        return []
    return sorted([*root.glob("*/lock"), *root.glob("*/*/lock")])


def lock_holders(lock: Path) -> list[int]:
    """Process ids on this machine whose working directory is the lock's build folder (the
    compiler and ninja run there while torch builds)."""
    folder = lock.parent.resolve()
    holders = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if Path(os.readlink(entry / "cwd")) == folder:
                holders.append(int(entry.name))
        except OSError:
            continue
    return holders


def _stale(lock: Path) -> bool:
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return False
    return age > STALE_AFTER_SECONDS and not lock_holders(lock)


def check_build_locks(say=print, root: Path | None = None, wait_seconds: float | None = None) -> None:
    """Stop with a message naming a lock no live build holds (after waiting `wait_seconds` for it
    to go away); return at once when there is none."""
    root = extensions_root() if root is None else root
    wait_seconds = WAIT_SECONDS if wait_seconds is None else wait_seconds
    stale = [lock for lock in build_locks(root) if _stale(lock)]
    if not stale:
        return
    say(f"waiting up to {wait_seconds:.0f} s for the build lock {stale[0]}: no process on this machine is "
        "building there (INTERBERT_BUILD_LOCK_WAIT sets the wait)")
    deadline = time.monotonic() + wait_seconds
    while stale and time.monotonic() < deadline:
        time.sleep(min(1.0, wait_seconds))
        stale = [lock for lock in stale if _stale(lock)]
    if stale:
        lock = stale[0]
        raise StaleBuildLock(
            f"{lock}: a build lock that no build holds (a start interrupted while DeepSpeed compiled its "
            f"{lock.parent.name} op leaves one, and torch then waits for it forever); unless another machine "
            f"sharing {root} is building that op right now, remove it (rm {lock}) and start again, or rebuild "
            "the ops first with ./run.sh setup")


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


def op_build_directory(name: str) -> Path:
    """Where torch JIT-builds the op `name` (TORCH_EXTENSIONS_DIR/name, else its per-Python/CUDA folder)."""
    configured = os.environ.get("TORCH_EXTENSIONS_DIR")
    if configured:
        return Path(configured) / name
    import torch
    from torch.utils.cpp_extension import get_default_build_root

    accelerator = (f"rocm{torch.version.hip.replace('.', '')}" if torch.version.hip else
                   f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else "cpu")
    python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return Path(get_default_build_root()) / f"{python}_{accelerator}" / name


def cached_op(name: str) -> str | None:
    """The library of an earlier JIT build of `name` in torch's extensions cache, if there is one."""
    library = op_build_directory(name) / f"{name}.so"
    return str(library) if library.is_file() else None


def build_cuda_ops(say=print, toolchain=None, build=None) -> list[str]:
    """Build DeepSpeed's FusedAdam where it can be built here; say what was built, or why not."""
    from interbert.training.optimizer import load_fused_adam, probe_cuda_toolchain, why_fused_adam_cannot_build

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
    except Exception as error:  # the compiler's own output is above
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

    check_build_locks(say)
    accelerator = get_accelerator().device_name()
    if accelerator == "cuda":
        build_cuda_ops(say)
    elif accelerator == "cpu":
        build_cpu_ops(say)
    else:
        say(f"accelerator {accelerator}: its ops build on first use (nothing built here)")
    return 0


if __name__ == "__main__":
    from interbert.errors import run_reporting_user_errors

    sys.exit(run_reporting_user_errors(lambda _: main(), None, "python -m interbert.training.extensions"))
