"""The optimizer: DeepSpeed builds it from the config's `optimizer` section, so every type it knows
(AdamW, Lamb, OneBitAdam, Adagrad, ...) and ZeRO-Offload work as DeepSpeed documents them. We hand it
BERT's two weight-decay groups as parameter groups: weight matrices and embeddings decay with
`optimizer.params.weight_decay`, biases and LayerNorm gains do not.

Where fused AdamW comes from: with `"type": "AdamW"` DeepSpeed picks
- on CUDA, its own FusedAdam (a multi-tensor CUDA kernel, the same design as NVIDIA Apex's);
- with ZeRO-Offload (`zero_optimization.offload_optimizer`), DeepSpeedCPUAdam (a C++/AVX kernel);
- with `"torch_adam": true`, torch.optim.AdamW.
On a CPU device without offload, FusedAdam does not exist (DeepSpeed would try to compile a CPU
substitute at every fresh start), so `adapt_to_device` asks for torch.optim.AdamW and says so.
NVIDIA Apex is used for LayerNorm only (modeling/layer_norm.py), never for the optimizer.
"""
from __future__ import annotations

from torch import nn

from interbert.training.ds_config import ConfigError

ADAM_TYPES = ("adam", "adamw")


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


def adapt_to_device(ds_config: dict, device_type: str) -> str | None:
    """On a CPU without ZeRO-Offload, Adam/AdamW run as torch.optim.AdamW (`torch_adam`); returns
    a note saying so, or None when nothing changed."""
    section = ds_config.get("optimizer") or {}
    params = section.setdefault("params", {}) if isinstance(section, dict) else {}
    offload = (ds_config.get("zero_optimization") or {}).get("offload_optimizer") or {}
    if (device_type != "cpu" or str(section.get("type", "")).lower() not in ADAM_TYPES
            or params.get("torch_adam") or offload.get("device") not in (None, "none")):
        return None
    params["torch_adam"] = True
    return ("optimizer: DeepSpeed's FusedAdam is a CUDA kernel; on this CPU the config's "
            f"{section['type']} runs as torch.optim.{'AdamW' if params.get('adam_w_mode', True) else 'Adam'} "
            "(torch_adam)")


def describe_optimizer(engine) -> str:
    """What DeepSpeed built, in words (printed at start and kept in the run config)."""
    basic, wrapper = engine.basic_optimizer, engine.optimizer
    module = type(basic).__module__
    module = "torch.optim" if module.startswith("torch.optim.") else module  # its public name
    name = f"{module}.{type(basic).__qualname__}"
    described = f"{name}, built by DeepSpeed from optimizer.type {engine.optimizer_name()}"
    if wrapper is not None and wrapper is not basic:
        described += f" (wrapped by {type(wrapper).__name__})"
    return described
