"""AdamW with weight decay on weight matrices only, and the fastest implementation on hand.

The hyper-parameters come from the DeepSpeed config's `optimizer` section; we build the
optimizer ourselves (DeepSpeed wraps it for ZeRO and loss scaling) because DeepSpeed's own
builder applies one weight decay to every parameter and cannot pick NVIDIA Apex.

Implementation order:
  CUDA: NVIDIA Apex FusedAdam (when NVIDIA Apex is really installed) -> DeepSpeed FusedAdam
        -> torch.optim.AdamW(fused=True)
  CPU:  torch.optim.AdamW(fused=True) -> torch.optim.AdamW(foreach=True)
DeepSpeedCPUAdam is left to ZeRO-Offload (where DeepSpeed asks for it): without offload it
needs a C++ build at start-up on every fresh machine and is no faster than PyTorch's fused
CPU kernel for the parameter counts we train.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from interbert.modeling.fused import probe_nvidia_apex

SUPPORTED_TYPES = ("adamw", "adam")
DEFAULTS = {"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01}


@dataclass
class OptimizerChoice:
    optimizer: torch.optim.Optimizer
    implementation: str  # in words, printed at start and written to TensorBoard
    tried: list[str]  # what was passed over and why


def decay_parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weight matrices and embeddings decay; biases and LayerNorm gains do not.

    A parameter is exempt when it is a bias or belongs to a LayerNorm module (BERT's rule),
    whatever its name; tied parameters appear once."""
    norm_parameters = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm)
                       for p in m.parameters(recurse=False)}
    decay, no_decay, seen = [], [], set()
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad or id(parameter) in seen:
            continue
        seen.add(id(parameter))
        exempt = name.endswith("bias") or id(parameter) in norm_parameters
        (no_decay if exempt else decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def optimizer_settings(ds_config: dict, config_path: str) -> dict:
    """lr, betas, eps, weight_decay from the config's `optimizer` section, checked."""
    section = ds_config.get("optimizer")
    if not isinstance(section, dict):
        raise ValueError(f"{config_path}: no `optimizer` section; add "
                         '{"type": "AdamW", "params": {"lr": ..., "weight_decay": ...}}')
    kind = str(section.get("type", "")).lower()
    if kind not in SUPPORTED_TYPES:
        raise ValueError(f"{config_path}: optimizer.type {section.get('type')!r} is not supported; "
                         "use AdamW (Adam is read as AdamW: decoupled weight decay)")
    params = dict(section.get("params", {}))
    unknown = sorted(set(params) - set(DEFAULTS) - {"torch_adam", "adam_w_mode"})
    if unknown:
        raise ValueError(f"{config_path}: optimizer.params has unknown keys {unknown}; "
                         f"known: {sorted(DEFAULTS)}")
    settings = {key: params.get(key, default) for key, default in DEFAULTS.items()}
    settings["betas"] = tuple(float(b) for b in settings["betas"])
    if len(settings["betas"]) != 2:
        raise ValueError(f"{config_path}: optimizer.params.betas must hold two numbers")
    return settings


def build_optimizer(model: nn.Module, ds_config: dict, device: torch.device,
                    config_path: str = "the DeepSpeed config") -> OptimizerChoice:
    settings = optimizer_settings(ds_config, config_path)
    groups = decay_parameter_groups(model, settings["weight_decay"])
    hyper = {k: settings[k] for k in ("lr", "betas", "eps", "weight_decay")}
    tried: list[str] = []
    if device.type == "cuda":
        apex = probe_nvidia_apex()
        if apex.available and hasattr(apex.optimizers, "FusedAdam"):
            optimizer = apex.optimizers.FusedAdam(groups, adam_w_mode=True, **hyper)
            return OptimizerChoice(optimizer, "NVIDIA Apex FusedAdam (AdamW mode)", tried)
        tried.append(f"NVIDIA Apex FusedAdam: {apex.reason}")
        try:
            from deepspeed.ops.adam import FusedAdam

            optimizer = FusedAdam(groups, adam_w_mode=True, **hyper)
            return OptimizerChoice(optimizer, "DeepSpeed FusedAdam (AdamW mode)", tried)
        except Exception as error:  # the op is JIT-built; a missing toolkit lands here
            tried.append(f"DeepSpeed FusedAdam: {error.__class__.__name__}: {error}")
    return _torch_adamw(groups, hyper, device, tried)


def _torch_adamw(groups, hyper, device, tried) -> OptimizerChoice:
    probe = torch.zeros(1, device=device, requires_grad=True)
    try:
        trial = torch.optim.AdamW([probe], fused=True)
        probe.grad = torch.zeros_like(probe)
        trial.step()
    except (RuntimeError, TypeError) as error:
        tried.append(f"torch.optim.AdamW(fused=True) on {device.type}: {error}")
    else:
        optimizer = torch.optim.AdamW(groups, fused=True, **hyper)
        return OptimizerChoice(optimizer, f"torch.optim.AdamW(fused=True) on {device.type}", tried)
    optimizer = torch.optim.AdamW(groups, foreach=True, **hyper)
    return OptimizerChoice(optimizer, f"torch.optim.AdamW(foreach=True) on {device.type}", tried)
