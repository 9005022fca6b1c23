"""What pair scoring computes once rather than per pair: the embeddings of every image and
every caption (`PairEmbedder`), chunked over a corpus (`embed_in_chunks`), and how many pairs a
forward pass may hold (`pairs_per_batch`). The pairs themselves are scored by
`bucket_scoring.BucketScorer`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from interbert.modeling import InterBertForPretraining


@dataclass
class Embedded:
    """Embedded inputs of one modality, padded: hidden N×L×H, mask N×L bool, lengths N."""

    hidden: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor


class PairEmbedder:
    """Region and text embeddings of a model in evaluation mode (no dropout), in `dtype` on `device`."""

    def __init__(self, model: InterBertForPretraining, device: torch.device, dtype: torch.dtype):
        self.model = model
        self.backbone = model.interbert
        self.device, self.dtype = device, dtype

    def _to(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(self.device)
        return tensor.to(self.dtype) if tensor.is_floating_point() else tensor

    @torch.no_grad()
    def embed_images(self, image_batch: dict) -> Embedded:
        """image_batch: region_features N×R×F, region_locations N×R×5, region_mask N×R."""
        hidden = self.backbone.region_embeddings(self._to(image_batch["region_features"]),
                                                 self._to(image_batch["region_locations"]))
        mask = image_batch["region_mask"].to(self.device).bool()
        return Embedded(hidden, mask, mask.sum(1))

    @torch.no_grad()
    def embed_texts(self, text_batch: dict) -> Embedded:
        """text_batch: input_ids, token_type_ids, text_mask, all N×T."""
        hidden = self.backbone.embeddings(self._to(text_batch["input_ids"]), self._to(text_batch["token_type_ids"]))
        mask = text_batch["text_mask"].to(self.device).bool()
        return Embedded(hidden, mask, mask.sum(1))


def embed_in_chunks(embed, make_batch, indices, chunk: int = 256) -> Embedded:
    """Embed items `indices` chunk by chunk (make_batch(list) → input dict) into one Embedded,
    padded to the longest item, rows in the order of `indices`."""
    parts = [embed(make_batch(indices[start:start + chunk])) for start in range(0, len(indices), chunk)]
    length = max(p.hidden.shape[1] for p in parts)
    hidden = torch.cat([F.pad(p.hidden, (0, 0, 0, length - p.hidden.shape[1])) for p in parts])
    mask = torch.cat([F.pad(p.mask, (0, length - p.mask.shape[1])) for p in parts])
    return Embedded(hidden, mask, mask.sum(1))


def pairs_per_batch(config, tokens_per_pair: int, budget_bytes: int, element_bytes: int = 4,
                    low: int = 16, high: int = 4096) -> int:
    """Pairs per forward pass whose transient activations fit `budget_bytes`: per pair and layer
    about L·(6H + FFN) values plus heads·L² attention scores (no gradients are kept)."""
    widest = max(config.interaction.intermediate_size, config.text_extraction.intermediate_size,
                 config.image_extraction.intermediate_size)
    heads = max(config.interaction.num_attention_heads, 1)
    per_pair = tokens_per_pair * (6 * config.hidden_size + widest) + heads * tokens_per_pair ** 2
    per_pair *= element_bytes * 2  # input and output of the widest op alive together
    return int(min(high, max(low, budget_bytes // max(per_pair, 1))))
