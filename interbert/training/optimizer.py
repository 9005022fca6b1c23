"""The optimizer: DeepSpeed builds it from the config's `optimizer` section, so every type it knows
(AdamW, Lamb, OneBitAdam, Adagrad, ...) and ZeRO-Offload work as DeepSpeed documents them. We hand it
BERT's two weight-decay groups as parameter groups: weight matrices and embeddings decay with
`optimizer.params.weight_decay`, biases and LayerNorm gains do not.

Where fused AdamW comes from: with `"type": "AdamW"` DeepSpeed picks
- on CUDA, its own FusedAdam (a multi-tensor CUDA kernel), which is prebuilt into DeepSpeed or
  compiled inside `deepspeed.initialize` (nvcc of torch's CUDA major version, and ninja);
- with ZeRO-Offload (`zero_optimization.offload_optimizer`), DeepSpeedCPUAdam (a C++/AVX kernel);
- with `"torch_adam": true`, torch.optim.AdamW, given the other params (so `"fused": true` reaches it).
`adapt_to_device` decides at start: on CUDA, FusedAdam where it is prebuilt or can be built, else
torch's fused AdamW (`torch_adam` + `fused`), never a failed compile; on a CPU without offload,
torch.optim.AdamW with torch's fused CPU kernel where this torch has one (FusedAdam does not exist
there: DeepSpeed would compile a CPU substitute at every fresh start); `"fused": false` in the
config's optimizer params keeps the unfused one. NVIDIA Apex is used for LayerNorm only (modeling/layer_norm.py).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field

import torch
from torch import nn

from interbert.training.ds_config import ConfigError
from interbert.training.op_cache import cached_op

ADAM_TYPES = ("adam", "adamw")


def decay_parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weight matrices and embeddings decay; biases and LayerNorm gains do not.

    A parameter is exempt when it is a bias or belongs to a LayerNorm module (BERT's rule),
    whatever its name; tied parameters appear once."""
    norm_parameters = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm)
                       for p in m.parameters(recurse=False)}
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad or id(parameter) in seen:
            continue
        seen.add(id(parameter))
        exempt = name.endswith("bias") or id(parameter) in norm_parameters
        (no_decay if exempt else decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def parameter_groups(model: nn.Module, ds_config: dict, config_path: str) -> list[dict]:
    """The groups handed to deepspeed.initialize as `model_parameters`."""
    section = ds_config.get("optimizer")
    if not isinstance(section, dict) or not section.get("type"):
        raise ConfigError(f"{config_path}: no `optimizer` section with a type; add "
                          '{"type": "AdamW", "params": {"lr": ..., "weight_decay": ...}}')
    weight_decay = float(section.get("params", {}).get("weight_decay", 0.0))
    return decay_parameter_groups(model, weight_decay)


@dataclass(frozen=True)
class CudaToolchain:
    """What a CUDA node offers for building DeepSpeed's FusedAdam."""

    torch_cuda: str | None  # torch.version.cuda; None: torch without CUDA
    prebuilt: bool = False  # deepspeed.ops.adam.fused_adam_op installed and loadable
    prebuilt_problem: str = ""  # why an installed op does not load
    nvcc: str | None = None  # CUDA_HOME/bin/nvcc as DeepSpeed runs it, when it exists
    nvcc_release: str | None = None  # "12.1", from `nvcc -V`
    nvcc_problem: str = ""  # why nvcc did not answer
    nvcc_on_path: str | None = None  # an nvcc on PATH that CUDA_HOME does not name
    ninja: bool = True
    cached: str | None = None  # an earlier JIT build in torch's extensions cache
    minor_mismatch_ok: dict = field(default_factory=dict)  # DeepSpeed's cuda_minor_mismatch_ok


@dataclass(frozen=True)
class AdamPlan:
    fused_adam: bool  # DeepSpeed's FusedAdam; otherwise torch.optim.AdamW(fused=True)
    note: str


def _major_minor(version: str) -> tuple[int, int]:
    major, minor = (version.split(".") + ["0"])[:2]
    return int(major), int(minor)


def cuda_versions_agree(nvcc: str, torch_cuda: str, minor_mismatch_ok: dict) -> bool:
    """DeepSpeed's rule: the same major.minor, or two minors of one major that it accepts together."""
    (nvcc_major, nvcc_minor), (torch_major, torch_minor) = _major_minor(nvcc), _major_minor(torch_cuda)
    if nvcc_major != torch_major:
        return False
    if nvcc_minor == torch_minor:
        return True
    accepted = minor_mismatch_ok.get(nvcc_major, ())
    return f"{nvcc_major}.{nvcc_minor}" in accepted and f"{torch_major}.{torch_minor}" in accepted


def why_fused_adam_cannot_build(toolchain: CudaToolchain) -> str | None:
    """None when DeepSpeed can JIT-build FusedAdam here; otherwise the reason, in words."""
    if toolchain.nvcc is None:
        hint = (f"; an nvcc is on PATH at {toolchain.nvcc_on_path}: set CUDA_HOME="
                f"{os.path.dirname(os.path.dirname(toolchain.nvcc_on_path))}" if toolchain.nvcc_on_path else
                "; install the CUDA toolkit of torch's CUDA version and set CUDA_HOME")
        return f"no nvcc (CUDA_HOME unset or without bin/nvcc){hint}"
    if toolchain.nvcc_release is None:
        return f"{toolchain.nvcc} does not run ({toolchain.nvcc_problem or 'no release in nvcc -V'})"
    if toolchain.torch_cuda is None:  # the callers ask only with a CUDA build of torch
        return "torch is a build without CUDA"
    if not cuda_versions_agree(toolchain.nvcc_release, toolchain.torch_cuda, toolchain.minor_mismatch_ok):
        return (f"{toolchain.nvcc} is CUDA {toolchain.nvcc_release} but torch was built with CUDA "
                f"{toolchain.torch_cuda}; point CUDA_HOME at a CUDA {toolchain.torch_cuda} toolkit")
    if not toolchain.ninja:
        return "ninja is not installed (pip install ninja)"
    return None


def plan_cuda_adam(toolchain: CudaToolchain, optimizer_type: str = "AdamW", torch_class: str = "AdamW") -> AdamPlan:
    """FusedAdam when prebuilt or buildable here, else torch's fused AdamW; the note says which and why."""
    if toolchain.prebuilt:
        return AdamPlan(True, "optimizer: DeepSpeed's FusedAdam, prebuilt (deepspeed.ops.adam.fused_adam_op)")
    problem = why_fused_adam_cannot_build(toolchain)
    if problem is None:
        where = (f"already built in {toolchain.cached}" if toolchain.cached
                 else "compiled once at this start (./run.sh setup prebuilds it)")
        return AdamPlan(True, f"optimizer: DeepSpeed's FusedAdam, JIT-built with {toolchain.nvcc} "
                              f"(CUDA {toolchain.nvcc_release}; torch's CUDA {toolchain.torch_cuda}), {where}")
    broken = f"; its prebuilt op does not load ({toolchain.prebuilt_problem})" if toolchain.prebuilt_problem else ""
    return AdamPlan(False, f"optimizer: DeepSpeed's FusedAdam cannot be built here ({problem}{broken}): "
                           f"the config's {optimizer_type} runs as torch.optim.{torch_class}(fused=True) (torch_adam)")


def _fused_adam_prebuilt() -> tuple[bool, str]:
    """(whether DeepSpeed was installed with FusedAdam compiled for this accelerator and it loads, why not)."""
    try:
        from deepspeed.accelerator import get_accelerator
        from deepspeed.git_version_info import accelerator_name, installed_ops
    except ImportError as error:
        return False, f"{type(error).__name__}: {error}"
    if not installed_ops.get("fused_adam") or accelerator_name != getattr(get_accelerator(), "_name", None):
        return False, ""
    try:
        load_fused_adam()  # an installed op: imported and checked against this torch, never compiled
    except Exception as error:  # an op built for another torch or CUDA
        return False, f"{type(error).__name__}: {error}"
    return True, ""


def _nvcc_release(nvcc: str) -> tuple[str | None, str]:
    try:
        output = subprocess.run([nvcc, "-V"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as error:
        return None, f"{type(error).__name__}: {error}"
    match = re.search(r"release (\d+\.\d+)", output)
    return (match[1], "") if match else (None, "no release in nvcc -V")


def probe_cuda_toolchain() -> CudaToolchain:
    """Ask this node: torch's CUDA, a prebuilt FusedAdam, nvcc where DeepSpeed looks (torch's
    CUDA_HOME: $CUDA_HOME, nvcc on PATH, /usr/local/cuda), ninja, torch's extensions cache."""
    import torch.utils.cpp_extension as cpp_extension

    if torch.version.cuda is None:
        return CudaToolchain(None)
    prebuilt, prebuilt_problem = _fused_adam_prebuilt()
    home = cpp_extension.CUDA_HOME
    nvcc = os.path.join(home, "bin", "nvcc") if home else None
    nvcc = nvcc if nvcc and os.access(nvcc, os.X_OK) else None
    release, problem = _nvcc_release(nvcc) if nvcc and not prebuilt else (None, "")
    on_path = shutil.which("nvcc") if nvcc is None else None
    try:
        from deepspeed.ops.op_builder.builder import cuda_minor_mismatch_ok
    except ImportError:
        cuda_minor_mismatch_ok = {}

    return CudaToolchain(torch.version.cuda, prebuilt, prebuilt_problem, nvcc, release, problem, on_path,
                         cpp_extension.is_ninja_available(), cached_op("fused_adam"), dict(cuda_minor_mismatch_ok))


def _torch_class(section: dict) -> str:
    """The class DeepSpeed's `torch_adam` builds: AdamW for type AdamW, or Adam unless adam_w_mode is false."""
    adamw = str(section.get("type")).lower() == "adamw" or section.get("params", {}).get("adam_w_mode", True)
    return "AdamW" if adamw else "Adam"


def load_fused_adam() -> None:
    """Build (or find built) DeepSpeed's FusedAdam, as its optimizer will load it."""
    from deepspeed.ops.op_builder import FusedAdamBuilder

    FusedAdamBuilder().load(verbose=False)


def adapt_to_device(ds_config: dict, device_type: str, *, toolchain: CudaToolchain | None = None,
                    build=None) -> str | None:
    """Decide where Adam/AdamW comes from and write it into `ds_config`; returns the one-line note,
    or None when the config is left to DeepSpeed (another type, ZeRO-Offload, `torch_adam` already set,
    torch without CUDA). `toolchain`: what the CUDA node offers (asked of it by default); `build`:
    compiles FusedAdam now (load_fused_adam by default), so that a failing compiler is a fallback."""
    section = ds_config.get("optimizer") or {}
    params = section.setdefault("params", {}) if isinstance(section, dict) else {}
    offload = (ds_config.get("zero_optimization") or {}).get("offload_optimizer") or {}
    if (str(section.get("type", "")).lower() not in ADAM_TYPES or params.get("torch_adam")
            or offload.get("device") not in (None, "none")):
        return None
    if device_type == "cuda":
        toolchain = probe_cuda_toolchain() if toolchain is None else toolchain
        if toolchain.torch_cuda is None:
            return None
        plan = plan_cuda_adam(toolchain, section["type"], _torch_class(section))
        if plan.fused_adam and not toolchain.prebuilt:
            try:
                (build or load_fused_adam)()
            except Exception as error:  # a compiler that fails: torch's AdamW rather than a dead start
                first = (str(error).strip().splitlines() or [""])[0]
                plan = AdamPlan(False, f"optimizer: DeepSpeed's FusedAdam did not build with {toolchain.nvcc} "
                                       f"({type(error).__name__}: {first}): the config's {section['type']} runs "
                                       f"as torch.optim.{_torch_class(section)}(fused=True) (torch_adam)")
        if not plan.fused_adam:
            params["torch_adam"] = True
            params["fused"] = True
        return plan.note
    if device_type != "cpu":
        return None
    params["torch_adam"] = True
    if "fused" not in params and torch_fuses_on_cpu():  # an explicit "fused": false in the config is kept
        params["fused"] = True
    fused = "(fused=True)" if params.get("fused") else ""
    return ("optimizer: DeepSpeed's FusedAdam is a CUDA kernel; on this CPU the config's "
            f"{section['type']} runs as torch.optim.{_torch_class(section)}{fused} "
            "(torch_adam)")


def torch_fuses_on_cpu() -> bool:
    """Whether this torch has fused Adam/AdamW kernels for the CPU (2.4 and later): one pass over every
    parameter per step instead of a chain of elementwise ops per tensor."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:
        return False
    return "cpu" in _get_fused_kernels_supported_devices()


def describe_optimizer(engine) -> str:
    """What DeepSpeed built, in words (printed at start and kept in the run config)."""
    basic, wrapper = engine.basic_optimizer, engine.optimizer
    module = type(basic).__module__
    module = "torch.optim" if module.startswith("torch.optim.") else module  # its public name
    name = f"{module}.{type(basic).__qualname__}"
    described = f"{name}, built by DeepSpeed from optimizer.type {engine.optimizer_name()}"
    if getattr(basic, "defaults", {}).get("fused"):
        described += " (fused)"
    if wrapper is not None and wrapper is not basic:
        described += f" (wrapped by {type(wrapper).__name__})"
    return described
