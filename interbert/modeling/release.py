"""Convert the authors' released InterBERT state_dict into a model directory.

Key map (release -> this project), for release layouts described in
shared/reference/release-checkpoint.md:
  bert.embeddings.*                            interbert.embeddings.*
  bert.v_embeddings.image_embeddings           interbert.region_embeddings.feature_projection
  bert.v_embeddings.image_location_embeddings  interbert.region_embeddings.location_projection
  bert.v_embeddings.LayerNorm                  interbert.region_embeddings.LayerNorm
  bert.encoder.layer.i (i < n_interaction)     interbert.interaction.layer.i
  bert.encoder.layer.i (the rest)              interbert.text_extraction.layer.(i - n_interaction)
  bert.encoder.v_layer.i                       interbert.image_extraction.layer.i
  bert.t_pooler / bert.v_pooler                interbert.text_pooler / interbert.image_pooler
  cls.predictions.transform / bias             msm_head.transform / bias
  cls.predictions.decoder.weight               (tied to the word embeddings: checked, dropped)
  cls.imagePredictions.*                       mrm_head.*
  cls.bi_seq_relationship                      itm_head.classifier, rows swapped: the release's
                                               class 0 is "matched", ours is class 1
The fine-tuned release (InterBertForVLTasks) adds vil_prediction, vil_logit, vision_logit and
linguisic_logit: they are kept, unchanged, in `release_task_heads.safetensors` beside the model.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from interbert.config import InterBertConfig
from interbert.modeling.checkpoint_files import read_state_dict
from interbert.modeling.heads import ITM_MATCHED
from interbert.modeling.pretraining import InterBertForPretraining

RELEASE_ITM_MATCHED = 0
TASK_HEAD_PREFIXES = ("vil_prediction.", "vil_logit.", "vision_logit.", "linguisic_logit.")
TASK_HEADS_NAME = "release_task_heads.safetensors"

_RENAMES = (
    (r"^bert\.embeddings\.(.+)$", r"interbert.embeddings.\1"),
    (r"^bert\.v_embeddings\.image_embeddings\.(.+)$", r"interbert.region_embeddings.feature_projection.\1"),
    (r"^bert\.v_embeddings\.image_location_embeddings\.(.+)$", r"interbert.region_embeddings.location_projection.\1"),
    (r"^bert\.v_embeddings\.LayerNorm\.(.+)$", r"interbert.region_embeddings.LayerNorm.\1"),
    (r"^bert\.encoder\.v_layer\.(\d+)\.(.+)$", r"interbert.image_extraction.layer.\1.\2"),
    (r"^bert\.t_pooler\.(.+)$", r"interbert.text_pooler.\1"),
    (r"^bert\.v_pooler\.(.+)$", r"interbert.image_pooler.\1"),
    (r"^cls\.predictions\.transform\.(.+)$", r"msm_head.transform.\1"),
    (r"^cls\.predictions\.bias$", r"msm_head.bias"),
    (r"^cls\.imagePredictions\.(.+)$", r"mrm_head.\1"),
    (r"^cls\.bi_seq_relationship\.(.+)$", r"itm_head.classifier.\1"),
)
_TEXT_LAYER = re.compile(r"^bert\.encoder\.layer\.(\d+)\.(.+)$")
TIED_DECODER = "cls.predictions.decoder.weight"


@dataclass
class ConversionReport:
    converted: int
    task_heads: list[str]
    output: Path


def release_key_to_ours(key: str, num_interaction: int) -> str | None:
    layer = _TEXT_LAYER.match(key)
    if layer:
        index, rest = int(layer.group(1)), layer.group(2)
        if index < num_interaction:
            return f"interbert.interaction.layer.{index}.{rest}"
        return f"interbert.text_extraction.layer.{index - num_interaction}.{rest}"
    for pattern, replacement in _RENAMES:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    return None


def _swap_itm_classes(tensor: torch.Tensor) -> torch.Tensor:
    """Reorder the ITM rows so that our ITM_MATCHED row holds the release's matched row."""
    order = [0, 1]
    order[ITM_MATCHED] = RELEASE_ITM_MATCHED
    order[1 - ITM_MATCHED] = 1 - RELEASE_ITM_MATCHED
    return tensor[order].clone()


def convert_release_state_dict(
    state: dict[str, torch.Tensor], config: InterBertConfig, source: str = "<state_dict>"
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Released keys -> (this project's state_dict, the fine-tuned release's task heads).
    Raises ValueError listing every unknown, missing or mis-shaped key."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = InterBertForPretraining(config).state_dict()
    converted, task_heads, unknown, mismatched = {}, {}, [], []
    for key, tensor in state.items():
        if key.startswith(TASK_HEAD_PREFIXES):
            task_heads[key] = tensor.contiguous()
            continue
        if key == TIED_DECODER:
            continue  # checked against the word embeddings below
        target = release_key_to_ours(key, config.interaction.num_layers)
        if target is None or target not in expected:
            unknown.append(key)
            continue
        if target.startswith("itm_head.classifier."):
            tensor = _swap_itm_classes(tensor)
        if tensor.shape != expected[target].shape:
            mismatched.append(f"{key} {tuple(tensor.shape)} -> {target} {tuple(expected[target].shape)}")
            continue
        converted[target] = tensor.to(expected[target].dtype).contiguous()
    missing = sorted(set(expected) - set(converted))
    problems = []
    if unknown:
        problems.append("unknown keys (not part of the released layout): " + ", ".join(sorted(unknown)))
    if missing:
        problems.append("missing keys (the model needs them): " + ", ".join(missing))
    if mismatched:
        problems.append("shapes that do not fit the config: " + ", ".join(mismatched))
    if problems:
        raise ValueError(f"{source} does not convert into the given layout "
                         f"(interaction {config.interaction.num_layers}, text extraction "
                         f"{config.text_extraction.num_layers}, image extraction "
                         f"{config.image_extraction.num_layers} layers, hidden {config.hidden_size}):\n  "
                         + "\n  ".join(problems))
    decoder = state.get(TIED_DECODER)
    words = converted["interbert.embeddings.word_embeddings.weight"]
    if decoder is not None and not torch.equal(decoder.to(words.dtype), words):
        raise ValueError(
            f"{source}: {TIED_DECODER} differs from bert.embeddings.word_embeddings.weight; "
            "the released model ties them and so does this one, so this file is not a "
            "released InterBERT checkpoint"
        )
    return converted, task_heads


def convert_release(checkpoint: str | Path, output: str | Path,
                    config: InterBertConfig | None = None) -> ConversionReport:
    """Read a released checkpoint file and write a model directory that
    InterBertForPretraining.from_pretrained(output) loads."""
    config = config or InterBertConfig.from_preset("release-base")
    state = read_state_dict(checkpoint, description="released InterBERT checkpoint")
    converted, task_heads = convert_release_state_dict(state, config, source=str(checkpoint))
    model = InterBertForPretraining(config)
    model.load_state_dict(converted, strict=True)
    output = Path(output)
    model.save_pretrained(output)
    if task_heads:
        save_file(task_heads, str(output / TASK_HEADS_NAME), metadata={"source": str(checkpoint)})
    return ConversionReport(converted=len(converted), task_heads=sorted(task_heads), output=output)
