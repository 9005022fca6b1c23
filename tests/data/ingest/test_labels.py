"""One label space everywhere: detector classes with the background at 0."""
from __future__ import annotations

import numpy as np
import pytest

from interbert.cli import main
from interbert.data.ingest.detections import detections_to_record
from interbert.data.store.errors import FeatureStoreError
from interbert.data.store.record_format import RegionRecord
from interbert.data.store.writer import FeatureStoreWriter
from tests.helpers.data import make_record, write_store


def class_distribution(classes: list, num_classes: int = 1601) -> np.ndarray:
    """Rows peaked at ``classes`` (background-at-0 indices), background 0.3 (never the label)."""
    probs = np.full((len(classes), num_classes), 1e-5, np.float32)
    probs[:, 0] = 0.3
    probs[np.arange(len(classes)), classes] = 0.5
    return probs


def detector_arrays(n: int = 3):
    boxes = np.tile(np.array([[10, 10, 50, 60]], np.float32), (n, 1))
    return boxes, np.ones((n, 2048), np.float32)


def test_zero_based_objects_id_is_stored_plus_one():
    boxes, features = detector_arrays()
    record = detections_to_record("a", 100, 100, boxes, features, objects_id=np.array([0, 4, 1599]))
    assert record.labels.tolist() == [1, 5, 1600]


def test_objects_id_that_counts_the_background_is_kept_with_base_1():
    boxes, features = detector_arrays()
    record = detections_to_record("a", 100, 100, boxes, features, objects_id=np.array([1, 5, 1600]),
                                  objects_id_base=1)
    assert record.labels.tolist() == [1, 5, 1600]


def test_objects_id_and_cls_prob_of_an_extractor_agree_after_the_shift():
    boxes, features = detector_arrays()
    probs = class_distribution([7, 8, 9])
    objects_id = probs[:, 1:].argmax(axis=1)  # what bottom-up-attention writes
    record = detections_to_record("a", 100, 100, boxes, features, cls_prob=probs, objects_id=objects_id)
    assert record.labels.tolist() == [7, 8, 9]
    np.testing.assert_allclose(record.confidences, 0.5)  # derived at the stored label, not one off


def test_labels_from_cls_prob_skip_the_background():
    boxes, features = detector_arrays()
    record = detections_to_record("a", 100, 100, boxes, features, cls_prob=class_distribution([3, 2, 1]))
    assert record.labels.tolist() == [3, 2, 1]
    np.testing.assert_allclose(record.confidences, 0.5)


def test_the_writer_refuses_labels_that_disagree_with_the_class_distribution(tmp_path):
    boxes, features = detector_arrays()
    probs = class_distribution([7, 8, 9])
    wrong = detections_to_record("a", 100, 100, boxes, features, cls_prob=probs, objects_id=np.array([7, 8, 9]))
    with pytest.raises(FeatureStoreError, match=r"image 'a'.*labels.*--objects-id-base 1"):
        with FeatureStoreWriter(tmp_path / "store") as writer:
            writer.add(wrong)
    assert not (tmp_path / "store").exists()


def test_verify_reports_labels_that_disagree_with_the_stored_distribution(tmp_path, capsys):
    from interbert.data.store.record_format import encode_record
    from tests.helpers.data import put_raw

    good = make_record("good", class_probs=True)
    path = write_store(tmp_path / "store", [good])
    shifted = RegionRecord("bad", good.width, good.height, good.features, good.boxes, good.labels - 1,
                           good.confidences, good.class_probs)
    put_raw(path, "bad", encode_record(shifted))
    assert main(["data", "verify", "--features", path]) == 1
    out = capsys.readouterr().out
    assert "labels disagree with class distribution: 1" in out and "'bad'" in out
