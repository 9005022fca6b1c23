"""VinVL / Oscar+ feature TSV (+ predictions TSV, labelmap) → feature store (``convert-vinvl``).

Features (microsoft/Oscar ``oscar/datasets/oscar_tsv.py`` reads them): one image per row, either
``image_id \\t num_boxes \\t base64`` (Oscar+ pretraining, VinVL's released ``features.tsv``) or
``image_id \\t {"num_boxes": N, "features": base64}`` (Oscar's ``run_captioning.py``
``*.feature.tsv``); the base64 holds N×(2048 + 6) float32: the region feature, then x1/w, y1/h,
x2/w, y2/h, (x2-x1)/w, (y2-y1)/h. Beside it ``NAME.lineidx`` (``os.path.splitext(tsv)[0]``, as
``oscar/utils/tsv_file.py`` and microsoft/scene_graph_benchmark's ``tsv_writer`` name it): one
byte offset per row, as text. Without it the TSV is scanned.

Predictions (``image_id \\t JSON``): ``{"objects": [{"rect": [x1, y1, x2, y2], "class", "conf"},
...], "image_h", "image_w"}`` (VinVL's released ``predictions.tsv``, read by ``oscar_tsv.py``), or
the bare list of objects (Oscar's ``*.label.tsv``). Classes map to ids through the labelmap JSON's
``label_to_idx`` (1-based, background 0: scene_graph_benchmark's ``load_labelmap_file``).

Into the store: with predictions giving the image size, boxes are their ``rect`` in pixels;
otherwise the normalised positions with width = height = 1.0 (the same 5-d region locations).
Labels from the labelmap (-1 without one), confidences from ``conf``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np

from interbert.data.conversion import (ConversionOptions, ConversionResult, ConvertedImage, each_record,
                                      ensure_new_output, run_conversion)
from interbert.data.detections import ConversionError, decode_base64, detections_to_record
from interbert.data.tsv import SourceLine

POSITION_VALUES = 6
ROWS_PER_UNIT = 16


def lineidx_path(tsv: str) -> str:
    """Where Oscar's TSVFile looks for the line index of ``tsv``."""
    return os.path.splitext(tsv)[0] + ".lineidx"


def scanned_rows(path: str):
    """``(byte offset, line)`` of every line of ``path``, read in order."""
    position = 0
    with open(path, "rb") as handle:
        for line in handle:
            yield position, line
            position += len(line)


