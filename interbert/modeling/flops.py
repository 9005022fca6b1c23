"""Useful work per pretraining batch: the model's training FLOPs, real tokens only (MFU's numerator).

One training pass (forward + backward) of a stack of L post-LN layers of width h over T real
tokens costs 72·h²·L·T (the dense products: 4h² attention projections + 8h² feed-forward
weights, 2 FLOP per multiply-add, ×3 for forward and backward) + 12·L·h·T² (attention scores
and mixing). InterBERT has three stacks, each with its own T:
  interaction       T = real regions + real text tokens (one joint sequence)
  text extraction   T = real text tokens
  image extraction  T = real regions
Heads count 6 FLOP per weight per row they really see: region embeddings on every real
region, poolers once per pair, the MSM head on masked words only, the MRM head on masked
regions only. Padding is never counted (docs/training.md, "FLOPs and MFU").
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from interbert.batch_contract import IGNORE_INDEX
from interbert.config import InterBertConfig, StreamConfig


def stack_flops(stream: StreamConfig, hidden: int, tokens: torch.Tensor) -> float:
    """Training FLOPs of one stack over per-sample real token counts `tokens` (B,)."""
    tokens = tokens.double()
    layers = stream.num_layers
    dense = 72.0 * hidden * hidden * layers * tokens.sum()
    attention = 12.0 * layers * hidden * (tokens * tokens).sum()
    return float(dense + attention)


def head_flops(config: InterBertConfig, regions: torch.Tensor, masked_words: int,
               masked_regions: int, pairs: int) -> float:
    h = config.hidden_size
    region_embedding = (config.region_feature_size + config.region_location_size) * h
    msm = h * h + h * config.vocab_size  # transform + tied decoder
    mrm = h * h + h * config.num_region_classes
    poolers_and_itm = 2 * h * config.pooled_size + 2 * config.pooled_size * 2
    weights_times_rows = (region_embedding * float(regions.sum()) + msm * masked_words
                          + mrm * masked_regions + poolers_and_itm * pairs)
    return 6.0 * weights_times_rows


@dataclass
class BatchFlops:
    layers: float
    heads: float

    @property
    def total(self) -> float:
        return self.layers + self.heads


def batch_flops(config: InterBertConfig, batch: dict) -> BatchFlops:
    """FLOPs of one training pass over `batch` (the keys of docs/design.md), real tokens only."""
    text = batch["text_mask"].bool().sum(dim=1)
    regions = batch["region_mask"].bool().sum(dim=1)
    h = config.hidden_size
    layers = (stack_flops(config.interaction, h, text + regions)
              + stack_flops(config.text_extraction, h, text)
              + stack_flops(config.image_extraction, h, regions))
    masked_words = int((batch["msm_labels"] != IGNORE_INDEX).sum()) if "msm_labels" in batch else 0
    masked_regions = int((batch["mrm_labels"] != IGNORE_INDEX).sum()) if "mrm_labels" in batch else 0
    heads = head_flops(config, regions, masked_words, masked_regions, int(text.numel()))
    return BatchFlops(layers, heads)


def sample_flops(config: InterBertConfig, text_tokens: int, regions: int) -> BatchFlops:
    """FLOPs of one pair with the given real lengths and the default masking rates
    (about 15% of words and 10% of regions masked): for tables and estimates."""
    h = config.hidden_size
    one = lambda n: torch.tensor([n])  # noqa: E731
    layers = (stack_flops(config.interaction, h, one(text_tokens + regions))
              + stack_flops(config.text_extraction, h, one(text_tokens))
              + stack_flops(config.image_extraction, h, one(regions)))
    heads = head_flops(config, one(regions), round(0.15 * text_tokens), round(0.1 * regions), 1)
    return BatchFlops(layers, heads)
