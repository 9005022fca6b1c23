"""The binary layout of one feature-store record: versioned, self-describing, never pickled.

A record is::

    offset 0   4 bytes   magic  b"IBRF"
    offset 4   uint16    format version (little endian)
    offset 6   uint16    reserved, 0
    offset 8   uint32    length L of the JSON header in bytes
    offset 12  L bytes   JSON header (utf-8)
    ...        padding to a multiple of ALIGNMENT
    ...        raw little-endian array bytes, each array starting at a multiple of ALIGNMENT
    end - 8    uint64    xxh3_64 checksum of every byte before it (version 2 on)

The JSON header holds the image's scalars (``image_id``, ``width``, ``height``) and, under
``arrays``, each array's ``dtype`` (a numpy type string such as ``"<f2"``), ``shape`` and
``offset`` (from the start of the record). Only plain numeric dtypes are accepted, so decoding a
stranger's store can never run code. Decoding checks the checksum (about 60 GB/s, a few
microseconds per record) and returns ``np.frombuffer`` views into the record's bytes: no array is
copied. Version 1 records (no checksum) are decoded only by ``decode_record(..., legacy=True)``,
which ``interbert data migrate`` uses.
"""
from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import xxhash

MAGIC = b"IBRF"
FORMAT_VERSION = 2
LEGACY_VERSION = 1  # before checksums and the background-at-0 label convention
ALIGNMENT = 16
CHECKSUM = "xxh3_64"
_PREFIX = struct.Struct("<4sHHI")
_TRAILER = struct.Struct("<Q")
# Plain numeric little-endian dtypes only: no object arrays, nothing that needs pickle.
ALLOWED_DTYPES = frozenset({"<f2", "<f4", "<f8", "<i2", "<i4", "<i8", "|u1", "|i1", "<u2", "<u4"})
_ITEMSIZE = {dtype: np.dtype(dtype).itemsize for dtype in ALLOWED_DTYPES}
# The arrays every record must have, and their dtypes on disk.
REQUIRED_ARRAYS = {"features": "<f2", "boxes": "<f4"}
OPTIONAL_ARRAYS = {"labels": "<i4", "confidences": "<f4", "class_probs": "<f2",
                   "attr_labels": "<i4", "attr_confidences": "<f4"}


class RecordFormatError(ValueError):
    """A record's bytes do not follow the layout above; the message says what is wrong."""


class ChecksumError(RecordFormatError):
    """A record's bytes changed after it was written (its checksum does not match)."""


def record_checksum(data) -> int:
    """The xxh3_64 checksum of ``data`` (bytes or a memoryview)."""
    return xxhash.xxh3_64_intdigest(data)


def check_record_checksum(data: bytes) -> None:
    """Raise ChecksumError unless the trailer of a version-2 record matches its bytes."""
    if len(data) < _PREFIX.size + _TRAILER.size:
        raise RecordFormatError(f"record is {len(data)} bytes, too short to hold a checksum")
    view = memoryview(data)
    (stored,) = _TRAILER.unpack_from(data, len(data) - _TRAILER.size)
    actual = record_checksum(view[:len(data) - _TRAILER.size])
    if stored != actual:
        raise ChecksumError(f"checksum mismatch (stored {stored:016x}, bytes give {actual:016x}): "
                            "the record's bytes changed after it was written")


@dataclass
class RegionRecord:
    """One image's detector output.

    features: N×F float16; boxes: N×4 float32 ``[x1, y1, x2, y2]`` in pixels;
    labels: N int32 detector classes (or None); confidences: N float32 (or None);
    class_probs: N×C float16 detector class distribution (or None);
    extras: any further named arrays (e.g. ``attr_labels``).
    """

    image_id: str
    width: float
    height: float
    features: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray | None = None
    confidences: np.ndarray | None = None
    class_probs: np.ndarray | None = None
    extras: dict = field(default_factory=dict)

    @property
    def num_regions(self) -> int:
        return int(self.boxes.shape[0])

    def arrays(self) -> dict:
        """All arrays by their on-disk name (None entries left out)."""
        named = {"features": self.features, "boxes": self.boxes, "labels": self.labels,
                 "confidences": self.confidences, "class_probs": self.class_probs, **self.extras}
        return {name: array for name, array in named.items() if array is not None}


