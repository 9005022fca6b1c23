"""Post-LN BERT layers and stacks of them.

Module names follow BERT's (`attention.self.query`, `intermediate.dense`, `output.LayerNorm`,
...) so that BERT checkpoints load by name.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from interbert.config import StreamConfig
from interbert.modeling.attention import SelfAttentionScores
from interbert.modeling.layer_norm import layer_norm


class ResidualOutput(nn.Module):
    """dense -> dropout -> residual add -> LayerNorm (post-LN)."""

    def __init__(self, in_size: int, hidden_size: int, dropout: float, eps: float):
        super().__init__()
        self.dense = nn.Linear(in_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.LayerNorm = layer_norm(hidden_size, eps)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class Attention(nn.Module):
    def __init__(self, hidden_size: int, stream: StreamConfig, eps: float, implementation: str):
        super().__init__()
        self.self = SelfAttentionScores(hidden_size, stream, implementation)
        self.output = ResidualOutput(hidden_size, hidden_size, stream.hidden_dropout_prob, eps)

    def forward(self, hidden: torch.Tensor, key_mask: torch.Tensor | None, qkv: torch.Tensor | None = None,
                first_row_only: bool = False) -> torch.Tensor:
        residual = hidden[:, :1] if first_row_only else hidden
        return self.output(self.self(hidden, key_mask, qkv, first_row_only), residual)


class Intermediate(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, intermediate_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(hidden))  # exact (erf) GELU, as BERT


class TransformerLayer(nn.Module):
    """x = LN(x + MHSA(x)); x = LN(x + FFN(x))  (the paper's eq. 1-4)."""

    def __init__(self, hidden_size: int, stream: StreamConfig, eps: float, implementation: str):
        super().__init__()
        self.attention = Attention(hidden_size, stream, eps, implementation)
        self.intermediate = Intermediate(hidden_size, stream.intermediate_size)
        self.output = ResidualOutput(stream.intermediate_size, hidden_size,
                                     stream.hidden_dropout_prob, eps)

    def forward(self, hidden: torch.Tensor, key_mask: torch.Tensor | None, qkv: torch.Tensor | None = None,
                first_row_only: bool = False) -> torch.Tensor:
        """hidden: B×T×H; key_mask: B×T bool (None: no padding); qkv: the attention's fused projections
        of `hidden` if already computed; first_row_only: compute token 0 only (B×1×H), all a pooler
        reads. The one place this layer's math lives (training, inference and bucket scoring)."""
        attended = self.attention(hidden, key_mask, qkv, first_row_only)
        return self.output(self.intermediate(attended), attended)


class TransformerStack(nn.Module):
    """`num_layers` layers of one stream; `layer.N` as in BERT's encoder."""

    def __init__(self, hidden_size: int, stream: StreamConfig, eps: float, implementation: str):
        super().__init__()
        self.layer = nn.ModuleList(
            TransformerLayer(hidden_size, stream, eps, implementation)
            for _ in range(stream.num_layers)
        )

    def forward(self, hidden: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """hidden: B×T×H, key_mask: B×T bool (true = real). Returns B×T×H."""
        for layer in self.layer:
            hidden = layer(hidden, key_mask)
        return hidden
