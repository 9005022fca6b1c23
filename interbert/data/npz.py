"""Folders of per-image ``.npz`` files → feature store (``interbert data convert-npz``).

One file per image; the image id is the file name without ``.npz``. Accepted key names (first
match wins): ``NPZ_KEYS``. Arrays are read with ``allow_pickle=False``: a pickled array is refused.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from interbert.data.conversion import ConversionOptions, ensure_new_output, ConversionResult, ConvertedImage, run_conversion
from interbert.data.detections import ConversionError, detections_to_record

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
        return [read_npz(Path(p), self.objects_id_base) for p in paths]


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
