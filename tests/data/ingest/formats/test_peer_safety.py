"""safe_pickle and safe_msgpack: what they admit (numpy 1.x and 2.x pickles) and what they refuse."""
from __future__ import annotations

import pickle
from collections import OrderedDict

import numpy as np
import pytest

from interbert.data.ingest.detections import ConversionError
from interbert.data.ingest.formats.safe_msgpack import safe_unpackb
from interbert.data.ingest.formats.safe_pickle import safe_loads
from tests.helpers.peer_writers import Poison, msgpack_numpy_dumps


def test_safe_loads_reads_plain_data_and_numeric_arrays():
    value = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.int64(7), "c": [b"x", "y", 1.5, None],
             "d": OrderedDict(image_id="1"), "e": np.dtype("<f2")}
    back = safe_loads(pickle.dumps(value, protocol=3), "f key 'k'")
    np.testing.assert_array_equal(back["a"], value["a"])
    assert back["b"] == 7 and back["c"] == value["c"] and back["d"] == value["d"] and back["e"] == np.float16


def test_safe_loads_reads_numpy_1x_pickles():
    data = pickle.dumps({"x": np.arange(3.0), "s": np.float32(2)}, protocol=3)
    numpy1 = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")  # how numpy 1.x spells them
    assert numpy1 != data
    back = safe_loads(numpy1, "f")
    np.testing.assert_array_equal(back["x"], [0.0, 1.0, 2.0])
    assert back["s"] == np.float32(2)


def test_safe_loads_refuses_code_before_running_it(tmp_path):
    marker = tmp_path / "marker"
    payload = pickle.dumps({"features": Poison(marker)})
    with pytest.raises(ConversionError, match=r"^f key 'k': refused to unpickle: the record names posix\.system"):
        safe_loads(payload, "f key 'k'")
    assert not marker.exists()
    pickle.loads(payload)  # the payload is live: plain pickle runs it
    assert marker.exists()


@pytest.mark.parametrize("value", [eval, pickle.loads, np.load])
def test_safe_loads_refuses_every_other_global(value):
    with pytest.raises(ConversionError, match="refused to unpickle"):
        safe_loads(pickle.dumps(value), "f")


def test_safe_loads_refuses_object_arrays_and_damaged_pickles():
    with pytest.raises(ConversionError, match="refused an array of object dtype"):
        safe_loads(pickle.dumps([np.array([1, "a"], dtype=object)]), "f")
    with pytest.raises(ConversionError, match=r"^f: not a readable pickle"):
        safe_loads(pickle.dumps({"a": 1})[:-3], "f")


def test_safe_unpackb_decodes_msgpack_numpy_arrays_and_scalars():
    value = {"features": np.ones((2, 3), np.float16), "conf": np.float32(0.5), "ids": [b"00000000"], "t": "x"}
    back = safe_unpackb(msgpack_numpy_dumps(value), "f", "a layout")
    np.testing.assert_array_equal(back["features"], value["features"])
    assert back["features"].dtype == np.float16 and back["conf"] == np.float32(0.5)
    assert back["ids"] == [b"00000000"] and back["t"] == "x"


@pytest.mark.parametrize("array", [np.array(["a", "b"]), np.zeros(2, dtype=[("x", "<f4")]),
                                   np.array([None], dtype=object)], ids=["text", "structured", "object"])
def test_safe_unpackb_refuses_non_numeric_arrays(array):
    with pytest.raises(ConversionError, match="refused a msgpack-numpy array"):
        safe_unpackb(msgpack_numpy_dumps({"a": array}), "f key 'k'", "a layout")
