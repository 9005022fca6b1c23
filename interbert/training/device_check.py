"""The start-up check of a CUDA device: can this torch build run on the card, and does the card
have the precision the run asks for. `check_cuda_device` decides from what the node reports
(a pure function); `query_cuda_device` asks torch on the node.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from interbert.errors import UsageError

BF16_CAPABILITY = (8, 0)  # Ampere: bf16 tensor cores; a V100 (7.0) has none
INSTALL_PAGE = "https://pytorch.org/get-started/locally/"


class DeviceError(UsageError):
    pass


@dataclass(frozen=True)
class CudaDevice:
    """What a GPU node reports: the card's name and compute capability, and the arches torch was built for."""

    name: str
    capability: tuple[int, int]
    arch_list: tuple[str, ...]
    torch_cuda: str | None = None  # torch.version.cuda


def query_cuda_device(index: int | None = None) -> CudaDevice | None:
    """The current (or `index`) CUDA device as torch sees it; None where torch has no usable CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    index = torch.cuda.current_device() if index is None else index
    major, minor = torch.cuda.get_device_capability(index)
    return CudaDevice(torch.cuda.get_device_name(index), (major, minor),
                      tuple(torch.cuda.get_arch_list()), torch.version.cuda)


def _arch(entry: str) -> tuple[str, int, int, str] | None:
    """'sm_70' -> ('sm', 7, 0, ''); 'sm_90a' -> ('sm', 9, 0, 'a'); 'compute_80' -> ('compute', 8, 0, '')."""
    match = re.fullmatch(r"(sm|compute)_(\d+)(\d)([a-z]?)", entry.strip())
    return (match[1], int(match[2]), int(match[3]), match[4]) if match else None


def runs_on(capability: tuple[int, int], arch_list) -> str | None:
    """The arch entry that lets this torch build run on a device of `capability`, or None.

    Machine code (sm_XY) runs on the same major with minor >= Y (an 'a' entry only on exactly
    X.Y); PTX (compute_XY) is compiled at load for any capability >= X.Y."""
    major, minor = capability
    for entry in arch_list:
        parsed = _arch(entry)
        if parsed is None:
            continue
        kind, arch_major, arch_minor, suffix = parsed
        if kind == "sm" and arch_major == major and (arch_minor == minor if suffix == "a" else arch_minor <= minor):
            return entry
        if kind == "compute" and not suffix and (arch_major, arch_minor) <= (major, minor):
            return entry
    return None


def install_hint(capability: tuple[int, int]) -> str:
    sm = f"sm_{capability[0]}{capability[1]}"
    if capability < (7, 5):  # Volta and older left PyTorch's CUDA 12.8+ wheels
        return (f"install a torch build compiled for {sm}: PyTorch's cu118, cu121 and cu126 wheels carry it "
                "(pip install torch --index-url https://download.pytorch.org/whl/cu126), or build torch "
                f"with TORCH_CUDA_ARCH_LIST={capability[0]}.{capability[1]}")
    return f"install a torch build compiled for {sm} (a wheel for a newer CUDA, see {INSTALL_PAGE})"


def check_cuda_device(capability: tuple[int, int], arch_list, device_name: str, precision: str,
                      config_path: str, requested_by: str | None = None, torch_cuda: str | None = None) -> str:
    """One line naming the device when the run can use it in `precision`; otherwise raise
    DeviceError saying which card, what this torch has, and what to change or install.

    `requested_by`: who asked for the precision (e.g. '--precision bf16'); by default the config's key.
    `torch_cuda`: torch.version.cuda, named in the message."""
    capability = (int(capability[0]), int(capability[1]))
    arch_list = tuple(arch_list)
    cap = f"{capability[0]}.{capability[1]}"
    if arch_list:
        entry = runs_on(capability, arch_list)
        if entry is None:
            raise DeviceError(
                f"{device_name} (compute capability {cap}, sm_{capability[0]}{capability[1]}) cannot run this torch "
                f"build{f' (CUDA {torch_cuda})' if torch_cuda else ''}, which carries only {' '.join(arch_list)}: "
                f"{install_hint(capability)}")
        runs = f"{entry} in this torch build"
    else:
        runs = "this torch build lists no arches"
    if precision == "bf16" and capability < BF16_CAPABILITY:
        fix = ("pass --precision fp16 or fp32 on this card" if requested_by else
               f"set bf16.enabled to false and fp16.enabled to true in {config_path}, or pass --precision fp16")
        raise DeviceError(
            f"{requested_by or f'{config_path}: bf16.enabled'} asks for bf16, but {device_name} (compute capability "
            f"{cap}) has no bf16 (it needs 8.0 or newer): {fix}")
    return f"{device_name}, compute capability {cap} ({runs})"
