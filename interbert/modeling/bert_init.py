"""Initialise InterBERT from any Hugging Face BERT directory (paper §6.1: "initialized with
the pretrained BERT-base model").

BERT's layers fill the interaction stack first, then the text extraction stack (release-base:
layers 0-5 and 6-11; paper-base: 0-11 to interaction). Embeddings and the MLM transform load
where names match. Everything else keeps its random init (normal, std 0.02).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from interbert.modeling.checkpoint_files import read_state_dict

if TYPE_CHECKING:
    from interbert.modeling.pretrained_io import PretrainedModelMixin

_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
# Checkpoint tensors with no counterpart by design: BERT's tanh pooler and NSP head (InterBERT's
# poolers are 1024-wide with ReLU, its ITM head reads their product), the tied decoder copy.
_NO_COUNTERPART = re.compile(
    r"^(pooler\.|cls\.seq_relationship\.|cls\.predictions\.decoder\.|embeddings\.position_ids$)"
)


@dataclass
class InitReport:
    checkpoint: str
    loaded: list[str] = field(default_factory=list)  # model keys filled from the checkpoint
    not_loaded: list[str] = field(default_factory=list)  # model keys left at random init
    unused: list[str] = field(default_factory=list)  # checkpoint keys with no counterpart

    def summary(self) -> str:
        return (f"initialised from {self.checkpoint}: {len(self.loaded)} tensors loaded, "
                f"{len(self.not_loaded)} left at random init, "
                f"{len(self.unused)} checkpoint tensors unused ({', '.join(self.unused[:6])}"
                f"{', ...' if len(self.unused) > 6 else ''})")


def _bert_key_to_ours(key: str, num_interaction: int, num_text_extraction: int) -> str | None:
    key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
    if key.startswith("embeddings.") and not _NO_COUNTERPART.match(key):
        return "interbert." + key
    layer = _LAYER.match(key)
    if layer:
        index, rest = int(layer.group(1)), layer.group(2)
        if index < num_interaction:
            return f"interbert.interaction.layer.{index}.{rest}"
        if index - num_interaction < num_text_extraction:
            return f"interbert.text_extraction.layer.{index - num_interaction}.{rest}"
        return None
    if key.startswith("cls.predictions.transform."):
        return "msm_head." + key[len("cls.predictions."):]
    if key == "cls.predictions.bias":
        return "msm_head.bias"
    return None


def _bert_hidden_size(directory: Path, state: dict[str, torch.Tensor]) -> int:
    config_path = directory / "config.json"
    if config_path.is_file():
        hidden = json.loads(config_path.read_text()).get("hidden_size")
        if hidden:
            return int(hidden)
    return state["embeddings.word_embeddings.weight"].shape[1]


def init_from_bert(model: PretrainedModelMixin, directory: str | Path) -> InitReport:
    """Copy a BERT checkpoint into `model` (InterBertForPretraining or InterBertModel) in
    place. Raises ValueError when the checkpoint's width or vocabulary does not fit."""
    directory = Path(directory)
    state = read_state_dict(directory, description="BERT checkpoint")
    # BertForPreTraining / BertForMaskedLM prefix the encoder with "bert."
    state = {(k[len("bert."):] if k.startswith("bert.") else k): v for k, v in state.items()}
    if "embeddings.word_embeddings.weight" not in state:
        raise ValueError(f"{directory}: no embeddings.word_embeddings.weight; is this a BERT checkpoint?")
    config = model.config
    hidden = _bert_hidden_size(directory, state)
    if hidden != config.hidden_size:
        raise ValueError(
            f"{directory} is a BERT of hidden size {hidden}, the model's hidden_size is "
            f"{config.hidden_size}: pick a preset or config of the same width"
        )
    prefix = "" if hasattr(model, "interbert") else "interbert."  # backbone keys lack the prefix
    ours = model.state_dict()
    report = InitReport(checkpoint=str(directory))
    updates, mismatched = {}, []
    for key, tensor in state.items():
        target = _bert_key_to_ours(key, config.interaction.num_layers, config.text_extraction.num_layers)
        if target is not None and prefix:
            target = target[len(prefix):] if target.startswith(prefix) else None
        if target is None or target not in ours:
            report.unused.append(key)
            continue
        if tensor.shape != ours[target].shape:
            mismatched.append(f"{key} {tuple(tensor.shape)} -> {target} {tuple(ours[target].shape)}")
            continue
        updates[target] = tensor
    if mismatched:
        raise ValueError(f"{directory}: tensors whose shapes do not fit the model:\n  "
                         + "\n  ".join(mismatched))
    with torch.no_grad():
        for target, tensor in updates.items():
            ours[target].copy_(tensor.to(ours[target].dtype))
    report.loaded = sorted(updates)
    report.not_loaded = sorted(set(ours) - set(updates))
    report.unused.sort()
    return report
