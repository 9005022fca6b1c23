"""Image-text matching (paper §2.3): half the pairs get a caption of another image."""
from __future__ import annotations

import numpy as np


def draw_itm_caption(caption_index: int, caption_image: np.ndarray, rng: np.random.Generator,
                     negative_prob: float = 0.5) -> tuple:
    """Which caption to pair with the image of ``caption_index``, and the ITM label.

    caption_image: (num_captions,) image index of every caption (at least two distinct images).
    Returns (caption index, 1 if it belongs to the image else 0).
    """
    if rng.random() >= negative_prob:
        return caption_index, 1
    image = caption_image[caption_index]
    num_captions = caption_image.shape[0]
    for _ in range(32):
        other = int(rng.integers(num_captions))
        if caption_image[other] != image:
            return other, 0
    # Almost every caption shares this image: take the first caption of another image after a random point.
    start = int(rng.integers(num_captions))
    candidates = np.flatnonzero(np.roll(caption_image, -start) != image)
    return int((candidates[0] + start) % num_captions), 0
