"""Text embeddings (BERT's) and region embeddings (the paper's §2.2)."""
from __future__ import annotations

import torch
from torch import nn

from interbert.config import InterBertConfig
from interbert.modeling.layer_norm import layer_norm


class TextEmbeddings(nn.Module):
    """word + position + segment embeddings, LayerNorm, dropout (names as BERT's)."""

    def __init__(self, config: InterBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = layer_norm(config.hidden_size, config.layer_norm_eps)
        self.dropout = nn.Dropout(config.embedding_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        """input_ids, token_type_ids: B×T long. Returns B×T×H."""
        length = input_ids.shape[1]
        if length > self.position_embeddings.num_embeddings:
            raise ValueError(
                f"text of {length} tokens is longer than max_position_embeddings "
                f"{self.position_embeddings.num_embeddings}; truncate the captions"
            )
        positions = torch.arange(length, device=input_ids.device)
        embedded = (self.word_embeddings(input_ids) + self.position_embeddings(positions)[None]
                    + self.token_type_embeddings(token_type_ids))
        return self.dropout(self.LayerNorm(embedded))


class RegionEmbeddings(nn.Module):
    """LayerNorm(W_f·feature + W_l·location), dropout. No position or segment embedding on
    regions, as in the released model."""

    def __init__(self, config: InterBertConfig):
        super().__init__()
        self.feature_projection = nn.Linear(config.region_feature_size, config.hidden_size)
        self.location_projection = nn.Linear(config.region_location_size, config.hidden_size)
        self.LayerNorm = layer_norm(config.hidden_size, config.layer_norm_eps)
        self.dropout = nn.Dropout(config.embedding_dropout_prob)

    def forward(self, region_features: torch.Tensor, region_locations: torch.Tensor) -> torch.Tensor:
        """region_features: B×R×F, region_locations: B×R×5. Returns B×R×H."""
        features = region_features.to(self.feature_projection.weight.dtype)
        locations = region_locations.to(self.location_projection.weight.dtype)
        embedded = self.feature_projection(features) + self.location_projection(locations)
        return self.dropout(self.LayerNorm(embedded))
