"""Region geometry: which detector regions to keep, their 5-d locations, their overlaps."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

# The global image token covers the whole image.
GLOBAL_LOCATION = np.array([0.0, 0.0, 1.0, 1.0, 1.0], dtype=np.float32)


def select_regions(confidences: Optional[np.ndarray], num_regions: int, max_regions: int) -> Optional[np.ndarray]:
    """Indices of the ``max_regions`` most confident regions (descending), or None to keep all
    ``num_regions`` in stored order. Without confidences the first ``max_regions`` are kept."""
    if num_regions <= max_regions:
        return None
    if confidences is None:
        return np.arange(max_regions)
    return np.argsort(-confidences, kind="stable")[:max_regions]


def region_locations(boxes: np.ndarray, width: float, height: float, out: Optional[np.ndarray] = None) -> np.ndarray:
    """N×4 pixel boxes → N×5 ``[x1/w, y1/h, x2/w, y2/h, area/(w·h)]`` (float32)."""
    if out is None:
        out = np.empty((boxes.shape[0], 5), dtype=np.float32)
    scale = np.array([width, height, width, height], dtype=np.float32)
    np.divide(boxes, scale, out=out[:, :4])
    out[:, 4] = (out[:, 2] - out[:, 0]) * (out[:, 3] - out[:, 1])
    return out


def box_iou(boxes: np.ndarray) -> np.ndarray:
    """Pairwise intersection-over-union of N×4 boxes → N×N (0 where the union is empty)."""
    boxes = boxes.astype(np.float32, copy=False)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    iw = np.clip(np.minimum(x2[:, None], x2[None, :]) - np.maximum(x1[:, None], x1[None, :]), 0, None)
    ih = np.clip(np.minimum(y2[:, None], y2[None, :]) - np.maximum(y1[:, None], y1[None, :]), 0, None)
    inter = iw * ih
    union = area[:, None] + area[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def image_inputs(record, max_regions: int) -> tuple:
    """An image's region inputs with a slot for the global token at row 0.

    record: a ``RegionRecord``. Returns ``(features, locations, selection)``: features
    (n+1)×F float32 (row 0 zero until ``fill_global_token``), locations (n+1)×5 float32 (row 0 =
    ``GLOBAL_LOCATION``), and the indices of the kept regions in the record (None = all, in order),
    where n = min(N, max_regions).
    """
    selection = select_regions(record.confidences, record.num_regions, max_regions)
    boxes = record.boxes if selection is None else record.boxes[selection]
    n = boxes.shape[0]
    # A writable float16 copy of the kept rows (a plain memory copy), converted by torch: numpy's
    # float16 -> float32 cast is about ten times slower and dominated the per-sample cost.
    kept = np.take(record.features, np.arange(n) if selection is None else selection, axis=0)
    features = np.empty((n + 1, record.features.shape[1]), dtype=np.float32)
    features[0] = 0.0
    torch.from_numpy(features)[1:].copy_(torch.from_numpy(kept))
    locations = np.empty((n + 1, 5), dtype=np.float32)
    locations[0] = GLOBAL_LOCATION
    region_locations(boxes, record.width, record.height, out=locations[1:])
    return features, locations, selection


def fill_global_token(features: np.ndarray) -> None:
    """Set row 0 of (n+1)×F ``features`` to the mean of rows 1.. as they are fed (after masking)."""
    np.mean(features[1:], axis=0, out=features[0])


def pad_regions(images: list, length: int | None = None) -> dict:
    """images: list of (features (n+1)×F, locations (n+1)×5) → region tensors (N×R×...)."""
    length = length or max(f.shape[0] for f, _ in images)
    size = images[0][0].shape[1]
    features = np.zeros((len(images), length, size), dtype=np.float32)
    locations = np.zeros((len(images), length, 5), dtype=np.float32)
    mask = np.zeros((len(images), length), dtype=bool)
    for row, (f, loc) in enumerate(images):
        features[row, :len(f)], locations[row, :len(f)], mask[row, :len(f)] = f, loc, True
    return {"region_features": torch.from_numpy(features), "region_locations": torch.from_numpy(locations),
            "region_mask": torch.from_numpy(mask)}
