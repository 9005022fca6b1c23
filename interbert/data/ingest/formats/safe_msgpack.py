"""msgpack records with msgpack-numpy arrays, decoded without pickle.

tensorpack's ``dumps`` and UNITER's image LMDBs pack numpy arrays with msgpack-numpy's ``encode``
(msgpack_numpy.py, lebedov/msgpack-numpy), a map ``{b"nd": True, b"type": dtype.str, b"kind": b"",
b"shape": [...], b"data": raw bytes}`` (numpy scalars: ``{b"nd": False, b"type", b"data"}``). For
object arrays ``kind`` is ``b"O"`` and ``data`` a pickle, which msgpack-numpy's own decoder
unpickles; ``safe_unpackb`` uses plain ``msgpack`` with its own hook, builds bool, integer and float
arrays only, and refuses anything else.
"""
from __future__ import annotations

import msgpack
import numpy as np

from interbert.data.ingest.detections import ConversionError

NUMERIC_KINDS = "biuf"


def _field(obj: dict, name: str):
    """msgpack-numpy keys are bytes (``use_bin_type=True``); very old writers packed them as text."""
    return obj[name.encode()] if name.encode() in obj else obj[name]


def _decode_array(obj: dict, where: str):
    try:
        kind = obj.get(b"kind", obj.get("kind", b""))
        descr = _field(obj, "type")
        data = _field(obj, "data")
    except KeyError as error:
        raise ConversionError(f"{where}: a msgpack-numpy array without {error}; the record is damaged") from None
    if kind not in (b"", ""):
        raise ConversionError(f"{where}: refused a msgpack-numpy array of kind {kind!r} (object or structured "
                              "dtype; its bytes would need pickle); only numeric arrays are read")
    try:
        dtype = np.dtype(descr.decode() if isinstance(descr, bytes) else descr)
    except (TypeError, ValueError, AttributeError):
        raise ConversionError(f"{where}: a msgpack-numpy array has the unknown dtype {descr!r}") from None
    if dtype.kind not in NUMERIC_KINDS or dtype.hasobject:
        raise ConversionError(f"{where}: refused a msgpack-numpy array of dtype {dtype}; only bool, integer and "
                              "float arrays are read")
    if not isinstance(data, bytes):
        raise ConversionError(f"{where}: a msgpack-numpy array whose data is {type(data).__name__}, not bytes")
    if not _field(obj, "nd"):
        return np.frombuffer(data, dtype=dtype, count=1)[0]
    shape = tuple(_field(obj, "shape"))
    if any(not isinstance(d, int) or d < 0 for d in shape) or len(data) != int(np.prod(shape)) * dtype.itemsize:
        raise ConversionError(f"{where}: a msgpack-numpy array of shape {shape} and dtype {dtype} has "
                              f"{len(data)} bytes; the record is damaged")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def safe_unpackb(data: bytes, where: str, layout: str):
    """Decode one msgpack record; ``layout`` names what was expected (for the error message)."""
    def hook(obj: dict):
        return _decode_array(obj, where) if b"nd" in obj or "nd" in obj else obj

    try:
        return msgpack.unpackb(data, raw=False, object_hook=hook)
    except ConversionError:
        raise
    except Exception as error:  # msgpack raises several types for damaged or foreign bytes
        raise ConversionError(f"{where}: not a msgpack record of {layout} ({type(error).__name__}: "
                              f"{error})") from None