def row_offsets(tsv: str) -> list:
    """The byte offset of every row of ``tsv``: from its ``.lineidx`` (checked against the TSV's
    size), else by scanning the TSV."""
    size = os.path.getsize(tsv)
    index = lineidx_path(tsv)
    if not os.path.isfile(index):
        return [offset for offset, _ in scanned_rows(tsv)]
    offsets = []
    with open(index, encoding="ascii", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            try:
                offset = int(line)
            except ValueError:
                raise ConversionError(f"{index}:{number}: {line.strip()!r} is not a byte offset") from None
            if not 0 <= offset < size:
                raise ConversionError(f"{index}:{number}: offset {offset} points past the end of {tsv} ({size} "
                                      "bytes); the .lineidx belongs to another version of the TSV: regenerate it, "
                                      "or delete it to have the TSV scanned")
            offsets.append(offset)
    return offsets


def first_columns(tsv: str, offsets: list) -> list:
    """The image id (first column) of the row at each offset; an offset that is not at the start
    of a row is an error naming the TSV and its ``.lineidx``."""
    ids = []
    with open(tsv, "rb") as handle:
        for number, offset in enumerate(offsets, 1):
            handle.seek(max(offset - 1, 0))
            if offset and handle.read(1) != b"\n":
                raise ConversionError(f"{lineidx_path(tsv)}:{number}: offset {offset} is not the start of a row of "
                                      f"{tsv}; regenerate the .lineidx, or delete it to have the TSV scanned")
            ids.append(handle.readline().split(b"\t", 1)[0].strip().decode("utf-8", "replace"))
    return ids


@lru_cache(maxsize=2)
def load_labelmap(path: str) -> dict:
    """``label_to_idx`` of a VinVL labelmap JSON (class name → id, background 0)."""
    try:
        with open(path, encoding="utf-8") as handle:
            labelmap = json.load(handle)["label_to_idx"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConversionError(f"{path}: not a VinVL labelmap JSON with 'label_to_idx' ({type(error).__name__}: "
                              f"{error})") from None
    if not isinstance(labelmap, dict) or not all(isinstance(v, int) and v > 0 for v in labelmap.values()):
        raise ConversionError(f"{path}: 'label_to_idx' must map class names to ids from 1 (0 is the background)")
    return labelmap


def _read_line(path: str, offset: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.readline().rstrip(b"\r\n")


def feature_row(line: bytes, where, feature_size: int) -> tuple:
    """``(image_id, features N×F, positions N×6)`` of one feature row (either layout above)."""
    fields = line.split(b"\t")
    try:
        image_id = fields[0].strip().decode("utf-8")
        if len(fields) == 3:
            num_boxes, text = int(fields[1]), fields[2].strip()
        elif len(fields) == 2:
            info = json.loads(fields[1])
            num_boxes, text = int(info["num_boxes"]), info["features"]
        else:
            raise ValueError(f"{len(fields)} columns")
        if not isinstance(text, (str, bytes)):
            raise TypeError(f"features is a {type(text).__name__}")
    except (ValueError, KeyError, TypeError) as error:
        raise ConversionError(f"{where}: not a VinVL feature row ({type(error).__name__}: {error}); expected "
                              "image_id, num_boxes, base64 or image_id, JSON with num_boxes and features") from None
    raw = decode_base64(text, lambda: f"{where} (image {image_id!r})")
    width = feature_size + POSITION_VALUES
    if num_boxes < 0 or len(raw) != num_boxes * width * 4:
        per_region = f"{len(raw) / 4 / num_boxes:g}" if num_boxes > 0 else f"{len(raw)} bytes for 0"
        raise ConversionError(f"{where} (image {image_id!r}): {per_region} values per region; a VinVL row holds "
                              f"{feature_size} features + {POSITION_VALUES} position values ({width}) per region "
                              "(pass --feature-size if the features really have another size)")
    values = np.frombuffer(raw, dtype="<f4").reshape(num_boxes, width)
    return image_id, values[:, :feature_size], values[:, feature_size:]


def prediction_objects(line: bytes, image_id: str, where) -> tuple:
    """``(objects, (width, height) or None)`` of one predictions row."""
    fields = line.split(b"\t", 1)
    try:
        data = json.loads(fields[1])
    except (IndexError, ValueError):
        raise ConversionError(f"{where} (image {image_id!r}): not a predictions row (image_id, JSON)") from None
    if isinstance(data, list):
        return data, None
    if not isinstance(data, dict) or not isinstance(data.get("objects"), list):
        raise ConversionError(f"{where} (image {image_id!r}): the JSON has no list 'objects'")
    if "image_w" not in data or "image_h" not in data:
        return data["objects"], None
    try:
        return data["objects"], (float(data["image_w"]), float(data["image_h"]))
    except (TypeError, ValueError):
        raise ConversionError(f"{where} (image {image_id!r}): image_w {data['image_w']!r} and image_h "
                              f"{data['image_h']!r} are not numbers") from None


def object_arrays(objects: list, size, labelmap: Optional[str], place, image_id: str) -> dict:
    """``rect`` (when the image size is known), ``class`` (through the labelmap) and ``conf`` of
    the predicted objects as the arrays ``detections_to_record`` takes."""
    if not all(isinstance(o, dict) for o in objects):
        raise ConversionError(f"{place} (image {image_id!r}): 'objects' must be a list of JSON objects")
    arrays = {}
    try:
        if size:
            arrays["boxes"] = np.array([o["rect"] for o in objects], np.float32).reshape(-1, 4)
        if all("conf" in o for o in objects):
            arrays["objects_conf"] = np.array([o["conf"] for o in objects], np.float32)
    except (KeyError, TypeError, ValueError) as error:
        raise ConversionError(f"{place} (image {image_id!r}): an object's rect or conf is missing or not numbers "
                              f"({type(error).__name__}: {error})") from None
    if labelmap:
        names = load_labelmap(labelmap)
        unknown = sorted({str(o.get("class")) for o in objects if o.get("class") not in names})
        if unknown:
            raise ConversionError(f"{place} (image {image_id!r}): classes {', '.join(unknown[:5])} are not in the "
                                  f"labelmap {labelmap}; give the labelmap of the detector that wrote the predictions")
        arrays["objects_id"] = np.array([names[o["class"]] for o in objects], np.int64)
    return arrays


@dataclass(frozen=True)
class _ParseVinvl:
    """The picklable parse function of convert-vinvl: a unit is ``(feature row offset,
    predictions row offset)`` pairs (the latter None when the image has no predictions row)."""

    features: str
    predictions: Optional[str]
    labelmap: Optional[str]
    feature_size: int

    def __call__(self, rows) -> list:
        return each_record(self.image, rows)

    def image(self, row: tuple) -> ConvertedImage:
        feature_offset, prediction_offset = row
        where = SourceLine(self.features, feature_offset)
        image_id, features, positions = feature_row(_read_line(self.features, feature_offset), where,
                                                    self.feature_size)
        width = height = 1.0
        arrays = {"boxes": positions[:, :4]}
        if self.predictions:
            if prediction_offset is None:
                raise ConversionError(f"{where} (image {image_id!r}): the image has no row in {self.predictions}")
            place = SourceLine(self.predictions, prediction_offset)
            objects, size = prediction_objects(_read_line(self.predictions, prediction_offset), image_id, place)
            if len(objects) != len(features):
                raise ConversionError(f"{place} (image {image_id!r}): {len(objects)} objects, but {where} has "
                                      f"{len(features)} regions; the predictions do not belong to these features")
            arrays.update(object_arrays(objects, size, self.labelmap, place, image_id))
            width, height = size or (width, height)
        record = detections_to_record(image_id, width, height, features=features, objects_id_base=1, **arrays)
        return ConvertedImage(where, record)


def prediction_offsets(path: str) -> dict:
    """Image id → byte offset of its row in a predictions TSV."""
    offsets = {}
    for offset, line in scanned_rows(path):
        offsets.setdefault(line.split(b"\t", 1)[0].strip().decode("utf-8", "replace"), offset)
    return offsets


def convert_vinvl(features: str, options: ConversionOptions, predictions: Optional[str] = None,
                  labelmap: Optional[str] = None) -> ConversionResult:
    """A VinVL feature TSV (with optional predictions TSV and labelmap) → the store ``options.out``."""
    ensure_new_output(options)
    for path in filter(None, (features, predictions)):
        if not os.path.isfile(path):
            raise ConversionError(f"{path}: no such file")
    if labelmap:
        load_labelmap(labelmap)
    offsets = row_offsets(features)
    ids = first_columns(features, offsets)
    by_id = prediction_offsets(predictions) if predictions else {}
    rows = [(offset, by_id.get(image_id)) for offset, image_id in zip(offsets, ids)]
    units = [tuple(rows[i:i + ROWS_PER_UNIT]) for i in range(0, len(rows), ROWS_PER_UNIT)]
    parse = _ParseVinvl(features, predictions, labelmap, options.feature_size)
    return run_conversion(units, parse, options, f"interbert data convert-vinvl {features}", total=len(units),
                          desc="convert-vinvl", unit_name="chunk")
