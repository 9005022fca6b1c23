"""InterBertForPretraining: the backbone with the MSM, MRM and ITM heads and the weighted
loss λ1·MSM + λ2·MRM + λ3·ITM (paper eq. 8)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn

from interbert.batch_contract import INPUT_KEYS, loss_positions
from interbert.config import InterBertConfig
from interbert.modeling.backbone import InterBertModel, init_weights
from interbert.modeling.heads import ITM_MATCHED, ItmHead, MrmHead, MsmHead
from interbert.modeling.losses import TaskLoss, itm_loss, mrm_loss, msm_loss
from interbert.modeling.pretrained_io import PretrainedModelMixin


@dataclass
class PretrainingOutput:
    loss: torch.Tensor | None  # the weighted sum of the tasks present in the batch
    losses: dict[str, torch.Tensor] = field(default_factory=dict)  # detached, per task
    accuracies: dict[str, torch.Tensor] = field(default_factory=dict)  # NaN when nothing counted
    counts: dict[str, int] = field(default_factory=dict)  # masked words / regions / pairs scored
    itm_logits: torch.Tensor | None = None  # B×2, class 1 = matched


class InterBertForPretraining(PretrainedModelMixin, nn.Module):
    """forward(**batch) with the batch keys of docs/design.md -> PretrainingOutput.

    Label keys are optional: a task whose labels are absent is not computed."""

    def __init__(self, config: InterBertConfig):
        super().__init__()
        self.config = config
        self.interbert = InterBertModel(config)
        self.msm_head = MsmHead(config)
        self.mrm_head = MrmHead(config)
        self.itm_head = ItmHead(config)
        for head in (self.msm_head, self.mrm_head, self.itm_head):
            head.apply(lambda module: init_weights(module, config.initializer_range))

    @classmethod
    def adapt_checkpoint_keys(cls, tensors):
        if tensors and not any(key.startswith("interbert.") for key in tensors):
            raise ValueError(
                "this model directory holds a backbone (InterBertModel) without the MSM, MRM and "
                "ITM heads: load it with InterBertModel.from_pretrained"
            )
        return tensors

    def itm_logits(self, **inputs: torch.Tensor) -> torch.Tensor:
        output = self.interbert(**{key: inputs[key] for key in INPUT_KEYS})
        return self.itm_head(output.pooled_text, output.pooled_image)

    def itm_score(self, **inputs: torch.Tensor) -> torch.Tensor:
        """The probability that each pair's text and image match, B float32 (what retrieval
        ranks by). Extra keys such as labels are ignored."""
        return self.itm_logits(**inputs).float().softmax(dim=-1)[:, ITM_MATCHED]

    def forward(self, msm_labels=None, mrm_labels=None, mrm_soft_labels=None, itm_labels=None,
                msm_positions=None, mrm_positions=None, **inputs: torch.Tensor) -> PretrainingOutput:
        missing = [key for key in INPUT_KEYS if key not in inputs]
        if missing:
            raise KeyError(f"the batch lacks {missing}; a batch holds the keys of docs/design.md")
        output = self.interbert(**{key: inputs[key] for key in INPUT_KEYS})
        tasks: dict[str, TaskLoss] = {}
        chosen = set(self.config.pretraining_tasks.split(","))  # the slot "msm" also carries MLM, "mrm" MOM
        if msm_labels is not None and chosen & {"msm", "mlm"}:
            tasks["msm"] = self._msm(output.text_hidden, msm_labels, msm_positions)
        if mrm_labels is not None and chosen & {"mrm", "mom"}:
            tasks["mrm"] = self._mrm(output.image_hidden, mrm_labels, mrm_soft_labels, itm_labels, mrm_positions)
        itm_logits = self.itm_head(output.pooled_text, output.pooled_image)
        if itm_labels is not None and "itm" in chosen:
            tasks["itm"] = itm_loss(itm_logits, itm_labels)
        weights = {"msm": self.config.msm_weight, "mrm": self.config.mrm_weight,
                   "itm": self.config.itm_weight}
        # a sum of tensors (never the start value 0: `tasks` is not empty)
        loss = cast(torch.Tensor, sum(weights[name] * task.loss for name, task in tasks.items())) if tasks else None
        return PretrainingOutput(
            loss=loss,
            losses={name: task.loss.detach() for name, task in tasks.items()},
            accuracies={name: task.accuracy for name, task in tasks.items()},
            counts={name: task.count for name, task in tasks.items()},
            itm_logits=itm_logits,
        )

    def _msm(self, text_hidden: torch.Tensor, msm_labels: torch.Tensor, positions=None) -> TaskLoss:
        # Only masked positions reach the vocabulary projection (30522-wide): the rest would
        # be wasted work and memory.
        if positions is None:
            positions = loss_positions(msm_labels)
        word_embeddings = self.interbert.embeddings.word_embeddings.weight
        logits = self.msm_head(gather_rows(text_hidden, positions), word_embeddings)
        return msm_loss(logits, gather_rows(msm_labels, positions))

    def _mrm(self, image_hidden, mrm_labels, mrm_soft_labels, itm_labels, positions=None) -> TaskLoss:
        if self.config.mrm_loss == "kl" and mrm_soft_labels is None:
            raise ValueError(
                "mrm_loss is 'kl' (the released target) but the batch has no mrm_soft_labels: "
                "build the feature store with detector class distributions (cls_prob), or set "
                "mrm_loss to 'ce' in the model config"
            )
        if positions is None:
            matched = itm_labels == ITM_MATCHED if self.config.mrm_matched_only and itm_labels is not None else None
            positions = loss_positions(mrm_labels, matched)
        logits = self.mrm_head(gather_rows(image_hidden, positions))
        soft = gather_rows(mrm_soft_labels, positions) if self.config.mrm_loss == "kl" else None
        return mrm_loss(logits, gather_rows(mrm_labels, positions), soft, self.config.mrm_loss)


def gather_rows(values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``values`` B×L(×…) at the flat indices ``positions`` (into B×L): N(×…), with no host sync."""
    return values.flatten(0, 1).index_select(0, positions)
