"""LayerNorm through one factory: NVIDIA Apex's fused kernel on CUDA when Apex is really
installed, PyTorch's LayerNorm otherwise.

The choice is made per call from the input's device, so a model built on the CPU and moved
to a GPU picks up the fused kernel without rebuilding, and checkpoints are identical either
way (the parameters are always `weight` and `bias`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from interbert.modeling.fused import probe_nvidia_apex


class LayerNorm(nn.LayerNorm):
    """BERT's LayerNorm (eps 1e-12 by default in the presets)."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.is_cuda:
            apex = probe_nvidia_apex()
            if apex.available:
                fused = apex.normalization.fused_layer_norm
                return fused.fused_layer_norm_affine(
                    hidden, self.weight, self.bias, self.normalized_shape, self.eps
                )
        return F.layer_norm(hidden, self.normalized_shape, self.weight, self.bias, self.eps)


def layer_norm(size: int, eps: float) -> LayerNorm:
    """The one place the model builds a LayerNorm."""
    return LayerNorm(size, eps=eps)


def layer_norm_implementation(device: torch.device | str) -> str:
    """Which kernel `LayerNorm` runs on `device`, in words (printed and logged at start)."""
    device = torch.device(device)
    apex = probe_nvidia_apex()
    if device.type == "cuda" and apex.available:
        return "NVIDIA Apex FusedLayerNorm (apex.normalization.fused_layer_norm_affine)"
    where = "on CUDA" if device.type == "cuda" else f"on {device.type}"
    return f"torch.nn.functional.layer_norm {where} ({apex.reason})"
