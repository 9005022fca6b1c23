"""A batch of tokenised captions, padded to the longest, taken straight from the corpus's flat arrays
(``TokenizedCaptions``): what pretraining and retrieval feed the text stream."""
from __future__ import annotations

import numpy as np

from interbert.batch_contract import PAD_ID
from interbert.data.text.tokenization import SPECIAL_WORD, TokenizedCaptions


def caption_batch(captions: TokenizedCaptions, indices: np.ndarray) -> tuple:
    """Captions ``indices`` (B,) padded to the longest: ids B×T int64 (``PAD_ID`` after each
    caption's end), word_ids B×T int64 (-1 at [CLS], [SEP] and padding), lengths (B,)."""
    begin = captions.offsets[indices]
    lengths = captions.offsets[np.asarray(indices) + 1] - begin
    inside = np.arange(int(lengths.max())) < lengths[:, None]
    positions = np.where(inside, begin[:, None] + np.arange(inside.shape[1]), 0)
    ids = np.where(inside, captions.ids[positions], PAD_ID).astype(np.int64)
    word_ids = np.where(inside, captions.word_ids[positions], SPECIAL_WORD).astype(np.int64)
    return ids, word_ids, lengths
