"""One image's detector arrays → a ``RegionRecord`` in the store's label convention.

Every converter ends here. Labels are stored in the detector's class space with the background
at 0 (``store.metadata.LABEL_CONVENTION``; 1601 classes for the Visual Genome detector):

- ``objects_id`` as the public extractors write it (bottom-up-attention, LXMERT, ViLBERT, MILVLG:
  ``argmax(cls_prob[:, 1:])``, 0-based without the background) is stored as ``objects_id + 1``;
  ``objects_id_base=1`` keeps ids that already count the background;
- else the argmax of ``cls_prob`` over classes 1.. (``cls_prob`` has the background column);
- else -1 (no class: the region is never an MRM target).

Confidences: ``objects_conf`` if present, else the probability of the stored label in
``cls_prob``, else none (regions are then kept in stored order).
"""
from __future__ import annotations

import base64
import binascii
import sys

import numpy as np

from interbert.data.store.record_format import RegionRecord
from interbert.errors import UserError


class ConversionError(UserError, ValueError):
    """Detector output cannot be converted; the message names the file, line or key and the image."""


def detections_to_record(image_id: str, width, height, boxes: np.ndarray, features: np.ndarray,
                         cls_prob: np.ndarray | None = None, objects_id: np.ndarray | None = None,
                         objects_conf: np.ndarray | None = None, attrs_id: np.ndarray | None = None,
                         attrs_conf: np.ndarray | None = None, objects_id_base: int = 0) -> RegionRecord:
    """One image's detector arrays (N×4 boxes, N×F features, optional N×C ``cls_prob`` with the
    background column, N ``objects_id`` / ``objects_conf``, N×k attributes) → RegionRecord."""
    n = boxes.shape[0]
    labels = confidences = None
    if objects_id is not None:
        labels = objects_id.reshape(-1).astype(np.int64) + (1 - objects_id_base)
    elif cls_prob is not None and cls_prob.shape[1] > 1:
        labels = cls_prob[:, 1:].argmax(axis=1) + 1
    if objects_conf is not None:
        confidences = objects_conf.reshape(-1)
    elif cls_prob is not None and labels is not None and labels.shape[0] == n and n:
        inside = (labels >= 0) & (labels < cls_prob.shape[1])
        confidences = np.where(inside, cls_prob[np.arange(n), np.clip(labels, 0, cls_prob.shape[1] - 1)], 0.0)
    if labels is None:
        labels = np.full(n, -1)
    extras = {}
    if attrs_id is not None:
        extras["attr_labels"] = attrs_id.reshape(n, -1)
    if attrs_conf is not None:
        extras["attr_confidences"] = attrs_conf.reshape(n, -1)
    return RegionRecord(image_id=str(image_id), width=float(width), height=float(height), features=features,
                        boxes=boxes, labels=labels, confidences=confidences, class_probs=cls_prob, extras=extras)


def place_text(where) -> str:
    """``where`` as text: a string, or a function giving one. Converters pass functions where naming
    the place costs work (counting a line number), so that only an error pays for it."""
    return where() if callable(where) else str(where)


def decode_base64(text, where) -> bytes:
    """Strict base64 → bytes: any character outside the alphabet is an error naming ``where``
    (see ``place_text``)."""
    try:
        if sys.version_info >= (3, 11):
            return binascii.a2b_base64(text, strict_mode=True)
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ConversionError(f"{place_text(where)}: not valid base64 ({error}); the file is damaged or not of this "
                              "layout") from None


def array_from_bytes(raw: bytes, dtype, rows: int | None, where, columns: int | None = None) -> np.ndarray:
    """``raw`` as a ``rows``×k array of ``dtype`` (k = ``columns`` when given, else from the length);
    ``where`` as for ``decode_base64``."""
    itemsize = np.dtype(dtype).itemsize
    count = len(raw) // itemsize
    if len(raw) % itemsize or (rows and count % rows) or (columns is not None and count != (rows or 0) * columns):
        expected = f"{rows}×{columns}" if columns is not None else f"a multiple of {rows}"
        raise ConversionError(f"{place_text(where)}: {len(raw)} bytes are not {expected} {np.dtype(dtype).name} values "
                              "(num_boxes or the feature size disagrees with the arrays)")
    if not rows:
        return np.zeros((0, columns or 0), dtype)
    return np.frombuffer(raw, dtype=dtype).reshape(rows, -1)
