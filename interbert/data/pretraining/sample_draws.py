"""Counter-based random draws: sample i's uniforms are a pure function of (seed, epoch, i), so a
sample is the same in any batch, worker or resumed run, and a whole batch's draws are a few array
operations. ``draw_layout`` says which of a sample's draws each task uses."""
from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # SplitMix64's increment, 2^64 / golden ratio


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function: a bijection of uint64 arrays that scatters every input bit."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def sample_uniforms(seed: int, epoch: int, indices: np.ndarray, count: int) -> np.ndarray:
    """B×count float64 uniforms in [0, 1), row b a pure function of (seed, epoch, indices[b]).

    Each sample's key hashes the triple (``_mix64`` is a bijection, so distinct epochs, and
    distinct indices within an epoch, give distinct keys); its draws are the SplitMix64 stream
    from that key (a generator that passes BigCrush), 53 bits per value as numpy's ``random()``.
    """
    def word(value) -> np.ndarray:
        return np.asarray(value, dtype=np.int64).astype(np.uint64)  # two's complement for negatives

    key = _mix64(_mix64(_mix64(word([seed]) + _GOLDEN) ^ word(epoch)) ^ word(indices))
    steps = np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN
    return (_mix64(key[:, None] + steps) >> np.uint64(11)) * 2.0 ** -53


def draw_layout(max_text_len: int, max_regions: int) -> dict:
    """Where each task's uniforms sit among a sample's draws: name → slice (one per caption,
    per piece/word up to ``max_text_len``, or per region up to ``max_regions``)."""
    sizes = {"itm_negative": 1, "itm_caption": 1, "text_select": max_text_len, "text_fallback": 1,
             "text_extra": max_text_len, "text_replace": max_text_len, "text_token": max_text_len,
             "regions": max_regions}
    layout, start = {}, 0
    for name, size in sizes.items():
        layout[name] = slice(start, start + size)
        start += size
    return layout
