"""Which fused kernels this machine offers: NVIDIA Apex when it is really installed.

The PyPI package named `apex` is an unrelated web toolkit that also imports as `apex`;
it is recognised and reported, never used.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class ApexProbe:
    """The outcome of looking for NVIDIA Apex: `normalization` / `optimizers` are the Apex
    submodules when usable, and `reason` says in words what was found."""

    normalization: ModuleType | None
    optimizers: ModuleType | None
    reason: str

    @property
    def available(self) -> bool:
        return self.normalization is not None


@functools.lru_cache(maxsize=1)
def probe_nvidia_apex() -> ApexProbe:
    if importlib.util.find_spec("apex") is None:
        return ApexProbe(None, None, "NVIDIA Apex is not installed")
    try:
        normalization = importlib.import_module("apex.normalization")
        optimizers = importlib.import_module("apex.optimizers")
    except Exception as error:  # the PyPI `apex` web toolkit lands here
        origin = getattr(importlib.util.find_spec("apex"), "origin", "?")
        return ApexProbe(
            None,
            None,
            f"a package named 'apex' is installed at {origin} but it is not NVIDIA Apex "
            f"(no apex.normalization / apex.optimizers: {error.__class__.__name__}: {error}); "
            "it is probably the unrelated PyPI web toolkit 'apex'. Uninstall it, and build "
            "NVIDIA Apex from https://github.com/NVIDIA/apex if you want its fused kernels",
        )
    if not hasattr(normalization, "FusedLayerNorm"):
        return ApexProbe(None, None, "apex.normalization has no FusedLayerNorm: Apex build too old")
    return ApexProbe(normalization, optimizers, "NVIDIA Apex is installed")
