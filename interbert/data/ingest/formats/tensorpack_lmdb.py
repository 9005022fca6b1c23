"""The InterBERT release's Conceptual Captions LMDB → feature store + captions
(``convert-lmdb --format tensorpack``).

Layout: tensorpack's ``LMDBSerializer.save`` (tensorpack/tensorpack ``tensorpack/dataflow/serialize.py``)
puts each datapoint under ``'{:08}'.format(index)`` (``b'00000000'``, ``b'00000001'``, ...) and the
list of those keys under ``__keys__``, all packed by ``tensorpack/utils/serialize.py``'s ``dumps``:
``msgpack.dumps(obj, use_bin_type=True)`` with msgpack-numpy's hooks (tensorpack >= 0.9; InterBERT
pins 0.9.4; LMDBs written with ``TENSORPACK_SERIALIZE=pyarrow`` are not read). A datapoint is the
list ``[features, cls_prob, boxes, num_boxes, image_h, image_w, image_id, caption]``
(jiasenlu/vilbert_beta ``script/conceptual_caption_preprocess_sequential_train.py``, read by the
InterBERT release's ``bertmodel/datasets/concept_cap_dataset.py``): float32 arrays N×F, N×C (with
the background column) and N×4 in pixels; ``num_boxes``, ``image_h``, ``image_w``, ``image_id`` as
the csv text of the TSV they came from; the caption as text (pandas' ``read_csv`` of the Conceptual
Captions TSV, so an empty caption is the float NaN: such a datapoint gets no caption).

Labels: the argmax of ``cls_prob`` over the classes without the background, +1; confidences its
probability. Captions are returned with the images (written to a manifest by the command).
"""
from __future__ import annotations

from functools import partial

import numpy as np

from interbert.data.ingest.conversion import ConversionOptions, ConversionResult, ConvertedImage, ensure_new_output
from interbert.data.ingest.detections import ConversionError, detections_to_record
from interbert.data.ingest.formats.safe_msgpack import safe_unpackb
from interbert.data.ingest.formats.source_lmdb import ParseKeys, as_count, as_number, convert_lmdb, listed_keys

FIELDS = ("features", "cls_prob", "boxes", "num_boxes", "image_h", "image_w", "image_id", "caption")
LAYOUT = ("tensorpack's LMDBSerializer (msgpack, tensorpack >= 0.9; an LMDB written with "
          "TENSORPACK_SERIALIZE=pyarrow must be re-serialised with msgpack)")


def _array(value, name: str, rows: int, columns, where: str) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype.kind != "f" or value.ndim != 2:
        found = (f"a {value.dtype} array of shape {value.shape}" if isinstance(value, np.ndarray)
                 else type(value).__name__)
        raise ConversionError(f"{where}: {name} is {found}, expected a float array N×{columns or 'C'}")
    if value.shape[0] != rows or (columns and value.shape[1] != columns):
        raise ConversionError(f"{where}: {name} has shape {value.shape}, the datapoint says num_boxes {rows}")
    return value


def tensorpack_image(datapoint, key: bytes, where: str) -> ConvertedImage:
    """One decoded datapoint (the 8-field list above) → ConvertedImage with its caption (the image
    id is the datapoint's; ``key`` is only its index)."""
    if not isinstance(datapoint, list) or len(datapoint) != len(FIELDS):
        raise ConversionError(f"{where}: the datapoint is not the {len(FIELDS)}-field list [{', '.join(FIELDS)}] "
                              "of the InterBERT release's Conceptual Captions LMDB (see --format)")
    features, cls_prob, boxes, num_boxes, image_h, image_w, image_id, caption = datapoint
    rows = as_count(num_boxes, "num_boxes", where)
    features = _array(features, "features", rows, None, where)
    record = detections_to_record(str(image_id), as_number(image_w, "image_w", where),
                                  as_number(image_h, "image_h", where), _array(boxes, "boxes", rows, 4, where),
                                  features, cls_prob=_array(cls_prob, "cls_prob", rows, None, where))
    text = " ".join(caption.split()) if isinstance(caption, str) else ""
    return ConvertedImage(where, record, captions=(text,) if text else ())


def convert_tensorpack_lmdb(path: str, options: ConversionOptions) -> ConversionResult:
    """A tensorpack-serialised Conceptual Captions LMDB → the store ``options.out``; the result's
    ``captions`` hold ``(image_id, caption)`` of the images written."""
    ensure_new_output(options)
    decode = partial(safe_unpackb, layout=LAYOUT)
    keys = listed_keys(path, b"__keys__", decode)
    return convert_lmdb(path, keys, ParseKeys(path, decode, tensorpack_image), options,
                        f"interbert data convert-lmdb --format tensorpack {path}", "convert-lmdb tensorpack")
