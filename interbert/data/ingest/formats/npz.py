"""Folders of per-image ``.npz`` files → feature store (``interbert data convert-npz``).

One file per image; the image id is the file name without ``.npz``. Accepted key names (first
match wins): ``NPZ_KEYS``. Arrays are read with ``allow_pickle=False``: a pickled array is refused.

MILVLG/bottom-up-attention.pytorch (``utils/extract_utils.py``) writes ``np.savez_compressed(x=,
bbox=, num_bbox=, image_h=, image_w=, info=dict)``: the labels and confidences (``objects_id``,
``objects_conf``, ``attrs_id``, ``attrs_conf``, 0-based without the background) live in ``info``, a
pickled 0-d object array. Its raw ``info.npy`` member is read through ``safe_pickle`` (plain data and
numeric arrays only); top-level arrays of the same names win over ``info``'s.
"""
from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from interbert.data.ingest.conversion import (
    ConversionOptions,
    ConversionResult,
    ConvertedImage,
    each_record,
    ensure_new_output,
    run_conversion,
)
from interbert.data.ingest.detections import ConversionError, detections_to_record
from interbert.data.ingest.formats.safe_pickle import safe_loads

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
OPTIONAL_FIELDS = ("cls_prob", "objects_id", "objects_conf", "attrs_id", "attrs_conf")
FILES_PER_UNIT = 16


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


def read_info(path: Path) -> dict:
    """The dict in the pickled ``info`` member of a MILVLG npz, read from the member's raw bytes
    through ``safe_pickle`` (never ``allow_pickle=True``)."""
    headers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        with zipfile.ZipFile(path) as archive:
            stream = io.BytesIO(archive.read("info.npy"))
        version = np.lib.format.read_magic(stream)
        if version not in headers:
            raise ValueError(f"npy format version {version}")
        _, _, dtype = headers[version](stream)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise ConversionError(f"{path}: the member info.npy is unreadable ({error})") from None
    if not dtype.hasobject:
        raise ConversionError(f"{path}: the member info holds {dtype} values, not the pickled dict MILVLG writes")
    info = safe_loads(stream.read(), f"{path} member info", object_root=True)
    if not isinstance(info, dict):
        raise ConversionError(f"{path}: the member info holds a {type(info).__name__}, not a dict")
    return info


def _info_array(info: dict, field: str, path: Path):
    value = info.get(field)
    if value is None:
        return None
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise ConversionError(f"{path}: info[{field!r}] holds {array.dtype} values, not numbers")
    return array


def read_npz(path: Path, objects_id_base: int = 0) -> ConvertedImage:
    """One per-image ``.npz`` file → ConvertedImage (image id = file name without ``.npz``)."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ConversionError(f"{path}: not a readable .npz file ({error})") from None
    with data:
        features = np.asarray(_npz_get(data, "features", path))
        boxes = np.asarray(_npz_get(data, "boxes", path)).reshape(-1, 4)
        width, height = _npz_get(data, "width", path), _npz_get(data, "height", path)
        optional = {name: _npz_get(data, name, path, required=False) for name in OPTIONAL_FIELDS}
        info = read_info(path) if "info" in data.files else {}
    for name in OPTIONAL_FIELDS:
        if optional[name] is None:
            optional[name] = _info_array(info, name, path)
    if features.ndim != 2 or features.shape[0] != boxes.shape[0]:
        raise ConversionError(f"{path}: features {features.shape} and boxes {boxes.shape} do not describe the "
                              "same N regions (expected N×F and N×4)")
    record = detections_to_record(path.stem, float(np.asarray(width).reshape(-1)[0]),
                                  float(np.asarray(height).reshape(-1)[0]), boxes, features,
                                  objects_id_base=objects_id_base,
                                  **{k: v for k, v in optional.items() if v is not None})
    return ConvertedImage(str(path), record)


@dataclass(frozen=True)
class _ParseNpz:
    """The picklable parse function of convert-npz: a unit is a list of file paths."""

    objects_id_base: int

    def __call__(self, paths) -> list:
        return each_record(lambda path: read_npz(Path(path), self.objects_id_base), paths)


def convert_npz(folder: str | os.PathLike, options: ConversionOptions) -> ConversionResult:
    """A folder of per-image ``.npz`` files (searched recursively) → the store ``options.out``."""
    ensure_new_output(options)
    files = sorted(str(f) for f in Path(folder).rglob("*.npz"))
    if not files:
        raise ConversionError(f"{folder}: no .npz files found")
    units = [files[i:i + FILES_PER_UNIT] for i in range(0, len(files), FILES_PER_UNIT)]
    return run_conversion(units, _ParseNpz(options.objects_id_base), options,
                          f"interbert data convert-npz {folder}", total=len(units), desc="convert-npz",
                          unit_name="chunk")
