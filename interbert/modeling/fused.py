"""Which fused kernels this machine offers: NVIDIA Apex's FusedLayerNorm, used only when Apex is
really installed with its CUDA extension (`fused_layer_norm_cuda`) and, on the device, computes
what torch.nn.functional.layer_norm computes (forward and backward).

The PyPI package named `apex` is an unrelated web toolkit that also imports as `apex`;
it is recognised and reported, never used.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
from dataclasses import dataclass
from types import ModuleType

import torch
import torch.nn.functional as F

EXTENSION = "fused_layer_norm_cuda"  # Apex's compiled LayerNorm kernels (built with --cuda_ext)
TOLERANCES = {  # (rtol, atol) against torch's layer norm computed in fp32 from the same inputs
    torch.float32: (1e-4, 1e-4),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (4e-2, 4e-2),
}


@dataclass(frozen=True)
class ApexProbe:
    """The outcome of looking for NVIDIA Apex: `normalization` is apex.normalization when usable,
    `dtypes` the dtypes its kernel was checked in on the device, `reason` what was found, in words."""

    normalization: ModuleType | None
    reason: str
    dtypes: tuple = ()

    @property
    def available(self) -> bool:
        return self.normalization is not None


def _first_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"


def find_nvidia_apex(import_module=importlib.import_module, find_spec=importlib.util.find_spec) -> ApexProbe:
    """Apex's normalization module when Apex and its CUDA extension import; otherwise why not."""
    if find_spec("apex") is None:
        return ApexProbe(None, "NVIDIA Apex is not installed")
    try:
        normalization = import_module("apex.normalization")
    except Exception as error:  # the PyPI `apex` web toolkit lands here
        origin = getattr(find_spec("apex"), "origin", "?")
        return ApexProbe(
            None,
            f"a package named 'apex' is installed at {origin} but it is not NVIDIA Apex "
            f"(no apex.normalization: {_first_line(error)}); it is probably the unrelated PyPI web toolkit "
            "'apex'. Uninstall it, and build NVIDIA Apex from https://github.com/NVIDIA/apex if you want its "
            "fused kernels",
        )
    if not hasattr(normalization, "FusedLayerNorm"):
        return ApexProbe(None, "apex.normalization has no FusedLayerNorm: Apex build too old")
    try:
        import_module(EXTENSION)
    except Exception as error:  # Apex installed from Python sources only, or built for another torch
        return ApexProbe(None, f"NVIDIA Apex is installed without its CUDA extension ({EXTENSION}: "
                               f"{_first_line(error)}); rebuild Apex with --cuda_ext to use its FusedLayerNorm")
    return ApexProbe(normalization, f"NVIDIA Apex with its CUDA extension {EXTENSION}")


@functools.lru_cache(maxsize=1)
def probe_nvidia_apex() -> ApexProbe:
    return find_nvidia_apex()


def compare_with_torch(normalization: ModuleType, device: torch.device, dtype: torch.dtype) -> str | None:
    """A small forward and backward of Apex's fused_layer_norm_affine on `device` in `dtype`, against
    torch's layer norm in fp32 on the same inputs; None when they agree, otherwise what differed."""
    size, eps = 64, 1e-5
    generator = torch.Generator().manual_seed(0)
    x, upstream = torch.randn(4, 6, size, generator=generator), torch.randn(4, 6, size, generator=generator)
    weight = 1 + 0.1 * torch.randn(size, generator=generator)
    bias = 0.1 * torch.randn(size, generator=generator)
    fused_in = [t.to(device, dtype).clone().requires_grad_() for t in (x, weight, bias)]
    reference_in = [t.to(device, dtype).float().clone().requires_grad_() for t in (x, weight, bias)]
    with torch.enable_grad(), torch.autocast(device.type, enabled=False):
        out = normalization.fused_layer_norm.fused_layer_norm_affine(*fused_in, (size,), eps)
        out.backward(upstream.to(device, dtype))
        reference = F.layer_norm(reference_in[0], (size,), reference_in[1], reference_in[2], eps)
        reference.backward(upstream.to(device, dtype).float())
    rtol, atol = TOLERANCES[dtype]
    pairs = [("output", out, reference)] + [
        (f"{name} gradient", got.grad, want.grad)
        for name, got, want in zip(("input", "weight", "bias"), fused_in, reference_in)]
    for what, got, want in pairs:
        assert want is not None  # torch's reference: every input takes part, so each has a gradient
        if got is None or got.shape != want.shape:
            return f"{what}: {'none' if got is None else tuple(got.shape)} where torch gives {tuple(want.shape)}"
        difference = (got.float() - want).abs().max().item()
        if not torch.allclose(got.float(), want, rtol=rtol, atol=atol):
            return f"{what} in {dtype} differs from torch.nn.functional.layer_norm by up to {difference:.3g}"
    return None


def choose_apex_layer_norm(probe: ApexProbe, device: torch.device, dtypes, compare=compare_with_torch) -> ApexProbe:
    """`probe` checked on `device` in each of `dtypes` (`compare`: compare_with_torch, or a fake in tests);
    Apex is kept only when every check agrees."""
    if not probe.available:
        return probe
    for dtype in dtypes:
        try:
            problem = compare(probe.normalization, device, dtype)
        except Exception as error:  # e.g. "no kernel image is available": Apex built for other arches
            problem = _first_line(error)
        if problem:
            return ApexProbe(None, f"{probe.reason}, but its FusedLayerNorm failed the check on {device} "
                                   f"against torch: {problem}")
    names = ", ".join(str(dtype).replace("torch.", "") for dtype in dtypes)
    return ApexProbe(probe.normalization, f"{probe.reason}; agrees with torch on {device} in {names}", tuple(dtypes))


def cuda_dtypes(device: torch.device) -> tuple:
    """The dtypes a run may use on this card: bf16 only from compute capability 8.0."""
    bf16 = torch.cuda.get_device_capability(device) >= (8, 0)
    return (torch.float32, torch.float16) + ((torch.bfloat16,) if bf16 else ())


@functools.cache
def apex_layer_norm(device_type: str = "cuda") -> ApexProbe:
    """Apex's LayerNorm for `device_type`, checked once on the current CUDA device; not used elsewhere."""
    probe = probe_nvidia_apex()
    if device_type != "cuda" or not probe.available:
        return probe
    if not torch.cuda.is_available():
        return ApexProbe(None, f"{probe.reason}, but no CUDA device here to check it on")
    device = torch.device("cuda", torch.cuda.current_device())
    return choose_apex_layer_norm(probe, device, cuda_dtypes(device))
