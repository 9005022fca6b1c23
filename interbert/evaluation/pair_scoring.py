"""Scoring many (caption, image) pairs with the ITM head, computing each part once.

InterBERT's interaction module attends over [regions ; text] jointly, so every pair needs its
own pass through the transformer stacks; what does not depend on the pair is computed once:
- region embeddings (the 2048→H projection of every region, its location, LayerNorm) once per
  image, and text embeddings once per caption;
- only the first row of the last extraction layer of each stream is computed, because the ITM
  head reads nothing else (the poolers take token 0);
- pairs are formed from captions sorted by length and images sorted by region count, and each
  block is cut to its own longest caption and image, so little attention is spent on padding.
The scores equal `InterBertForPretraining.itm_score` on the same pairs (up to float rounding).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from interbert.modeling import InterBertForPretraining
from interbert.modeling.heads import ITM_MATCHED


@dataclass
class Embedded:
    """Embedded inputs of one modality, padded: hidden N×L×H, mask N×L bool, lengths N."""

    hidden: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor


def _first_row_of_last_layer(stack, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Run a TransformerStack but compute only token 0 in its last layer: B×H."""
    if len(stack.layer) == 0:
        return hidden[:, 0]
    for layer in stack.layer[:-1]:
        hidden = layer(hidden, mask)
    last = stack.layer[-1]
    attention = last.attention.self
    batch, length, width = hidden.shape
    heads, size = attention.num_heads, attention.head_size
    query = attention.query(hidden[:, :1]).view(batch, 1, heads, size).transpose(1, 2)
    key = attention.key(hidden).view(batch, length, heads, size).transpose(1, 2)
    value = attention.value(hidden).view(batch, length, heads, size).transpose(1, 2)
    mixed = F.scaled_dot_product_attention(query, key, value, attn_mask=mask[:, None, None, :])
    mixed = mixed.transpose(1, 2).reshape(batch, 1, width)
    attended = last.attention.output(mixed, hidden[:, :1])
    return last.output(last.intermediate(attended), attended)[:, 0]


class PairScorer:
    """Match probabilities of pairs, for a model in evaluation mode (no dropout)."""

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

    @torch.inference_mode()
    def score_pairs(self, texts: Embedded, text_rows: torch.Tensor, images: Embedded,
                    image_rows: torch.Tensor) -> torch.Tensor:
        """P float32 scores of the pairs (text_rows[p], image_rows[p]) (rows of the Embedded)."""
        text_rows, image_rows = text_rows.to(self.device), image_rows.to(self.device)
        t = int(texts.lengths[text_rows].max())
        r = int(images.lengths[image_rows].max())
        hidden = torch.cat([images.hidden[image_rows, :r], texts.hidden[text_rows, :t]], dim=1)
        mask = torch.cat([images.mask[image_rows, :r], texts.mask[text_rows, :t]], dim=1)
        return self._score_joint(hidden, mask, r)

    @torch.inference_mode()
    def score_grid(self, texts: Embedded, text_rows: torch.Tensor, images: Embedded,
                   image_rows: torch.Tensor) -> torch.Tensor:
        """len(text_rows)×len(image_rows) scores of every combination. The joint input is written
        once, by broadcasting each image's and each caption's rows into one buffer."""
        text_rows, image_rows = text_rows.to(self.device), image_rows.to(self.device)
        t = int(texts.lengths[text_rows].max())
        r = int(images.lengths[image_rows].max())
        num_texts, num_images = text_rows.numel(), image_rows.numel()
        width = images.hidden.shape[-1]
        hidden = torch.empty(num_texts, num_images, r + t, width, dtype=images.hidden.dtype, device=self.device)
        hidden[:, :, :r] = images.hidden[image_rows, :r][None]
        hidden[:, :, r:] = texts.hidden[text_rows, :t][:, None]
        mask = torch.empty(num_texts, num_images, r + t, dtype=torch.bool, device=self.device)
        mask[:, :, :r] = images.mask[image_rows, :r][None]
        mask[:, :, r:] = texts.mask[text_rows, :t][:, None]
        scores = self._score_joint(hidden.view(-1, r + t, width), mask.view(-1, r + t), r)
        return scores.view(num_texts, num_images)

    def _score_joint(self, hidden: torch.Tensor, mask: torch.Tensor, r: int) -> torch.Tensor:
        """hidden: P×(r+t)×H embedded [regions ; text], mask P×(r+t). Returns P float32 scores."""
        backbone = self.backbone
        joint = backbone.interaction(hidden, mask)
        image_first = _first_row_of_last_layer(backbone.image_extraction, joint[:, :r], mask[:, :r])
        text_first = _first_row_of_last_layer(backbone.text_extraction, joint[:, r:], mask[:, r:])
        pooled_image = backbone.image_pooler(image_first[:, None])
        pooled_text = backbone.text_pooler(text_first[:, None])
        logits = self.model.itm_head(pooled_text, pooled_image)
        return logits.float().softmax(-1)[:, ITM_MATCHED].cpu()


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
