"""Image-text matching (paper §2.3): half the pairs get a caption of another image."""
from __future__ import annotations

import numpy as np


class CaptionsByImage:
    """Captions grouped by image, so that a caption of another image is one lookup, not a search.

    caption_image: (K,) image index of every caption. ``order`` lists the captions image by
    image; image i's captions are ``order[first[i]:first[i] + count[i]]``.
    """

    def __init__(self, caption_image: np.ndarray):
        self.caption_image = caption_image
        self.order = np.argsort(caption_image, kind="stable")
        self.count = np.bincount(caption_image)
        self.first = np.cumsum(self.count) - self.count


def draw_itm_captions(indices: np.ndarray, groups: CaptionsByImage, u_negative: np.ndarray, u_caption: np.ndarray,
                      negative_prob: float = 0.5) -> tuple:
    """Which caption to pair with the image of each caption in ``indices`` (B,), and the ITM label.

    Sample b is a mismatched pair when u_negative[b] < negative_prob; its caption is then drawn
    uniformly (by u_caption[b] in [0, 1)) from the captions of every other image, which needs at
    least two images. Returns (caption indices (B,) int64, labels (B,) int64: 1 matched, 0 not).
    """
    negative = u_negative < negative_prob
    captions = np.array(indices, dtype=np.int64)
    rows = np.flatnonzero(negative)
    image = groups.caption_image[captions[rows]]
    rank = (u_caption[rows] * (groups.order.size - groups.count[image])).astype(np.int64)
    # Ranks from the image's own first caption on skip its captions.
    captions[rows] = groups.order[rank + np.where(rank >= groups.first[image], groups.count[image], 0)]
    return captions, (~negative).astype(np.int64)
