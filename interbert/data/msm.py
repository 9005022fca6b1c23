"""Masked segment modeling (paper §2.3), and the MLM baseline of Table 2.

MSM: every word is an anchor with probability 0.1; an anchor and the next 0, 1 or 2 words
(uniform) are masked; a caption that draws no anchor gets one, chosen uniformly. Words (BERT's
pre-tokenised words), not word pieces, are the unit: every piece of a masked word is masked.
MLM: every word piece is masked independently with probability 0.15 (at least one per caption).
Masked pieces become [MASK] 80%, a random token 10%, unchanged 10%. [CLS], [SEP] and padding
(word index -1, or absent) are never masked.
"""
from __future__ import annotations

import numpy as np

IGNORE_INDEX = -100


def draw_segments(num_words: int, rng: np.random.Generator, anchor_prob: float = 0.1,
                  max_extra_words: int = 2) -> tuple:
    """Anchor word indices (K,) and how many following words each span adds (K,), in 0..max_extra_words."""
    anchors = np.flatnonzero(rng.random(num_words) < anchor_prob)
    if anchors.size == 0:
        anchors = rng.integers(num_words, size=1)
    extra = rng.integers(0, max_extra_words + 1, size=anchors.size)
    return anchors, extra


def segment_word_mask(num_words: int, anchors: np.ndarray, extra: np.ndarray) -> np.ndarray:
    """Bool (num_words,): the words covered by spans ``[anchor, anchor + extra]`` (cut at the end)."""
    edges = np.zeros(num_words + 1, dtype=np.int32)
    np.add.at(edges, anchors, 1)
    np.add.at(edges, np.minimum(anchors + extra + 1, num_words), -1)
    return np.cumsum(edges[:-1]) > 0


def replace_masked(input_ids: np.ndarray, masked: np.ndarray, rng: np.random.Generator, mask_id: int,
                   random_pool: np.ndarray, mask_token_prob: float = 0.8,
                   random_token_prob: float = 0.1) -> tuple:
    """Apply 80/10/10 replacement at ``masked`` positions.

    input_ids: (T,) original ids; masked: bool (T,). Returns (T,) int64 inputs and (T,) int64
    labels (original id where masked, -100 elsewhere).
    """
    inputs = input_ids.astype(np.int64)
    labels = np.full(inputs.shape, IGNORE_INDEX, dtype=np.int64)
    positions = np.flatnonzero(masked)
    labels[positions] = inputs[positions]
    draw = rng.random(positions.size)
    to_mask = draw < mask_token_prob
    inputs[positions[to_mask]] = mask_id
    to_random = (draw >= mask_token_prob) & (draw < mask_token_prob + random_token_prob)
    if to_random.any():
        inputs[positions[to_random]] = random_pool[rng.integers(random_pool.size, size=int(to_random.sum()))]
    return inputs, labels


def mask_segments(input_ids: np.ndarray, word_ids: np.ndarray, rng: np.random.Generator, mask_id: int,
                  random_pool: np.ndarray, anchor_prob: float = 0.1, max_extra_words: int = 2,
                  mask_token_prob: float = 0.8, random_token_prob: float = 0.1) -> tuple:
    """MSM on one caption. input_ids, word_ids: (T,) with word index -1 at [CLS]/[SEP].

    Returns (inputs (T,) int64, msm_labels (T,) int64).
    """
    num_words = int(word_ids.max()) + 1
    anchors, extra = draw_segments(num_words, rng, anchor_prob, max_extra_words)
    words = segment_word_mask(num_words, anchors, extra)
    masked = (word_ids >= 0) & words[word_ids]  # word_ids == -1 indexes the last word; the >= 0 test drops it
    return replace_masked(input_ids, masked, rng, mask_id, random_pool, mask_token_prob, random_token_prob)


def mask_tokens_mlm(input_ids: np.ndarray, word_ids: np.ndarray, rng: np.random.Generator, mask_id: int,
                    random_pool: np.ndarray, token_prob: float = 0.15, mask_token_prob: float = 0.8,
                    random_token_prob: float = 0.1) -> tuple:
    """The MLM baseline on one caption: each word piece masked with ``token_prob``. Same outputs as MSM."""
    real = np.flatnonzero(word_ids >= 0)
    masked = np.zeros(input_ids.shape, dtype=bool)
    chosen = real[rng.random(real.size) < token_prob]
    if chosen.size == 0:
        chosen = real[rng.integers(real.size, size=1)]
    masked[chosen] = True
    return replace_masked(input_ids, masked, rng, mask_id, random_pool, mask_token_prob, random_token_prob)
