"""The pretraining heads: masked segment modeling (MSM), masked region modeling (MRM) and
image-text matching (ITM), paper §2.3."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from interbert.batch_contract import ITM_MATCHED  # noqa: F401 (the heads' class order; re-exported)
from interbert.config import InterBertConfig
from interbert.modeling.layer_norm import layer_norm


class PredictionTransform(nn.Module):
    """Linear -> GELU -> LayerNorm, the shared first half of BERT-style prediction heads."""

    def __init__(self, config: InterBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = layer_norm(config.hidden_size, config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(hidden)))


class MsmHead(nn.Module):
    """Vocabulary logits for the masked words. The decoder is the word-embedding matrix
    itself (passed in at call time, so the tie survives any checkpoint format) plus a bias."""

    def __init__(self, config: InterBertConfig):
        super().__init__()
        self.transform = PredictionTransform(config)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, masked_hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        """masked_hidden: N×H (masked positions only), word_embeddings: V×H. Returns N×V."""
        return F.linear(self.transform(masked_hidden), word_embeddings, self.bias)


class MrmHead(nn.Module):
    """Detector-class logits (1601 Visual Genome classes) for the masked regions."""

    def __init__(self, config: InterBertConfig):
        super().__init__()
        self.transform = PredictionTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.num_region_classes)

    def forward(self, masked_hidden: torch.Tensor) -> torch.Tensor:
        """masked_hidden: N×H. Returns N×C."""
        return self.decoder(self.transform(masked_hidden))


class ItmHead(nn.Module):
    """2-way logits from dropout(pooled_text ⊙ pooled_image); class 1 means matched."""

    def __init__(self, config: InterBertConfig):
        super().__init__()
        self.dropout = nn.Dropout(config.itm_dropout_prob)
        self.classifier = nn.Linear(config.pooled_size, 2)

    def forward(self, pooled_text: torch.Tensor, pooled_image: torch.Tensor) -> torch.Tensor:
        """pooled_text, pooled_image: B×P. Returns B×2."""
        return self.classifier(self.dropout(pooled_text * pooled_image))
