"""Padding ragged texts and region sets into the batch tensors of docs/design.md: the one set of
helpers behind fine-tuning's collate functions, retrieval evaluation and hard-negative mining.
(Pretraining builds its batches whole from the store's flat arrays: `text.caption_batch`
and `regions.pack_regions`.)"""
from __future__ import annotations

import numpy as np
import torch

from interbert.batch_contract import PAD_ID


def pad_texts(texts: list, length: int | None = None) -> dict:
    """texts: list of (ids, segments) int arrays → input_ids, token_type_ids, text_mask (N×T)."""
    length = length or max(len(ids) for ids, _ in texts)
    input_ids = np.full((len(texts), length), PAD_ID, dtype=np.int64)
    segments = np.zeros((len(texts), length), dtype=np.int64)
    mask = np.zeros((len(texts), length), dtype=bool)
    for row, (ids, segs) in enumerate(texts):
        input_ids[row, :len(ids)], segments[row, :len(ids)], mask[row, :len(ids)] = ids, segs, True
    return {"input_ids": torch.from_numpy(input_ids), "token_type_ids": torch.from_numpy(segments),
            "text_mask": torch.from_numpy(mask)}


def pad_regions(images: list, length: int | None = None) -> dict:
    """images: list of (features (n+1)×F, locations (n+1)×5) → region tensors, padded to
    ``length`` rows (default: the longest): region_features N×R×F float16, region_locations
    N×R×5 float32, region_mask N×R bool."""
    length = length or max(f.shape[0] for f, _ in images)
    size = images[0][0].shape[1]
    features = np.zeros((len(images), length, size), dtype=np.float16)
    locations = np.zeros((len(images), length, 5), dtype=np.float32)
    mask = np.zeros((len(images), length), dtype=bool)
    for row, (f, loc) in enumerate(images):
        features[row, :len(f)], locations[row, :len(f)], mask[row, :len(f)] = f, loc, True
    return {"region_features": torch.from_numpy(features), "region_locations": torch.from_numpy(locations),
            "region_mask": torch.from_numpy(mask)}
