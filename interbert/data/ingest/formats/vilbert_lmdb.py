"""ViLBERT / InterBERT-release image LMDB → feature store (``convert-lmdb --format vilbert``).

Layout (written by facebookresearch/vilbert-multi-task ``script/convert_to_lmdb.py`` and
jiasenlu/vilbert_beta ``script/convert_*_lmdb.py``, read by ``_image_features_reader.py`` of
vilbert-multi-task and of the InterBERT release): the record ``keys`` is a pickled list of the
image keys (``str(image_id).encode()``); each image's value is a pickled dict, either

- a ``csv.DictReader`` row of a bottom-up-attention TSV: ``image_id, image_w, image_h, num_boxes``
  as text, ``boxes`` and ``features`` (and ``cls_prob`` when the TSV had it) as base64 of float32;
- or numpy arrays from vilbert-multi-task's ``script/extract_features.py``: ``boxes`` N×4 and
  ``features`` N×F float32 (N = ``features.shape[0]``, as the reader takes it), numbers for
  ``image_h``/``image_w``, optionally ``cls_prob`` N×C with the background column.

The image id is the key. Labels: the argmax of ``cls_prob`` over the classes without the
background, +1 (background at 0), confidences its probability; without ``cls_prob``, -1. Every
pickle goes through ``safe_pickle``.
"""
from __future__ import annotations

import numpy as np

from interbert.data.ingest.conversion import ConversionOptions, ConversionResult, ConvertedImage, ensure_new_output
from interbert.data.ingest.detections import ConversionError, array_from_bytes, decode_base64, detections_to_record
from interbert.data.ingest.formats.safe_pickle import safe_loads
from interbert.data.ingest.formats.source_lmdb import (
    ParseKeys,
    as_count,
    as_number,
    convert_lmdb,
    key_text,
    listed_keys,
)

REQUIRED_FIELDS = ("image_w", "image_h", "boxes", "features")


def _field_array(value, name: str, rows: int | None, columns: int | None, where: str) -> np.ndarray:
    """A record's array field, base64 text (a TSV row's) or a numpy array, as rows×columns float32."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iuf":
            raise ConversionError(f"{where}: field {name} has dtype {value.dtype}, not numbers")
        array = value.astype(np.float32, copy=False)
        if columns and array.size % columns == 0:  # the reader takes boxes as reshape(-1, 4)
            array = array.reshape(-1, columns)
        if array.ndim != 2 or (columns and array.shape[1] != columns):
            raise ConversionError(f"{where}: field {name} has shape {value.shape}, expected N×{columns or 'F'}")
    elif isinstance(value, (str, bytes)):
        array = array_from_bytes(decode_base64(value, f"{where} field {name}"), np.float32, rows,
                                 f"{where} field {name}, num_boxes {rows}", columns)
    else:
        raise ConversionError(f"{where}: field {name} is a {type(value).__name__}, expected base64 text or a "
                              "numpy array")
    if rows is not None and array.shape[0] != rows:
        raise ConversionError(f"{where}: field {name} has {array.shape[0]} rows, the image has {rows} regions")
    return array


def vilbert_image(item, key: bytes, where: str) -> ConvertedImage:
    """One unpickled ViLBERT record (either layout above) → ConvertedImage."""
    if not isinstance(item, dict):
        raise ConversionError(f"{where}: the record is a {type(item).__name__}, expected a dict; the LMDB is not "
                              "of ViLBERT's layout (see --format)")
    missing = [name for name in REQUIRED_FIELDS if name not in item]
    if missing:
        raise ConversionError(f"{where}: the record lacks {', '.join(missing)} (it has {', '.join(map(str, item))})")
    if isinstance(item["features"], np.ndarray):
        rows = None
    else:
        rows = as_count(item.get("num_boxes"), "num_boxes", where)
    features = _field_array(item["features"], "features", rows, None, where)
    rows = features.shape[0]
    boxes = _field_array(item["boxes"], "boxes", rows, 4, where)
    cls_prob = item.get("cls_prob")
    if cls_prob is not None and not (isinstance(cls_prob, (str, bytes)) and not cls_prob):
        cls_prob = _field_array(cls_prob, "cls_prob", rows, None, where)
    else:
        cls_prob = None
    record = detections_to_record(key_text(key, where), as_number(item["image_w"], "image_w", where),
                                  as_number(item["image_h"], "image_h", where), boxes, features, cls_prob=cls_prob)
    return ConvertedImage(where, record)


def convert_vilbert_lmdb(path: str, options: ConversionOptions) -> ConversionResult:
    """A ViLBERT / InterBERT-release image LMDB → the store ``options.out``."""
    ensure_new_output(options)
    keys = listed_keys(path, b"keys", safe_loads)
    return convert_lmdb(path, keys, ParseKeys(path, safe_loads, vilbert_image), options,
                        f"interbert data convert-lmdb --format vilbert {path}", "convert-lmdb vilbert")
