"""Masked segment modeling (paper §2.3), and the MLM baseline of Table 2, on a whole batch.

MSM: every word is an anchor with probability 0.1; an anchor and the next 0, 1 or 2 words
(uniform) are masked; a caption that draws no anchor gets one, chosen uniformly. Words (BERT's
pre-tokenised words), not word pieces, are the unit: every piece of a masked word is masked.
MLM: every word piece is masked independently with probability 0.15 (at least one per caption).
Masked pieces become [MASK] 80%, a random token 10%, unchanged 10%. [CLS], [SEP] and padding
(word index -1) are never masked.

Every function takes its random draws as uniforms in [0, 1) (one per caption, word or piece,
batch first) and is otherwise deterministic; ``floor(u·n)`` picks uniformly among n (u < 1, so
it stays below n).
"""
from __future__ import annotations

import numpy as np

from interbert.batch_contract import IGNORE_INDEX


def draw_segments(num_words: np.ndarray, u_anchor: np.ndarray, u_fallback: np.ndarray, u_extra: np.ndarray,
                  anchor_prob: float = 0.1, max_extra_words: int = 2) -> tuple:
    """Span anchors and lengths for B captions of ``num_words`` (B,) words each.

    u_anchor, u_extra: B×W (W ≥ every caption's word count); u_fallback: (B,). Returns anchors
    (B×W bool: word w of caption b starts a span) and extra (B×W int64 in 0..max_extra_words:
    how many following words that span adds; read only where anchors is set).
    """
    anchors = (u_anchor < anchor_prob) & (np.arange(u_anchor.shape[1]) < num_words[:, None])
    none = np.flatnonzero(~anchors.any(axis=1))
    anchors[none, (u_fallback[none] * num_words[none]).astype(np.int64)] = True
    return anchors, (u_extra * (max_extra_words + 1)).astype(np.int64)


def segment_word_mask(anchors: np.ndarray, extra: np.ndarray, num_words: np.ndarray) -> np.ndarray:
    """B×W bool: the words covered by spans ``[anchor, anchor + extra]``, cut at each caption's end."""
    b, w = anchors.shape
    rows, starts = np.nonzero(anchors)
    ends = np.minimum(starts + extra[rows, starts] + 1, num_words[rows])
    flat = rows * (w + 1)
    edges = (np.bincount(flat + starts, minlength=b * (w + 1))
             - np.bincount(flat + ends, minlength=b * (w + 1))).reshape(b, w + 1)
    return np.cumsum(edges[:, :-1], axis=1) > 0


def segment_mask(word_ids: np.ndarray, u_anchor: np.ndarray, u_fallback: np.ndarray, u_extra: np.ndarray,
                 anchor_prob: float = 0.1, max_extra_words: int = 2) -> np.ndarray:
    """MSM's choice of pieces: word_ids B×T (-1 at [CLS]/[SEP]/padding); u_anchor, u_extra B×T;
    u_fallback (B,). Returns B×T bool, every piece of the spanned words."""
    num_words = word_ids.max(axis=1).astype(np.int64) + 1
    anchors, extra = draw_segments(num_words, u_anchor, u_fallback, u_extra, anchor_prob, max_extra_words)
    words = segment_word_mask(anchors, extra, num_words)
    return (word_ids >= 0) & np.take_along_axis(words, np.maximum(word_ids, 0).astype(np.int64), axis=1)


def token_mask(word_ids: np.ndarray, u_token: np.ndarray, u_fallback: np.ndarray,
               token_prob: float = 0.15) -> np.ndarray:
    """The MLM baseline's choice: each real piece (word index ≥ 0) with ``token_prob``; a caption
    that draws none gets one, chosen uniformly by u_fallback. word_ids, u_token B×T → B×T bool."""
    real = word_ids >= 0
    chosen = real & (u_token < token_prob)
    none = np.flatnonzero(~chosen.any(axis=1))
    rank = (u_fallback[none] * real[none].sum(axis=1)).astype(np.int64)
    chosen[none, np.argmax(np.cumsum(real[none], axis=1) > rank[:, None], axis=1)] = True
    return chosen


def replace_masked(input_ids: np.ndarray, masked: np.ndarray, u_replace: np.ndarray, u_token: np.ndarray,
                   mask_id: int, random_pool: np.ndarray, mask_token_prob: float = 0.8,
                   random_token_prob: float = 0.1) -> tuple:
    """Apply 80/10/10 replacement at the ``masked`` (B×T bool) pieces of ``input_ids`` (B×T).

    u_replace decides [MASK] / random / unchanged, u_token which id of ``random_pool`` (both
    B×T). Returns inputs and labels, B×T int64 (the original id where masked, -100 elsewhere).
    """
    labels = np.where(masked, input_ids, IGNORE_INDEX)
    to_mask = masked & (u_replace < mask_token_prob)
    to_random = masked & (u_replace >= mask_token_prob) & (u_replace < mask_token_prob + random_token_prob)
    random_ids = random_pool[(u_token * random_pool.size).astype(np.int64)]
    inputs = np.where(to_mask, mask_id, np.where(to_random, random_ids, input_ids))
    return inputs.astype(np.int64, copy=False), labels.astype(np.int64, copy=False)
