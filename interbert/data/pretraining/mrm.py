"""Masked region modeling (paper §2.3), and the MOM baseline of Table 2, on a whole batch.

MRM: every real region is an anchor with probability 0.1; each anchor and every region whose IoU
with it exceeds 0.4 is masked, so that an overlapping copy of a masked object cannot leak it.
MOM: every region is masked independently with probability 0.15. Masked regions get zero
features; their targets are the detector's class (or class distribution). Unlike MSM, a sample
may draw no masked region. The global image token is handled by the caller and never masked.
Random draws come in as uniforms in [0, 1), one per region, batch first.
"""
from __future__ import annotations

import numpy as np

from interbert.data.loading.regions import box_iou


def overlap_group_mask(boxes: np.ndarray, anchors: np.ndarray, iou_threshold: float = 0.4) -> np.ndarray:
    """B×N bool: the anchors (B×N bool) and every region with IoU > threshold to an anchor of
    its own image. boxes: B×N×4 (padding rows all zero). Only the anchors' rows of the IoU
    matrices are computed (about a tenth of them)."""
    masked = anchors.copy()
    image, anchor = np.nonzero(anchors)
    iou = box_iou(boxes[image, anchor][:, None], boxes[image])[:, 0]  # anchors × N
    hit, region = np.nonzero(iou > iou_threshold)
    masked[image[hit], region] = True
    return masked


def mask_regions_mrm(boxes: np.ndarray, real: np.ndarray, u: np.ndarray, anchor_prob: float = 0.1,
                     iou_threshold: float = 0.4) -> np.ndarray:
    """MRM on B images' N×4 boxes (``real`` B×N marks regions that are not padding) → B×N bool."""
    anchors = (u < anchor_prob) & real
    return overlap_group_mask(boxes, anchors, iou_threshold) & real


def mask_regions_mom(real: np.ndarray, u: np.ndarray, region_prob: float = 0.15) -> np.ndarray:
    """The MOM baseline → B×N bool, each real region masked independently."""
    return (u < region_prob) & real