def _aligned(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def encode_record(record: RegionRecord, version: int = FORMAT_VERSION) -> bytes:
    """Serialise ``record``, casting each array to its on-disk dtype (features to float16).

    ``version=1`` writes the legacy layout without a checksum (for migration tests only).
    """
    arrays = {}
    for name, array in record.arrays().items():
        dtype = REQUIRED_ARRAYS.get(name) or OPTIONAL_ARRAYS.get(name) or np.asarray(array).dtype.str
        arrays[name] = np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<"))
    header = {"image_id": record.image_id, "width": float(record.width),
              "height": float(record.height), "arrays": {}}
    # The header's length depends on the offsets it lists; reserve generously and fix up.
    offset = 0
    for _ in range(3):
        specs: dict[str, dict] = {}
        cursor = offset
        for name, array in arrays.items():
            specs[name] = {"dtype": array.dtype.str, "shape": list(array.shape), "offset": cursor}
            cursor = _aligned(cursor + array.nbytes)
        header["arrays"] = specs
        header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
        start = _aligned(_PREFIX.size + len(header_bytes))
        if start == offset:
            break
        offset = start
    trailer = _TRAILER.size if version >= FORMAT_VERSION else 0
    out = bytearray(cursor + trailer)
    _PREFIX.pack_into(out, 0, MAGIC, version, 0, len(header_bytes))
    out[_PREFIX.size:_PREFIX.size + len(header_bytes)] = header_bytes
    view = memoryview(out)
    for name, array in arrays.items():
        begin = int(specs[name]["offset"])
        view[begin:begin + array.nbytes] = array.reshape(-1).view(np.uint8)  # type: ignore[call-overload]  # an array is a buffer
    if trailer:
        _TRAILER.pack_into(out, cursor, record_checksum(view[:cursor]))
    return bytes(out)


def decode_record(data, legacy: bool = False) -> RegionRecord:
    """Decode a record (bytes, or a memoryview such as LMDB's ``buffers=True`` values) into
    zero-copy views of ``data`` (which must outlive the arrays).

    The checksum is checked first. ``legacy=True`` also accepts version-1 records (no checksum).
    Raises RecordFormatError (ChecksumError for altered bytes) naming the first inconsistency.
    """
    if len(data) < _PREFIX.size:
        raise RecordFormatError(f"record is {len(data)} bytes, shorter than the {_PREFIX.size}-byte prefix")
    magic, version, _, header_len = _PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise RecordFormatError(f"bad magic {magic!r} (expected {MAGIC!r}); not an InterBERT feature record")
    if version > FORMAT_VERSION:
        raise RecordFormatError(f"format version {version} is newer than this reader ({FORMAT_VERSION}); "
                                "upgrade interbert")
    if version == FORMAT_VERSION:
        end = len(data) - _TRAILER.size
    elif version == LEGACY_VERSION and legacy:
        end = len(data)
    else:
        raise RecordFormatError(f"format version {version} predates checksums and the background-at-0 label "
                                "convention; migrate the store with `interbert data migrate`")
    if _PREFIX.size + header_len > len(data):
        raise RecordFormatError(f"header length {header_len} runs past the end of the "
                                f"{len(data)}-byte record (truncated?)")
    try:
        header = json.loads(bytes(data[_PREFIX.size:_PREFIX.size + header_len]))  # data may be a memoryview
        specs: Mapping = header["arrays"]
    except (ValueError, KeyError, TypeError) as error:
        raise RecordFormatError(f"unreadable JSON header: {error}") from None
    arrays = {}
    for name, spec in specs.items():
        try:
            dtype, shape, offset = spec["dtype"], tuple(int(d) for d in spec["shape"]), int(spec["offset"])
        except (KeyError, TypeError, ValueError):
            raise RecordFormatError(f"array {name!r} has a malformed description {spec!r}") from None
        if dtype not in ALLOWED_DTYPES:
            raise RecordFormatError(f"array {name!r} has dtype {dtype!r}, not a plain numeric type")
        count = math.prod(shape)
        nbytes = count * _ITEMSIZE[dtype]
        if offset < _PREFIX.size + header_len or offset + nbytes > end or count < 0:
            raise RecordFormatError(f"array {name!r} (bytes {offset}..{offset + nbytes}) lies outside the "
                                    f"{end}-byte record body (truncated?)")
        arrays[name] = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)
    if version == FORMAT_VERSION:  # after the layout checks, whose messages say more about truncation
        check_record_checksum(data)
    for name in REQUIRED_ARRAYS:
        if name not in arrays:
            raise RecordFormatError(f"required array {name!r} is missing")
    boxes = arrays.pop("boxes")
    features = arrays.pop("features")
    n = boxes.shape[0] if boxes.ndim == 2 else -1
    if boxes.ndim != 2 or boxes.shape[1] != 4 or features.ndim != 2 or features.shape[0] != n:
        raise RecordFormatError(f"boxes {boxes.shape} and features {features.shape} do not describe "
                                "N regions (N×4 and N×F)")
    for name, array in arrays.items():
        if array.shape[:1] != (n,):
            raise RecordFormatError(f"array {name!r} has shape {array.shape}, expected {n} rows")
    try:
        width, height = float(header["width"]), float(header["height"])
        image_id = str(header["image_id"])
    except (KeyError, TypeError, ValueError):
        raise RecordFormatError("header lacks image_id, width or height") from None
    return RegionRecord(image_id=image_id, width=width, height=height, features=features, boxes=boxes,
                        labels=arrays.pop("labels", None), confidences=arrays.pop("confidences", None),
                        class_probs=arrays.pop("class_probs", None), extras=arrays)
