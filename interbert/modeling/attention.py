"""Multi-head self-attention with a boolean key-padding mask.

Two paths compute the same function: `sdpa` (torch's scaled_dot_product_attention, which
picks flash / memory-efficient kernels where it can) and `eager` (the textbook softmax, kept
so tests can prove the two agree). Masks are booleans, never additive -10000 constants, so
half precision cannot overflow.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from interbert.config import StreamConfig


class SelfAttentionScores(nn.Module):
    """Q, K, V projections and the attention mixing (BERT's `attention.self`)."""

    def __init__(self, hidden_size: int, stream: StreamConfig, implementation: str):
        super().__init__()
        self.num_heads = stream.num_attention_heads
        self.head_size = hidden_size // stream.num_attention_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.dropout_prob = stream.attention_probs_dropout_prob
        self.implementation = implementation

    def _heads(self, projected: torch.Tensor) -> torch.Tensor:
        batch, length, _ = projected.shape
        return projected.view(batch, length, self.num_heads, self.head_size).transpose(1, 2)

    def fused_projection(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The query, key and value projections as one map (3H×H weight, 3H bias): `F.linear` with
        it gives the `qkv` that `forward` takes (projecting before joining two inputs equals
        projecting after, which the bucket scorer uses)."""
        projections = (self.query, self.key, self.value)
        return torch.cat([p.weight for p in projections]), torch.cat([p.bias for p in projections])

    def forward(self, hidden: torch.Tensor, key_mask: torch.Tensor | None, qkv: torch.Tensor | None = None,
                first_row_only: bool = False) -> torch.Tensor:
        """hidden: B×T×H; key_mask: B×T bool, true for real positions, or None when nothing is padding;
        qkv: the fused projections of `hidden` (B×T×3H) if already computed; first_row_only: attend
        from token 0 only. Returns B×T×H (B×1×H with first_row_only)."""
        if qkv is None:
            query, key, value = (p(hidden) for p in (self.query, self.key, self.value))
        else:
            query, key, value = qkv.chunk(3, dim=-1)
        if first_row_only:
            query = query[:, :1]
        query, key, value = (self._heads(p) for p in (query, key, value))
        allowed = None if key_mask is None else key_mask[:, None, None, :]  # B×1×1×T over heads and queries
        dropout = self.dropout_prob if self.training else 0.0
        if self.implementation == "sdpa":
            mixed = F.scaled_dot_product_attention(query, key, value, attn_mask=allowed,
                                                   dropout_p=dropout)
        else:
            mixed = eager_attention(query, key, value, allowed, dropout)
        batch, _, length, _ = mixed.shape
        return mixed.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_size)


def eager_attention(query, key, value, allowed: torch.Tensor | None, dropout: float) -> torch.Tensor:
    """softmax(QKᵀ/√d, masked) V with the mask as a boolean fill (B×heads×T×d in and out)."""
    scores = query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1])
    if allowed is not None:
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    probs = F.dropout(scores.softmax(dim=-1), p=dropout)
    return probs @ value
