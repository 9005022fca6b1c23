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

    def forward(self, hidden: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """hidden: B×T×H; key_mask: B×T bool, true for real positions. Returns B×T×H."""
        query, key, value = (self._heads(p(hidden)) for p in (self.query, self.key, self.value))
        allowed = key_mask[:, None, None, :]  # B×1×1×T, broadcast over heads and queries
        dropout = self.dropout_prob if self.training else 0.0
        if self.implementation == "sdpa":
            mixed = F.scaled_dot_product_attention(query, key, value, attn_mask=allowed,
                                                   dropout_p=dropout)
        else:
            mixed = eager_attention(query, key, value, allowed, dropout)
        batch, _, length, _ = mixed.shape
        return mixed.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_size)


def eager_attention(query, key, value, allowed: torch.Tensor, dropout: float) -> torch.Tensor:
    """softmax(QKᵀ/√d, masked) V with the mask as a boolean fill (B×heads×T×d in and out)."""
    scores = query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1])
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    probs = F.dropout(scores.softmax(dim=-1), p=dropout)
    return probs @ value
