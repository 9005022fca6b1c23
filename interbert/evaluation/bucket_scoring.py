"""Scoring (caption, image) pairs bucket by bucket: every pair of a bucket has the same caption
length t and the same region count r, so no pair carries padding.

The joint input [regions ; text] of each pair is exactly r + t real tokens: no padding work, and
attention runs without a mask. What does not depend on the pair is computed once:
- the embeddings of every region and every token (`pair_scoring.PairEmbedder.embed_*`);
- the first interaction layer's query, key and value projections of every region and every token
  (a linear map per token, so projecting before joining equals projecting after);
- in the last extraction layer of each stream only token 0 is computed, the one its pooler reads.
The scores equal `InterBertForPretraining.itm_score` on the same pairs up to float rounding.

Precision: "exact" runs the model as it is; "bf16" runs a bfloat16 copy of its weights (the
matmuls run about 4x fp32 on CPUs with AVX512-BF16), with LayerNorm and softmax statistics
accumulated in float32 by PyTorch's kernels and the scores returned as float32. It can change
ranks where two scores differ by less than bf16 rounding; `benchmarks/retrieval_eval.py` counts
how many.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from interbert.evaluation.pair_scoring import Embedded
from interbert.modeling.heads import ITM_MATCHED

PRECISIONS = {"exact": None, "bf16": torch.bfloat16}


def length_groups(lengths: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """(length, rows of that length) for every length present, shortest first."""
    values = lengths.cpu().numpy()
    return [(int(length), torch.from_numpy(np.flatnonzero(values == length))) for length in np.unique(values)]


def first_row_of_stack(stack, hidden: torch.Tensor) -> torch.Tensor:
    """A stream's extraction stack over unpadded B×L×H inputs, token 0 of its last layer: B×H."""
    if len(stack.layer) == 0:
        return hidden[:, 0]
    for layer in stack.layer[:-1]:
        hidden = layer(hidden, None)
    return stack.layer[-1](hidden, None, first_row_only=True)[:, 0]


def model_in_precision(model, precision: str):
    """The model to score with: itself for "exact", a bfloat16 copy for "bf16"."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    return model if dtype is None else copy.deepcopy(model).to(dtype)


class BucketScorer:
    """Match probabilities of pairs whose captions share one length and images one region count.

    model: an InterBertForPretraining in evaluation mode (`model_in_precision`); texts, images: the
    Embedded captions and images (`PairEmbedder.embed_*`), cast once to the model's dtype, with the
    first interaction layer's projections of every row computed once."""

    def __init__(self, model, texts: Embedded, images: Embedded):
        self.model = model
        self.dtype = next(model.parameters()).dtype
        self.backbone = self.model.interbert
        self.texts, self.images = texts, images
        with torch.inference_mode():
            weight, bias = self.backbone.interaction.layer[0].attention.self.fused_projection()
            self.text_hidden, self.image_hidden = texts.hidden.to(self.dtype), images.hidden.to(self.dtype)
            self.text_qkv = F.linear(self.text_hidden, weight, bias)
            self.image_qkv = F.linear(self.image_hidden, weight, bias)

    @property
    def device(self) -> torch.device:
        return self.text_hidden.device

    @torch.inference_mode()
    def score_grid(self, text_rows: torch.Tensor, image_rows: torch.Tensor) -> torch.Tensor:
        """len(text_rows)×len(image_rows) float32 scores of every combination; all text_rows
        of one length, all image_rows of one region count."""
        t, r = self._bucket(text_rows, image_rows)
        grid = (text_rows.numel(), image_rows.numel())
        hidden = self._joint_grid(self.image_hidden, self.text_hidden, text_rows, image_rows, t, r)
        qkv = self._joint_grid(self.image_qkv, self.text_qkv, text_rows, image_rows, t, r)
        return self._score_joint(hidden, qkv, r).view(grid)

    @torch.inference_mode()
    def score_pairs(self, text_rows: torch.Tensor, image_rows: torch.Tensor) -> torch.Tensor:
        """P float32 scores of the pairs (text_rows[p], image_rows[p]), all of one bucket."""
        t, r = self._bucket(text_rows, image_rows)
        text_rows, image_rows = text_rows.to(self.device), image_rows.to(self.device)
        hidden = torch.cat([self.image_hidden[image_rows, :r], self.text_hidden[text_rows, :t]], dim=1)
        qkv = torch.cat([self.image_qkv[image_rows, :r], self.text_qkv[text_rows, :t]], dim=1)
        return self._score_joint(hidden, qkv, r)

    def _bucket(self, text_rows: torch.Tensor, image_rows: torch.Tensor) -> tuple[int, int]:
        """(t, r) shared by the rows; a ValueError names the lengths if they differ."""
        text_lengths = self.texts.lengths.cpu()[text_rows].unique()
        image_lengths = self.images.lengths.cpu()[image_rows].unique()
        if text_lengths.numel() != 1 or image_lengths.numel() != 1:
            raise ValueError(f"a bucket needs one caption length and one region count, got caption lengths "
                             f"{text_lengths.tolist()} and region counts {image_lengths.tolist()}")
        return int(text_lengths), int(image_lengths)

    def _joint_grid(self, image_part, text_part, text_rows, image_rows, t: int, r: int) -> torch.Tensor:
        """(T·I)×(r+t)×W: each image's rows then each caption's rows, written once by broadcasting."""
        text_rows, image_rows = text_rows.to(self.device), image_rows.to(self.device)
        width = image_part.shape[-1]
        joint = torch.empty(text_rows.numel(), image_rows.numel(), r + t, width, dtype=self.dtype, device=self.device)
        joint[:, :, :r] = image_part[image_rows, :r][None]
        joint[:, :, r:] = text_part[text_rows, :t][:, None]
        return joint.view(-1, r + t, width)

    def _score_joint(self, hidden: torch.Tensor, qkv: torch.Tensor, r: int) -> torch.Tensor:
        """hidden: P×(r+t)×H embedded [regions ; text]; qkv: its first-layer projections."""
        backbone = self.backbone
        first, *rest = backbone.interaction.layer
        hidden = first(hidden, None, qkv)
        for layer in rest:
            hidden = layer(hidden, None)
        image_first = first_row_of_stack(backbone.image_extraction, hidden[:, :r].contiguous())
        text_first = first_row_of_stack(backbone.text_extraction, hidden[:, r:].contiguous())
        logits = self.model.itm_head(backbone.text_pooler(text_first[:, None]),
                                     backbone.image_pooler(image_first[:, None]))
        return logits.float().softmax(-1)[:, ITM_MATCHED].cpu()
