"""Detector output → feature store: bottom-up-attention TSV files and folders of ``.npz`` files.

TSV (``convert_tsv``): tab-separated, no quoting, one image per row. Columns, unless the first
row is a header naming them: ``image_id, image_w, image_h, num_boxes, boxes, features`` then,
by column count, ``cls_prob`` (7 columns), ``objects_id, objects_conf, attrs_id, attrs_conf``
(10), or ``cls_prob, objects_id, objects_conf, attrs_id, attrs_conf`` (11). LXMERT's order is
``columns="lxmert"``. Array columns are base64 of raw little-endian arrays: boxes, features,
cls_prob, confidences float32; ids int64 or int32 (told apart by byte count).
Aliases: ``img_id``→image_id, ``img_w``→image_w, ``img_h``→image_h.

npz (``convert_npz``): one file per image, the image id is the file name without ``.npz``.
Accepted key names (first match wins): see ``NPZ_KEYS``. Pickled (object) arrays are refused.

Labels: ``objects_id`` if present, else the argmax of ``cls_prob`` over classes 1.. (0 is the
background), else -1 (no class: the region is never an MRM target). Confidences: ``objects_conf``
if present, else that max of ``cls_prob``, else absent (regions are then kept in stored order).
"""
from __future__ import annotations

import base64
import binascii
import csv
import os
import sys
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
from tqdm import tqdm

from interbert.data.feature_store import FeatureStoreError, FeatureStoreWriter
from interbert.data.record_format import RegionRecord

TSV_BASE = ["image_id", "image_w", "image_h", "num_boxes", "boxes", "features"]
TSV_DETECTIONS = ["objects_id", "objects_conf", "attrs_id", "attrs_conf"]
TSV_COLUMNS_BY_COUNT = {6: TSV_BASE, 7: TSV_BASE + ["cls_prob"], 10: TSV_BASE + TSV_DETECTIONS,
                        11: TSV_BASE + ["cls_prob"] + TSV_DETECTIONS}
TSV_PRESETS = {"bottom-up": TSV_BASE,
               "lxmert": ["image_id", "image_h", "image_w", "objects_id", "objects_conf", "attrs_id",
                          "attrs_conf", "num_boxes", "boxes", "features"]}
TSV_ALIASES = {"img_id": "image_id", "img_w": "image_w", "img_h": "image_h"}
NPZ_KEYS = {
    "features": ("features", "x", "feat", "feats", "image_feat"),
    "boxes": ("boxes", "bbox", "bboxes", "box", "image_bboxes"),
    "width": ("image_w", "w", "width", "image_width"),
    "height": ("image_h", "h", "height", "image_height"),
    "cls_prob": ("cls_prob", "class_probs", "cls_probs"),
    "objects_id": ("objects_id", "objects", "labels", "classes"),
    "objects_conf": ("objects_conf", "scores", "confidences", "conf"),
    "attrs_id": ("attrs_id", "attr_labels"),
    "attrs_conf": ("attrs_conf", "attr_confidences"),
}


class ConversionError(ValueError):
    """Detector output cannot be converted; the message names the file, line and image."""


def detections_to_record(image_id: str, width, height, boxes: np.ndarray, features: np.ndarray,
                         cls_prob: Optional[np.ndarray] = None, objects_id: Optional[np.ndarray] = None,
                         objects_conf: Optional[np.ndarray] = None, attrs_id: Optional[np.ndarray] = None,
                         attrs_conf: Optional[np.ndarray] = None) -> RegionRecord:
    """One image's detector arrays (N×4 boxes, N×F features, ...) → RegionRecord (labels as documented)."""
    labels = confidences = None
    if objects_id is not None:
        labels = objects_id.reshape(-1)
    elif cls_prob is not None and cls_prob.shape[1] > 1:
        labels = cls_prob[:, 1:].argmax(axis=1) + 1
    if objects_conf is not None:
        confidences = objects_conf.reshape(-1)
    elif cls_prob is not None and labels is not None:
        confidences = cls_prob[np.arange(len(labels)), labels]
    if labels is None:
        labels = np.full(boxes.shape[0], -1)
    extras = {}
    if attrs_id is not None:
        extras["attr_labels"] = attrs_id.reshape(boxes.shape[0], -1)
    if attrs_conf is not None:
        extras["attr_confidences"] = attrs_conf.reshape(boxes.shape[0], -1)
    return RegionRecord(image_id=str(image_id), width=float(width), height=float(height), features=features,
                        boxes=boxes, labels=labels, confidences=confidences, class_probs=cls_prob, extras=extras)


