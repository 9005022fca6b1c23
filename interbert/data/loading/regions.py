"""Region geometry and region batches: which detector regions to keep, their 5-d locations, their
overlaps, and the padded float16 arrays a batch carries (the global image token at row 0).

Region features cross the DataLoader's process boundary and the host-to-device copy as float16,
the dtype they are stored in; the model casts them to its weights' dtype on the device
(``RegionEmbeddings.forward``). Only the global token, the mean of an image's features, is
rounded to float16 here (a relative error under 1e-3).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

# The global image token covers the whole image.
GLOBAL_LOCATION = np.array([0.0, 0.0, 1.0, 1.0, 1.0], dtype=np.float32)
FEATURE_DTYPE = torch.float16


def select_regions(confidences: np.ndarray | None, num_regions: int, max_regions: int) -> np.ndarray | None:
    """Indices of the ``max_regions`` most confident regions (descending), or None to keep all
    ``num_regions`` in stored order. Without confidences the first ``max_regions`` are kept."""
    if num_regions <= max_regions:
        return None
    if confidences is None:
        return np.arange(max_regions)
    return np.argsort(-confidences, kind="stable")[:max_regions]


def region_locations(boxes: np.ndarray, width, height, out: np.ndarray | None = None) -> np.ndarray:
    """...×N×4 pixel boxes → ...×N×5 ``[x1/w, y1/h, x2/w, y2/h, area/(w·h)]`` (float32).

    width, height: scalars, or arrays of the leading shape (one image size per row of a batch).
    """
    if out is None:
        out = np.empty(boxes.shape[:-1] + (5,), dtype=np.float32)
    size = np.stack(np.broadcast_arrays(width, height, width, height), axis=-1).astype(np.float32)
    np.divide(boxes, size[..., None, :], out=out[..., :4])
    out[..., 4] = (out[..., 2] - out[..., 0]) * (out[..., 3] - out[..., 1])
    return out


def box_iou(boxes: np.ndarray, others: np.ndarray | None = None) -> np.ndarray:
    """Intersection-over-union of every box of ...×M×4 ``boxes`` with every box of ...×N×4
    ``others`` (default: ``boxes`` itself) → ...×M×N; 0 where the union is empty, so all-zero
    padding boxes overlap nothing."""
    a = boxes.astype(np.float32, copy=False)
    b = a if others is None else others.astype(np.float32, copy=False)
    x1, y1, x2, y2 = (a[..., :, None, i] for i in range(4))
    u1, v1, u2, v2 = (b[..., None, :, i] for i in range(4))
    inter = (np.clip(np.minimum(x2, u2) - np.maximum(x1, u1), 0, None)
             * np.clip(np.minimum(y2, v2) - np.maximum(y1, v1), 0, None))
    union = (np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
             + np.clip(u2 - u1, 0, None) * np.clip(v2 - v1, 0, None) - inter)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def batch_tensor(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor for a batch; inside a DataLoader worker it is allocated in shared
    memory, so the batch reaches the main process without another copy (as torch's own collate)."""
    tensor = torch.empty(shape, dtype=dtype)
    return tensor.share_memory_() if torch.utils.data.get_worker_info() is not None else tensor


@dataclass
class RegionBatch:
    """The kept regions of B images, padded to R = the most kept regions in the batch + 1.

    features: B×R×F float16 tensor, row 0 zero until ``fill_global_token``, padding rows zero;
    locations: B×R×5 float32 tensor, row 0 ``GLOBAL_LOCATION``; mask: B×R bool tensor;
    counts: (B,) regions kept per image (the global token not counted);
    boxes: B×(R-1)×4 float32 pixels and labels: B×(R-1) int64 detector classes (-1: none, or
    padding) of the kept regions, numpy; selections: per image, the kept indices into its
    record (None: all, in stored order).
    """

    features: torch.Tensor
    locations: torch.Tensor
    mask: torch.Tensor
    counts: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    selections: list


def pack_regions(records: Sequence, max_regions: int, allocate: Callable = batch_tensor) -> RegionBatch:
    """Pack ``RegionRecord``s into one ``RegionBatch``: at most ``max_regions`` regions per image,
    the most confident first (``select_regions``), features copied once, straight from the
    records' float16 bytes into the batch array; ``allocate(shape, dtype)`` provides the arrays
    (features, locations, mask)."""
    selections = [select_regions(r.confidences, r.num_regions, max_regions) for r in records]
    counts = np.array([r.num_regions if s is None else s.size for r, s in zip(records, selections)], dtype=np.int64)
    b, n = len(records), int(counts.max(initial=0))
    features = allocate((b, n + 1, records[0].features.shape[1]), FEATURE_DTYPE)
    locations = allocate((b, n + 1, 5), torch.float32)
    mask = allocate((b, n + 1), torch.bool)
    boxes = np.zeros((b, n, 4), dtype=np.float32)
    labels = np.full((b, n), -1, dtype=np.int64)
    size = np.empty((b, 2), dtype=np.float32)
    rows = features.numpy()
    rows[:, 0] = 0
    for row, (record, kept, count) in enumerate(zip(records, selections, counts)):
        if kept is None:
            rows[row, 1:count + 1] = record.features
            boxes[row, :count] = record.boxes
        else:
            np.take(record.features, kept, axis=0, out=rows[row, 1:count + 1], mode="clip")
            boxes[row, :count] = record.boxes[kept]
        if record.labels is not None:
            labels[row, :count] = record.labels if kept is None else record.labels[kept]
        rows[row, count + 1:] = 0
        size[row] = record.width, record.height
    where = locations.numpy()
    where[:, 0] = GLOBAL_LOCATION
    region_locations(boxes, size[:, 0], size[:, 1], out=where[:, 1:])
    mask.numpy()[:] = np.arange(n + 1) <= counts[:, None]
    return RegionBatch(features, locations, mask, counts, boxes, labels, selections)


def image_inputs(record, max_regions: int) -> tuple:
    """One image's region inputs with a slot for the global token at row 0.

    record: a ``RegionRecord``. Returns ``(features, locations, selection)``: features (n+1)×F
    float16 (row 0 zero until ``fill_global_token``), locations (n+1)×5 float32 (row 0 =
    ``GLOBAL_LOCATION``), and the indices of the kept regions in the record (None = all, in order),
    where n = min(N, max_regions).
    """
    packed = pack_regions([record], max_regions)
    return packed.features[0].numpy(), packed.locations[0].numpy(), packed.selections[0]


def fill_global_token(features, counts=None) -> None:
    """Set row 0 of ...×(n+1)×F ``features`` (numpy or torch, float16 or float32) to the mean of
    the ``counts`` real rows after it, as they are fed (after masking); rows past them must be
    zero. counts: (...) regions per image; None: all n rows are real."""
    rows = torch.as_tensor(features)
    real = rows[..., 1:, :]
    # torch sums float16 in float32 and rounds the sum once (5x faster than asking for a float32 sum).
    total = real.sum(-2).float()
    if not torch.isfinite(total.sum()):  # a float16 sum past 65504: sum again in float32
        total = real.float().sum(-2)
    count = torch.as_tensor(real.shape[-2] if counts is None else counts, dtype=torch.float32)
    rows[..., 0, :] = total.div_(count.clamp(min=1)[..., None])
