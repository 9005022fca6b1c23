"""Which floating-point format the run trains in, decided once from the `--precision` flag,
the DeepSpeed config and the device, and written back into the config DeepSpeed receives.

- auto: the config's choice on CUDA (fp16 with dynamic loss scaling for the V100 config);
  on a CPU, DeepSpeed refuses fp16, so an fp16 config runs in bf16 there, and says so.
- fp32 / bf16 / fp16: that format, whatever the config says; fp16 on a CPU is an error.
On CUDA the card is checked too (device_check.py): this torch build must carry its arch, and bf16
needs compute capability 8.0 (a V100 trains in fp16).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from interbert.errors import UserError
from interbert.training.device_check import check_cuda_device, query_cuda_device

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_QUERY = object()  # resolve_precision's default: ask torch about the CUDA card


class PrecisionError(UserError, ValueError):
    pass


@dataclass(frozen=True)
class PrecisionChoice:
    name: str  # "fp32", "bf16" or "fp16"
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    @property
    def uses_loss_scaling(self) -> bool:
        return self.name == "fp16"


def configured_precision(ds_config: dict) -> str:
    fp16 = ds_config.get("fp16", {}).get("enabled", False)
    bf16 = ds_config.get("bf16", {}).get("enabled", False)
    if fp16 and bf16:
        raise PrecisionError("the DeepSpeed config enables both fp16 and bf16; enable one of them")
    return "fp16" if fp16 else "bf16" if bf16 else "fp32"


def resolve_precision(requested: str, ds_config: dict, device: torch.device,
                      config_path: str = "the DeepSpeed config", cuda_device=_QUERY) -> PrecisionChoice:
    """Decide the precision and rewrite the `fp16` / `bf16` sections of `ds_config` in place.

    `cuda_device`: what the CUDA card reports (a device_check.CudaDevice); by default torch is asked,
    and nothing is checked where torch has no usable CUDA."""
    if requested not in PRECISIONS:
        raise PrecisionError(f"--precision {requested!r}: choose one of {', '.join(PRECISIONS)}")
    configured = configured_precision(ds_config)
    on_cpu = device.type == "cpu"
    if requested == "auto":
        if on_cpu and configured == "fp16":
            choice = PrecisionChoice(
                "bf16", f"{config_path} asks for fp16, which DeepSpeed refuses on a CPU: "
                        "training in bf16 instead (--precision auto)")
        else:
            choice = PrecisionChoice(configured, f"as configured in {config_path} (--precision auto)")
    else:
        if requested == "fp16" and on_cpu:
            raise PrecisionError(
                "--precision fp16 was requested but this run is on a CPU, where DeepSpeed does not "
                "support fp16: use --precision bf16 or fp32 (or auto, which picks bf16 here), or "
                "run on a CUDA GPU")
        choice = PrecisionChoice(requested, f"--precision {requested}")
    if device.type == "cuda":
        choice = _check_card(choice, requested, device, config_path, cuda_device)
    _write_sections(ds_config, choice.name)
    return choice


def _check_card(choice: PrecisionChoice, requested: str, device: torch.device, config_path: str,
                cuda_device) -> PrecisionChoice:

    if cuda_device is _QUERY:
        cuda_device = query_cuda_device(device.index)
    if cuda_device is None:
        return choice
    line = check_cuda_device(cuda_device.capability, cuda_device.arch_list, cuda_device.name, choice.name,
                             config_path, None if requested == "auto" else f"--precision {requested}",
                             cuda_device.torch_cuda)
    return PrecisionChoice(choice.name, f"{choice.reason}; {line}")


def _write_sections(ds_config: dict, name: str) -> None:
    fp16 = dict(ds_config.get("fp16", {}))
    bf16 = dict(ds_config.get("bf16", {}))
    fp16["enabled"] = name == "fp16"
    bf16["enabled"] = name == "bf16"
    ds_config["fp16"], ds_config["bf16"] = fp16, bf16