def _decode_b64(text: str, column: str, num_boxes: int, where: str, width: Optional[int] = None) -> np.ndarray:
    try:
        raw = base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError) as error:
        raise ConversionError(f"{where}: column {column} is not valid base64 ({error})") from None
    if column in ("objects_id", "attrs_id"):  # one id per box: 8 bytes each is int64, else int32
        dtype = np.int64 if len(raw) == 8 * num_boxes else np.int32
    else:
        dtype = np.float32
    itemsize = np.dtype(dtype).itemsize
    if len(raw) % itemsize or (num_boxes and (len(raw) // itemsize) % num_boxes):
        raise ConversionError(f"{where}: column {column} holds {len(raw)} bytes, not a whole number of "
                              f"{np.dtype(dtype).name} values per each of {num_boxes} boxes")
    return np.frombuffer(raw, dtype=dtype).reshape(num_boxes, -1) if num_boxes else np.zeros((0, width or 0), dtype)


def _tsv_columns(first_row: list, columns: Optional[str], where: str) -> tuple:
    """(column names, whether the first row is a header)."""
    if columns:
        names = TSV_PRESETS.get(columns) or [c.strip() for c in columns.split(",")]
        return [TSV_ALIASES.get(n, n) for n in names], False
    if first_row and first_row[0] in ("image_id", "img_id"):
        return [TSV_ALIASES.get(n, n) for n in first_row], True
    names = TSV_COLUMNS_BY_COUNT.get(len(first_row))
    if names is None:
        raise ConversionError(f"{where}: {len(first_row)} columns, which matches no known bottom-up-attention "
                              f"layout ({sorted(TSV_COLUMNS_BY_COUNT)} columns); pass --columns "
                              "image_id,image_w,... to name them")
    return names, False


def read_tsv(path: str | os.PathLike, feature_size: int, columns: Optional[str] = None) -> Iterable[tuple]:
    """``(source "file:line", RegionRecord)`` for every row of a bottom-up-attention TSV file."""
    csv.field_size_limit(min(sys.maxsize, 2 ** 31 - 1))  # a row holds megabytes of base64
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        names = None
        for line_number, row in enumerate(reader, 1):
            where = f"{path}:{line_number}"
            if names is None:
                names, is_header = _tsv_columns(row, columns, where)
                missing = [c for c in TSV_BASE if c not in names]
                if missing:
                    raise ConversionError(f"{where}: columns {missing} are missing from {names}")
                if is_header:
                    continue
            if not row:
                continue
            if len(row) != len(names):
                raise ConversionError(f"{where}: {len(row)} columns, expected {len(names)} ({', '.join(names)}); "
                                      "the line is truncated or the file mixes layouts")
            fields = dict(zip(names, row))
            where = f"{where} (image {fields['image_id']!r})"
            try:
                num_boxes = int(fields["num_boxes"])
                width, height = float(fields["image_w"]), float(fields["image_h"])
            except ValueError as error:
                raise ConversionError(f"{where}: num_boxes/image_w/image_h are not numbers ({error})") from None
            arrays = {c: _decode_b64(fields[c], c, num_boxes, where, feature_size if c == "features" else 4)
                      for c in ("boxes", "features", "cls_prob", *TSV_DETECTIONS)
                      if c in ("boxes", "features") or fields.get(c)}
            if arrays["boxes"].shape[1] != 4:
                raise ConversionError(f"{where}: boxes hold {arrays['boxes'].shape[1]} values per box, expected 4")
            yield where, detections_to_record(fields["image_id"], width, height, **arrays)


def _npz_get(data, field: str, path: Path, required: bool = True):
    for key in NPZ_KEYS[field]:
        if key in data.files:
            try:
                return data[key]
            except ValueError:
                raise ConversionError(f"{path}: array {key!r} is a pickled object; pickle is refused (it can run "
                                      "code): resave the file with plain numeric arrays") from None
    if required:
        raise ConversionError(f"{path}: no {field} array (looked for {', '.join(NPZ_KEYS[field])}; the file has "
                              f"{', '.join(data.files)})")
    return None


def read_npz(path: Path) -> RegionRecord:
    """One per-image ``.npz`` file → RegionRecord (image id = file name without ``.npz``)."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ConversionError(f"{path}: not a readable .npz file ({error})") from None
    with data:
        features = np.asarray(_npz_get(data, "features", path))
        boxes = np.asarray(_npz_get(data, "boxes", path)).reshape(-1, 4)
        width, height = _npz_get(data, "width", path), _npz_get(data, "height", path)
        optional = {name: _npz_get(data, name, path, required=False)
                    for name in ("cls_prob", "objects_id", "objects_conf", "attrs_id", "attrs_conf")}
    if features.ndim != 2 or features.shape[0] != boxes.shape[0]:
        raise ConversionError(f"{path}: features {features.shape} and boxes {boxes.shape} do not describe the "
                              "same N regions (expected N×F and N×4)")
    return detections_to_record(path.stem, float(np.asarray(width).reshape(-1)[0]),
                                float(np.asarray(height).reshape(-1)[0]), boxes, features,
                                **{k: v for k, v in optional.items() if v is not None})


def _write(records: Iterable[tuple], out: str, feature_size: int, num_classes: int, created_by: str,
           strict: bool, overwrite: bool, total: Optional[int], desc: str) -> FeatureStoreWriter:
    with FeatureStoreWriter(out, feature_size=feature_size, num_classes=num_classes, created_by=created_by,
                            strict=strict, overwrite=overwrite) as writer:
        for where, record in tqdm(records, total=total, desc=desc, unit="image"):
            try:
                writer.add(record, source=where)
            except FeatureStoreError as error:
                raise ConversionError(str(error)) from None
    return writer


def convert_tsv(paths: Iterable, out: str, feature_size: int = 2048, num_classes: int = 1601,
                columns: Optional[str] = None, strict: bool = False, overwrite: bool = False) -> FeatureStoreWriter:
    """Bottom-up-attention TSV files → a feature store at ``out``. Returns the writer (its
    ``metadata``, ``skipped`` and ``skip_examples`` describe the result)."""
    paths = [str(p) for p in paths]

    def records():
        for path in paths:
            yield from read_tsv(path, feature_size, columns)

    return _write(records(), out, feature_size, num_classes, "interbert data convert-tsv " + " ".join(paths),
                  strict, overwrite, None, "convert-tsv")


def convert_npz(folder: str | os.PathLike, out: str, feature_size: int = 2048, num_classes: int = 1601,
                strict: bool = False, overwrite: bool = False) -> FeatureStoreWriter:
    """A folder of per-image ``.npz`` files (searched recursively) → a feature store at ``out``."""
    files = sorted(Path(folder).rglob("*.npz"))
    if not files:
        raise ConversionError(f"{folder}: no .npz files found")
    return _write(((str(f), read_npz(f)) for f in files), out, feature_size, num_classes,
                  f"interbert data convert-npz {folder}", strict, overwrite, len(files), "convert-npz")
