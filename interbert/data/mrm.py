"""Masked region modeling (paper §2.3), and the MOM baseline of Table 2.

MRM: every real region is an anchor with probability 0.1; each anchor and every region whose IoU
with it exceeds 0.4 is masked, so that an overlapping copy of a masked object cannot leak it.
MOM: every region is masked independently with probability 0.15. Masked regions get zero
features; their targets are the detector's class (or class distribution). Unlike MSM, a sample
may draw no masked region. The global image token is handled by the caller and never masked.
"""
from __future__ import annotations

import numpy as np

from interbert.data.regions import box_iou


def overlap_group_mask(boxes: np.ndarray, anchors: np.ndarray, iou_threshold: float = 0.4) -> np.ndarray:
    """Bool (N,): the anchors (bool (N,)) and every region with IoU > threshold to one of them."""
    if not anchors.any():
        return anchors.copy()
    iou = box_iou(boxes)
    return anchors | (iou[anchors] > iou_threshold).any(axis=0)


def mask_regions_mrm(boxes: np.ndarray, rng: np.random.Generator, anchor_prob: float = 0.1,
                     iou_threshold: float = 0.4) -> np.ndarray:
    """MRM on one image's N×4 boxes → bool (N,) masked regions."""
    anchors = rng.random(boxes.shape[0]) < anchor_prob
    return overlap_group_mask(boxes, anchors, iou_threshold)


def mask_regions_mom(num_regions: int, rng: np.random.Generator, region_prob: float = 0.15) -> np.ndarray:
    """The MOM baseline → bool (N,), each region masked independently."""
    return rng.random(num_regions) < region_prob
