"""UNITER's image LMDB → feature store (``convert-lmdb --format uniter``).

Layout (ChenRocks/UNITER ``scripts/convert_imgdir.py`` writes it, ``data/data.py`` DetectFeatLmdb
reads it): one LMDB directory per dataset split, named ``feat_th{conf_th}_max{max_bb}_min{min_bb}``
(``feat_numbb{N}`` for a fixed count, ``all`` with ``--keep_all``; ``_compressed`` appended with
``--compress``), keys the names of the per-image npz files (``nlvr2_dev-850-0-img0.npz``), ``__keys__``
a JSON list of them. A value holds the arrays of the image's npz, which UNITER's extractor (the
BUTD-UNITER-NLVR2 ``tools/generate_npz.py`` that ``scripts/extract_imgfeat.sh`` runs) saves as
float16: ``features`` N×F, ``norm_bb`` N×6 (x1, y1, x2, y2, w, h divided by the image size),
``conf`` N×1 (the detector's per-box confidence, reshaped to one column), ``soft_labels`` N×C (with
the background column). ``convert_imgdir.py`` casts float32 to float16 and cuts each array to its
number of boxes, keeping its dimensions; it packs them with msgpack + msgpack-numpy, or,
compressed, as ``np.savez_compressed`` bytes (numpy 1.x also stored its ``allow_pickle=True``
keyword as a 0-d bool member, which is ignored). Both are read here, neither through pickle;
``conf`` is accepted as N or N×1 (docs/formats.md lists every field). The number
of boxes per image is in ``nbb_th{conf_th}_max{max_bb}_min{min_bb}.json`` beside the LMDB (none is
written for ``all`` and ``feat_numbb``); records are cut to it as UNITER's reader does.

Into the store: image id = key without ``.npz``; no image size is stored by UNITER, so width =
height = 1.0 and boxes in [0, 1] (the same 5-d region locations the model computes from pixels),
unless ``image_sizes`` (JSON object or JSON lines of image id → [width, height]) gives sizes: boxes
are then scaled to pixels. Labels = argmax(soft_labels[:, 1:]) + 1, confidences ``conf``, class
distributions ``soft_labels``.
"""
from __future__ import annotations

import io
import json
import re
from functools import lru_cache, partial
from pathlib import Path

import numpy as np

from interbert.data.ingest.conversion import ConversionOptions, ConversionResult, ConvertedImage, ensure_new_output
from interbert.data.ingest.detections import ConversionError, detections_to_record
from interbert.data.ingest.formats.safe_msgpack import safe_unpackb
from interbert.data.ingest.formats.source_lmdb import ParseKeys, convert_lmdb, key_text, listed_keys

NBB_PATTERN = "nbb_th*_max*_min*.json"
_THRESHOLD_DB = re.compile(r"feat_th(?P<th>.+)_max(?P<max>\d+)_min(?P<min>\d+)(_compressed)?")
_NO_NBB_DB = re.compile(r"(all|feat_numbb\d+)(_compressed)?")
LAYOUT = "UNITER's image LMDB (msgpack + msgpack-numpy arrays)"
ZIP_MAGIC = b"PK\x03\x04"
# field -> (the shape UNITER's chain writes, N boxes; its column count, None for any)
ARRAY_SHAPES = {"features": ("N×F", None), "norm_bb": ("N×6", 6), "conf": ("N or N×1", 1),
                "soft_labels": ("N×C", None)}


def nbb_file(lmdb_dir: str) -> Path | None:
    """The nbb JSON that belongs to a UNITER LMDB directory (None for ``all``/``feat_numbb`` ones)."""
    path = Path(lmdb_dir)
    name = path.resolve().name
    if _NO_NBB_DB.fullmatch(name):
        return None
    match = _THRESHOLD_DB.fullmatch(name)
    if match:
        expected = path.parent / f"nbb_th{match['th']}_max{match['max']}_min{match['min']}.json"
        if not expected.is_file():
            raise ConversionError(f"{lmdb_dir}: UNITER's box counts {expected.name} are missing beside the LMDB "
                                  f"(every feat_th*_max*_min* LMDB comes with its {NBB_PATTERN}, written by "
                                  "scripts/convert_imgdir.py); copy it next to the LMDB directory")
        return expected
    found = sorted(path.parent.glob(NBB_PATTERN))
    if len(found) != 1:
        what = "none" if not found else ", ".join(f.name for f in found)
        raise ConversionError(f"{lmdb_dir}: a UNITER LMDB needs its box counts {NBB_PATTERN} beside it ({what} "
                              f"found in {path.parent}); name the LMDB directory feat_th{{TH}}_max{{MAX}}_min{{MIN}} "
                              "as UNITER does so the matching file is chosen")
    return found[0]


