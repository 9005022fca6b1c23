"""The checks of one record against its store's metadata: the same ones guard the writers (a record
with problems is not written) and ``interbert data verify``."""
from __future__ import annotations

import numpy as np

from interbert.data.store.metadata import StoreMetadata
from interbert.data.store.record_format import RegionRecord


def record_problems(record: RegionRecord, metadata: StoreMetadata, box_tolerance: float = 1.0) -> list:
    """What is wrong with ``record`` under ``metadata``: a list of ``(problem, detail)`` pairs.

    The same checks guard the writers (a record with problems is not written) and ``verify``.
    """
    problems = []
    n = record.num_regions
    if not (np.isfinite(record.width) and np.isfinite(record.height)) or record.width <= 0 or record.height <= 0:
        problems.append(("bad image size", f"width {record.width}, height {record.height}"))
    if n == 0:
        problems.append(("no regions", "the detector output has zero boxes"))
        return problems
    if record.features.shape[1] != metadata.feature_size:
        problems.append(("wrong feature size", f"{record.features.shape[1]} values per region, "
                                               f"the store holds {metadata.feature_size}"))
    for name, array in record.arrays().items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            problems.append((f"non-finite {name}", f"{int((~np.isfinite(array)).sum())} NaN/Inf values"))
    boxes = record.boxes.astype(np.float64)
    if np.isfinite(boxes).all():
        degenerate = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        if degenerate.any():
            problems.append(("zero-area box", f"{int(degenerate.sum())} boxes with x2<=x1 or y2<=y1"))
        outside = ((boxes[:, :2] < -box_tolerance).any(1) | (boxes[:, 2] > record.width + box_tolerance)
                   | (boxes[:, 3] > record.height + box_tolerance))
        if outside.any():
            problems.append(("box outside image", f"{int(outside.sum())} boxes beyond the "
                                                  f"{record.width:g}x{record.height:g} image"))
    if record.class_probs is not None and record.class_probs.shape[1] != metadata.num_classes:
        problems.append(("wrong class count", f"class distribution over {record.class_probs.shape[1]} "
                                              f"classes, the store holds {metadata.num_classes}"))
    if record.labels is not None and ((record.labels < -1) | (record.labels >= metadata.num_classes)).any():
        problems.append(("label out of range", f"labels outside -1..{metadata.num_classes - 1}"))
    elif record.labels is not None and record.class_probs is not None and record.class_probs.shape[1] > 1:
        disagree = label_disagreements(record.labels, record.class_probs)
        if disagree:
            problems.append(("labels disagree with class distribution",
                             f"{disagree} of {n} labels are not the most likely non-background class"))
    return problems


def label_disagreements(labels: np.ndarray, class_probs: np.ndarray) -> int:
    """How many labels (background at 0, -1 = none) are not an argmax of ``class_probs[:, 1:]``.

    Exact in float16: rounding keeps order, so a true argmax stays one after the cast.
    """
    given = labels >= 0
    if not given.any():
        return 0
    rows = np.flatnonzero(given)
    best = class_probs[rows, 1:].max(axis=1)
    chosen = class_probs[rows, labels[rows]]
    return int(((chosen < best) | (labels[rows] == 0)).sum())
