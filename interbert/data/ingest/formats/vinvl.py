"""VinVL / Oscar+ feature TSV (+ predictions TSV, labelmap) → feature store (``convert-vinvl``).

Features (microsoft/Oscar ``oscar/datasets/oscar_tsv.py`` reads them): one image per row, either
``image_id \\t num_boxes \\t base64`` (Oscar+ pretraining, VinVL's released ``features.tsv``) or
``image_id \\t {"num_boxes": N, "features": base64}`` (Oscar's ``run_captioning.py``
``*.feature.tsv``); the base64 holds N×(2048 + 6) float32: the region feature, then x1/w, y1/h,
x2/w, y2/h, (x2-x1)/w, (y2-y1)/h. Beside it may lie ``NAME.lineidx``, the offset of every row.

Predictions (``image_id \\t JSON``): ``{"objects": [{"rect": [x1, y1, x2, y2], "class", "conf"},
...], "image_h", "image_w"}`` (VinVL's released ``predictions.tsv``, read by ``oscar_tsv.py``), or
the bare list of objects (Oscar's ``*.label.tsv``). Classes map to ids through the labelmap JSON's
``label_to_idx`` (1-based, background 0: scene_graph_benchmark's ``load_labelmap_file``).

Inputs may be files, pipes, ``-`` or compressed (``input_streams``); how their rows reach the
workers, by offset or read in order: ``vinvl_rows``.

Into the store: with predictions giving the image size, boxes are their ``rect`` in pixels;
otherwise the normalised positions with width = height = 1.0 (the same 5-d region locations).
Labels from the labelmap (-1 without one), confidences from ``conf``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from interbert.data.ingest.conversion import (
    ConversionOptions,
    ConversionResult,
    ConvertedImage,
    each_record,
    ensure_new_output,
    run_conversion,
)
from interbert.data.ingest.detections import ConversionError, decode_base64, detections_to_record
from interbert.data.ingest.formats.tsv import SourceLine
from interbert.data.ingest.formats.vinvl_rows import prediction_rows, read_line, rows_in_order, units_by_offset
from interbert.data.text.input_streams import check_input, input_name, is_plain_file, whole_input
from interbert.errors import UserError

POSITION_VALUES = 6


@lru_cache(maxsize=2)
def load_labelmap(path: str) -> dict:
    """``label_to_idx`` of a VinVL labelmap JSON (class name → id, background 0)."""
    try:
        _, data = whole_input(path, ("*.json",))
        labelmap = json.loads(data)["label_to_idx"]
    except UserError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConversionError(f"{path}: not a VinVL labelmap JSON with 'label_to_idx' ({type(error).__name__}: "
                              f"{error})") from None
    if not isinstance(labelmap, dict) or not all(isinstance(v, int) and v > 0 for v in labelmap.values()):
        raise ConversionError(f"{path}: 'label_to_idx' must map class names to ids from 1 (0 is the background)")
    return labelmap


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


def object_arrays(objects: list, size, labelmap: str | None, place, image_id: str) -> dict:
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
    """The picklable parse function of convert-vinvl. With ``by_offset`` a unit is ``(feature row
    offset, predictions row offset)`` pairs that the worker reads from the files; else ``(feature
    row place, line, predictions row place, line)`` tuples read by the main process. The
    predictions row is None when the image has none."""

    features: str
    predictions: str | None
    labelmap: str | None
    feature_size: int
    by_offset: bool = True

    def __call__(self, rows) -> list:
        return each_record(self.image, rows)

    def image(self, row: tuple) -> ConvertedImage:
        if not self.by_offset:
            return self.image_of_lines(*row)
        feature_offset, prediction_offset = row
        place = line = None
        if prediction_offset is not None and self.predictions is not None:
            place, line = SourceLine(self.predictions, prediction_offset), read_line(self.predictions,
                                                                                     prediction_offset)
        return self.image_of_lines(SourceLine(self.features, feature_offset),
                                   read_line(self.features, feature_offset), place, line)

    def image_of_lines(self, where, feature_line: bytes, place, prediction_line: bytes | None) -> ConvertedImage:
        image_id, features, positions = feature_row(feature_line, where, self.feature_size)
        width = height = 1.0
        arrays = {"boxes": positions[:, :4]}
        if self.predictions:
            if prediction_line is None:
                raise ConversionError(f"{where} (image {image_id!r}): the image has no row in {self.predictions}")
            objects, size = prediction_objects(prediction_line, image_id, place)
            if len(objects) != len(features):
                raise ConversionError(f"{place} (image {image_id!r}): {len(objects)} objects, but {where} has "
                                      f"{len(features)} regions; the predictions do not belong to these features")
            arrays.update(object_arrays(objects, size, self.labelmap, place, image_id))
            width, height = size or (width, height)
        record = detections_to_record(image_id, width, height, features=features, objects_id_base=1, **arrays)
        return ConvertedImage(where, record)


def convert_vinvl(features: str, options: ConversionOptions, predictions: str | None = None,
                  labelmap: str | None = None) -> ConversionResult:
    """A VinVL feature TSV (with optional predictions TSV and labelmap) → the store ``options.out``;
    each may be a file, a pipe, ``-`` or compressed (see above)."""
    ensure_new_output(options)
    inputs = [path for path in (features, predictions, labelmap) if path]
    if inputs.count("-") > 1:
        raise ConversionError("- (stdin) is given for more than one input; it can be read only once")
    for path in inputs:
        check_input(path)
    if labelmap:
        load_labelmap(labelmap)
    created_by = f"interbert data convert-vinvl {input_name(features)}"
    if is_plain_file(features) and (not predictions or is_plain_file(predictions)):
        units = units_by_offset(features, predictions)
        parse = _ParseVinvl(features, predictions, labelmap, options.feature_size)
        return run_conversion(units, parse, options, created_by, total=len(units), desc="convert-vinvl",
                              unit_name="chunk")
    parse = _ParseVinvl(input_name(features), predictions and input_name(predictions), labelmap,
                        options.feature_size, by_offset=False)
    if not predictions:
        return run_conversion(rows_in_order(features, None), parse, options, created_by, desc="convert-vinvl",
                              unit_name="chunk")
    with prediction_rows(predictions) as rows:
        return run_conversion(rows_in_order(features, rows), parse, options, created_by, desc="convert-vinvl",
                              unit_name="chunk")
