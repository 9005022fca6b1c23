"""AdamW on the CPU in one pass per flat partition: clipping multiply, moments, weight decay, update and
the bf16 copy of the new weights (csrc/adamw_step.c).

torch's fused CPU AdamW reads and writes every parameter, gradient and moment once, but clipping
scales the gradients in a pass of its own before it, and the bf16 weights are copied from the fp32
ones in a pass after it. Here the three are one pass. The C file needs no torch headers: it is
compiled with the system C compiler in well under a second, into torch's extensions cache (the
library's name carries a digest of the source, the flags, the compiler and the machine type, so a
changed source or compiler builds anew and nodes sharing the cache keep their own), once by
`./run.sh setup` and otherwise at the first start that needs it. Each build writes a file of its
own and renames it into place, so ranks that build at once cannot see half a library. It is called
through ctypes, which releases the GIL; the range is split across `torch.get_num_threads()` threads.

x86-64 builds carry AVX-512, AVX2 and baseline versions of the function, chosen at load by the CPU
that runs them (GCC's target_clones). `load()` returns None, with the reason in `unavailable()`, where
no compiler is found or the build fails: callers then keep the unfused path.
"""
from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from interbert.training.op_cache import op_build_directory

SOURCE = Path(__file__).with_name("csrc") / "adamw_step.c"
FLAGS = ("-O3", "-fPIC", "-shared", "-fno-math-errno", "-ffp-contract=off")
BUILD_NAME = "interbert_cpu_adamw"
CHUNK_ALIGNMENT = 1024  # elements: every thread's range starts on a cache line, in both dtypes

_library: ctypes.CDLL | None = None
_problem: str | None = None
_pool: ThreadPoolExecutor | None = None


def compiler() -> str | None:
    """The C compiler: $CC, else cc, else gcc on PATH."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _compiler_identity(cc: str) -> str:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout.split("\n")[0]
    except (OSError, subprocess.SubprocessError):
        return cc


def library_path(cc: str) -> Path:
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(FLAGS).encode(), _compiler_identity(cc).encode(),
                 platform.machine().encode()):
        digest.update(part)
        digest.update(b"\0")
    return op_build_directory(BUILD_NAME) / f"adamw_step-{digest.hexdigest()[:16]}.so"


def build(cc: str | None = None) -> Path:
    """Compile the kernel unless this exact build exists; returns the library's path. Raises
    RuntimeError naming the compiler and its first error line when it cannot be built."""
    cc = cc or compiler()
    if cc is None:
        raise RuntimeError("no C compiler (set CC, or install gcc)")
    target = library_path(cc)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(prefix=".building-", suffix=".so", dir=target.parent)
    os.close(handle)
    try:
        done = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", partial, "-lm"], capture_output=True, text=True,
                              timeout=300)
        if done.returncode != 0:
            first = next((line for line in done.stderr.splitlines() if "error" in line), done.stderr.strip()[:200])
            raise RuntimeError(f"{cc} could not compile {SOURCE.name}: {first}")
        os.replace(partial, target)
    except (OSError, subprocess.SubprocessError) as error:
        raise RuntimeError(f"{cc} could not compile {SOURCE.name}: {error}") from error
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


def load() -> ctypes.CDLL | None:
    """The kernel's library, built if needed; None (and `unavailable()` says why) when it cannot be."""
    global _library, _problem
    if _library is not None or _problem is not None:
        return _library
    try:
        library = ctypes.CDLL(str(build()))
    except (RuntimeError, OSError) as error:
        _problem = str(error)
        return None
    pointer, count, real = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
    library.interbert_adamw_step.argtypes = [pointer] * 5 + [count] + [real] * 8
    library.interbert_adamw_step.restype = None
    _library = library
    return library


def unavailable() -> str | None:
    """Why `load()` returned None; None when it has not failed."""
    return _problem


def _ranges(count: int) -> list[tuple[int, int]]:
    threads = max(1, min(torch.get_num_threads(), count // CHUNK_ALIGNMENT))
    per_thread = -(-count // threads)
    per_thread = -(-per_thread // CHUNK_ALIGNMENT) * CHUNK_ALIGNMENT
    return [(start, min(start + per_thread, count)) for start in range(0, count, per_thread)]


def _run(calls) -> None:
    """Run the calls, on a shared thread pool when there are several."""
    global _pool
    if len(calls) == 1:
        calls[0]()
        return
    if _pool is None or _pool._max_workers < len(calls):
        _pool = ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="interbert-adamw")
    for future in [_pool.submit(call) for call in calls]:
        future.result()


def _check(name: str, tensor: torch.Tensor, dtype: torch.dtype, count: int) -> None:
    if tensor.device.type != "cpu" or tensor.dtype != dtype or not tensor.is_contiguous() or tensor.numel() != count:
        raise ValueError(f"{name}: expected a contiguous {dtype} CPU tensor of {count} elements, got "
                         f"{tensor.dtype} on {tensor.device} with {tensor.numel()}")


def adamw_step(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
               lp: torch.Tensor | None, *, step: int, lr: float, beta1: float, beta2: float, eps: float,
               weight_decay: float, grad_multiplier: float = 1.0) -> None:
    """One AdamW step of torch.optim.AdamW's arithmetic over flat fp32 tensors, in place, with the
    gradient multiplied by `grad_multiplier` on the way in and, when `lp` is given, the new weights
    written to it in bf16. `step` is the step count after this step (1 for the first)."""
    library = load()
    if library is None:
        raise RuntimeError(f"the CPU AdamW kernel is not available: {_problem}")
    count = param.numel()
    for name, tensor in (("param", param), ("grad", grad), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        _check(name, tensor, torch.float32, count)
    if lp is not None:
        _check("lp", lp, torch.bfloat16, count)
    # the scalars in double, rounded to float once, as torch's kernel computes them
    step_size = lr / (1 - beta1 ** step)
    bias_correction2_sqrt = math.sqrt(1 - beta2 ** step)
    scalars = (grad_multiplier, 1 - lr * weight_decay, 1 - beta1, beta2, 1 - beta2, step_size,
               bias_correction2_sqrt, eps)
    pointers = [(tensor.data_ptr(), tensor.element_size()) for tensor in (param, grad, exp_avg, exp_avg_sq)]
    lp_base = lp.data_ptr() if lp is not None else None
    if count == 0:  # an empty partition: nothing to update
        return

    def part(start: int, end: int) -> None:
        library.interbert_adamw_step(*[base + start * size for base, size in pointers],
                                     lp_base + 2 * start if lp_base is not None else None, end - start, *scalars)

    _run([lambda s=start, e=end: part(s, e) for start, end in _ranges(count)])
