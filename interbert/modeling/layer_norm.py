"""LayerNorm through one factory: NVIDIA Apex's fused kernel on CUDA when Apex is really
installed with its CUDA extension and agrees with torch on the device (modeling/fused.py), in the
dtypes it was checked in; PyTorch's LayerNorm otherwise.

The choice is made per call from the input's device, so a model built on the CPU and moved
to a GPU picks up the fused kernel without rebuilding, and checkpoints are identical either
way (the parameters are always `weight` and `bias`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from interbert.modeling.fused import apex_layer_norm, probe_nvidia_apex


class LayerNorm(nn.LayerNorm):
    """BERT's LayerNorm (eps 1e-12 by default in the presets)."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.is_cuda:
            apex = apex_layer_norm("cuda")
            if hidden.dtype in apex.dtypes and apex.normalization is not None:  # dtypes: () without Apex
                fused = apex.normalization.fused_layer_norm
                return fused.fused_layer_norm_affine(
                    hidden, self.weight, self.bias, self.normalized_shape, self.eps
                )
        return F.layer_norm(hidden, self.normalized_shape, self.weight, self.bias, self.eps)


def layer_norm(size: int, eps: float) -> LayerNorm:
    """The one place the model builds a LayerNorm."""
    return LayerNorm(size, eps=eps)


def layer_norm_implementation(device: torch.device | str) -> str:
    """Which kernel `LayerNorm` runs on `device`, and why, in one line (printed and logged at start);
    on CUDA this runs Apex's check on the device."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"torch.nn.functional.layer_norm on {device.type} ({probe_nvidia_apex().reason})"
    apex = apex_layer_norm("cuda")
    if apex.dtypes:
        return f"NVIDIA Apex FusedLayerNorm (apex.normalization.fused_layer_norm_affine; {apex.reason})"
    return f"torch.nn.functional.layer_norm on CUDA ({apex.reason})"
