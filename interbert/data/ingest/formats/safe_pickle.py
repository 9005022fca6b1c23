"""Reading other projects' pickles without running their code.

ViLBERT's LMDB values and the ``info`` member of MILVLG's ``.npz`` files are pickles, and
``pickle.loads`` calls whatever global a pickle names (``os.system`` included). ``safe_loads``
resolves only ``ADMITTED_GLOBALS``: the numpy functions and classes that array, dtype and scalar
pickles reference (numpy 1.x and 2.x spellings) and ``collections.OrderedDict`` (what
``csv.DictReader`` rows are under Python 3.6/3.7, the ViLBERT era); any other global is refused
before it is imported. Everything else a pickle can build is plain data: containers, strings,
bytes, numbers. Arrays of object dtype are refused too (``object_root=True`` admits exactly one, a
0-d object array at the top, which is how ``np.save`` stores a pickled dict, and returns the dict).
"""
from __future__ import annotations

import importlib
import io
import pickle
from collections import OrderedDict

import numpy as np

from interbert.data.ingest.detections import ConversionError

try:  # numpy >= 2
    _multiarray = importlib.import_module("numpy._core.multiarray")
except ImportError:  # pragma: no cover - numpy 1.x
    _multiarray = importlib.import_module("numpy.core.multiarray")

ADMITTED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    ("collections", "OrderedDict"): OrderedDict,
}


class _RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside ``ADMITTED_GLOBALS``."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return ADMITTED_GLOBALS[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None


def _object_arrays(value) -> list:
    """The object-dtype arrays anywhere inside ``value`` (containers walked without recursion)."""
    found, seen, stack = [], set(), [value]
    while stack:
        item = stack.pop()
        if isinstance(item, np.ndarray):
            if item.dtype.hasobject:
                found.append(item)
        elif isinstance(item, (dict, list, tuple, set, frozenset)) and id(item) not in seen:
            seen.add(id(item))
            stack.extend(item.items() if isinstance(item, dict) else item)
    return found


def safe_loads(data: bytes, where: str, object_root: bool = False):
    """Unpickle ``data`` admitting plain data and numeric numpy arrays only.

    ``where`` names the file and record in errors. ``object_root``: the pickle is a 0-d object
    array (``np.save`` of a dict); its one element is returned. Raises ConversionError.
    """
    try:
        value = _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except _RefusedGlobal as error:
        raise ConversionError(f"{where}: refused to unpickle: the record names {error}, which is not a "
                              "container, string, number or numpy array (unpickling it could run code); "
                              "re-export the record with plain arrays") from None
    except Exception as error:  # a damaged pickle can fail in many ways; none may escape as a traceback
        raise ConversionError(f"{where}: not a readable pickle ({type(error).__name__}: {error})") from None
    if object_root:
        if not (isinstance(value, np.ndarray) and value.dtype.hasobject and value.shape == ()):
            raise ConversionError(f"{where}: expected a pickled 0-d object array (np.save of a dict), found "
                                  f"{type(value).__name__}")
        value = value.item()
    if _object_arrays(value):
        raise ConversionError(f"{where}: refused an array of object dtype (its elements would need pickle); "
                              "only numeric arrays are read")
    return value