@lru_cache(maxsize=4)
def _load_json(path: str) -> dict:
    """A JSON object, or JSON lines of objects merged (read once per process)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConversionError(f"{path}: cannot read ({error})") from None
    try:
        loaded = json.loads(text)
    except ValueError:
        loaded = {}
        for number, line in enumerate(text.splitlines(), 1):
            try:
                loaded.update(json.loads(line) if line.strip() else {})
            except (ValueError, TypeError):
                raise ConversionError(f"{path}:{number}: not a JSON object of image id -> value") from None
    if not isinstance(loaded, dict):
        raise ConversionError(f"{path}: not a JSON object of image id -> value")
    return loaded


def _image_size(sizes_path: str, image_id: str, where: str) -> tuple:
    size = _load_json(sizes_path).get(image_id)
    if size is None:
        raise ConversionError(f"{where}: image {image_id!r} has no size in {sizes_path}")
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, (int, float)) and v > 0 for v in size)):
        raise ConversionError(f"{sizes_path}: the size of image {image_id!r} is {size!r}, expected [width, height]")
    return float(size[0]), float(size[1])


def _decode_dump(value: bytes, where: str) -> dict:
    """A value: npz bytes (``--compress``) or a msgpack map of arrays."""
    if value[:4] == ZIP_MAGIC:
        try:
            with np.load(io.BytesIO(value), allow_pickle=False) as npz:
                return {name: npz[name] for name in npz.files}
        except ValueError as error:
            raise ConversionError(f"{where}: a compressed record holding a pickled array is refused "
                                  f"({error})") from None
        except OSError as error:
            raise ConversionError(f"{where}: not a readable compressed (npz) record ({error})") from None
    dump = safe_unpackb(value, where, LAYOUT)
    if not isinstance(dump, dict):
        raise ConversionError(f"{where}: the record is a {type(dump).__name__}, expected a map of arrays")
    return dump


def uniter_array(name: str, array, rows: int, where: str) -> np.ndarray:
    """A record's array ``name`` checked against ``ARRAY_SHAPES`` (``conf`` made 1-d)."""
    shape, columns = ARRAY_SHAPES[name]
    if isinstance(array, np.ndarray) and array.dtype.kind == "f" and array.ndim in (1, 2) and len(array) == rows:
        if name == "conf" and (array.ndim == 1 or array.shape[1] == 1):
            return array.reshape(-1)
        if name != "conf" and array.ndim == 2 and (columns is None or array.shape[1] == columns):
            return array
    found = f"shape {array.shape}, dtype {array.dtype}" if isinstance(array, np.ndarray) else type(array).__name__
    raise ConversionError(f"{where}: {name} is {found}; UNITER writes a float array of {shape} (N boxes: the "
                          "rows of features; norm_bb: x1, y1, x2, y2, w, h)")


def uniter_image(dump: dict, key: bytes, where: str, nbb: int | None, sizes_path: str | None) -> ConvertedImage:
    """One decoded UNITER record → ConvertedImage (cut to ``nbb`` boxes when given)."""
    missing = [name for name in ("features", "norm_bb") if name not in dump]
    if missing:
        raise ConversionError(f"{where}: the record lacks {', '.join(missing)} (it has {', '.join(map(str, dump))})")
    features = dump["features"]
    rows = len(features) if isinstance(features, np.ndarray) and features.ndim == 2 else -1
    arrays = {name: uniter_array(name, dump[name], rows, where)[:nbb] for name in ARRAY_SHAPES if name in dump}
    image_id = key_text(key, where).removesuffix(".npz")
    width = height = 1.0
    boxes = arrays["norm_bb"][:, :4].astype(np.float32)
    if sizes_path:
        width, height = _image_size(sizes_path, image_id, where)
        boxes = boxes * np.array([width, height, width, height], np.float32)
    record = detections_to_record(image_id, width, height, boxes, arrays["features"],
                                  cls_prob=arrays.get("soft_labels"), objects_conf=arrays.get("conf"))
    return ConvertedImage(where, record)


def uniter_record(dump: dict, key: bytes, where: str, nbb_path: str | None, sizes_path: str | None):
    """One decoded record → ConvertedImage, cut to its box count in ``nbb_path`` (when given)."""
    nbb = None
    if nbb_path:
        nbb = _load_json(nbb_path).get(key_text(key, where))
        if not isinstance(nbb, int):
            raise ConversionError(f"{where}: no box count for this key in {nbb_path} (found {nbb!r}); the nbb file "
                                  "belongs to another LMDB")
    return uniter_image(dump, key, where, nbb, sizes_path)


def _json_list(value: bytes, where: str) -> list:
    try:
        return json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ConversionError(f"{where}: not UNITER's JSON list of keys; the LMDB is not of this format "
                              "(see --format)") from None


def convert_uniter_lmdb(path: str, options: ConversionOptions, image_sizes: str | None = None) -> ConversionResult:
    """A UNITER image LMDB directory → the store ``options.out`` (``image_sizes``: see above)."""
    ensure_new_output(options)
    nbb = nbb_file(path)
    for name in filter(None, (nbb, image_sizes)):
        _load_json(str(name))  # a bad nbb or sizes file stops here, before the workers start
    keys = listed_keys(path, b"__keys__", _json_list)
    to_image = partial(uniter_record, nbb_path=str(nbb) if nbb else None, sizes_path=image_sizes)
    return convert_lmdb(path, keys, ParseKeys(path, _decode_dump, to_image), options,
                        f"interbert data convert-lmdb --format uniter {path}", "convert-lmdb uniter")

