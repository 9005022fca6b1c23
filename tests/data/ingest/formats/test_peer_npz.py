"""convert-npz of MILVLG bottom-up-attention.pytorch files: the pickled ``info`` read safely."""
from __future__ import annotations

import numpy as np
import pytest

from interbert.data.ingest.conversion import ConversionOptions
from interbert.data.ingest.detections import ConversionError
from interbert.data.ingest.formats.npz import convert_npz
from interbert.data.store.reader import FeatureStore
from tests.helpers.peer_writers import Poison, assert_stored, detections, write_milvlg_npz


def test_milvlg_npz_labels_and_confidences_come_from_info(tmp_path):
    folder = tmp_path / "npz"
    folder.mkdir()
    images = [detections("COCO_val2014_000000000042", num_regions=5), detections("img2", num_regions=7, seed=3)]
    for image in images:
        write_milvlg_npz(folder, image)
    convert_npz(folder, ConversionOptions(str(tmp_path / "store"), workers=2))
    store = FeatureStore(tmp_path / "store")
    for image in images:  # 0-based objects_id + 1
        back = store.get(image.image_id)
        assert_stored(back, image, class_probs=False)
        np.testing.assert_array_equal(back.extras["attr_labels"], np.zeros((len(image.boxes), 1)))


def test_milvlg_npz_with_a_poisoned_info_is_refused_and_never_runs(tmp_path):
    folder = tmp_path / "npz"
    folder.mkdir()
    marker = tmp_path / "marker"
    write_milvlg_npz(folder, detections("good"))
    write_milvlg_npz(folder, detections("bad"), info_extra={"image_id": Poison(marker)})
    with pytest.raises(ConversionError, match=r"bad\.npz member info: refused to unpickle: the record names "
                                              r"posix\.system"):
        convert_npz(folder, ConversionOptions(str(tmp_path / "store")))
    result = convert_npz(folder, ConversionOptions(str(tmp_path / "store"), skip_unreadable=True))
    assert dict(result.skipped) == {"unreadable record": 1}
    assert list(FeatureStore(tmp_path / "store").keys()) == ["good"]
    assert not marker.exists()


def test_milvlg_info_holding_an_object_array_is_refused(tmp_path):
    folder = tmp_path / "npz"
    folder.mkdir()
    write_milvlg_npz(folder, detections("obj"), info_extra={"objects_id": np.array([1, "x"], dtype=object)})
    with pytest.raises(ConversionError, match=r"obj\.npz member info: refused an array of object dtype"):
        convert_npz(folder, ConversionOptions(str(tmp_path / "store")))
