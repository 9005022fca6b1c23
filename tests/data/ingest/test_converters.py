"""Detector output → store: bottom-up-attention TSV and per-image npz, good and bad input."""
from __future__ import annotations

import numpy as np
import pytest

from interbert.data.ingest.conversion import ConversionOptions
from interbert.data.ingest.detections import ConversionError
from interbert.data.ingest.formats.npz import convert_npz
from interbert.data.ingest.formats.tsv import convert_tsv
from interbert.data.store.reader import FeatureStore
from tests.helpers.data import make_record, tsv_row


def test_tsv_round_trip_equals_input_up_to_fp16(tmp_path):
    records = [make_record(f"{i}", num_regions=4 + i, seed=i) for i in range(3)]
    first, second = tmp_path / "a.tsv", tmp_path / "b.tsv"
    first.write_text("".join(tsv_row(r, with_detections=True) for r in records[:2]))
    second.write_text(tsv_row(records[2], with_detections=True))
    convert_tsv([first, second], ConversionOptions(str(tmp_path / "store")))
    store = FeatureStore(tmp_path / "store")
    assert len(store) == 3
    for record in records:
        back = store.get(record.image_id)
        np.testing.assert_array_equal(back.features, record.features.astype(np.float16))
        np.testing.assert_array_equal(back.boxes, record.boxes)
        np.testing.assert_array_equal(back.labels, record.labels + 1)  # 0-based objects_id, background at 0
        np.testing.assert_array_equal(back.confidences, record.confidences)
        assert back.extras["attr_labels"].shape == (record.num_regions, 1)


def test_tsv_cls_prob_gives_labels_confidences_and_distribution(tmp_path):
    record = make_record("7", num_regions=3)
    probs = np.full((3, 1601), 1e-4, np.float32)
    probs[:, 0] = 0.5  # background is never the label
    probs[[0, 1, 2], [10, 20, 30]] = 0.4
    (tmp_path / "a.tsv").write_text(tsv_row(record, cls_prob=probs))
    convert_tsv([tmp_path / "a.tsv"], ConversionOptions(str(tmp_path / "store")))
    back = FeatureStore(tmp_path / "store").get("7")
    assert back.labels.tolist() == [10, 20, 30]
    np.testing.assert_allclose(back.confidences, 0.4)
    np.testing.assert_array_equal(back.class_probs, probs.astype(np.float16))


def test_tsv_header_row_names_the_columns(tmp_path):
    record = make_record("9", num_regions=2)
    header = "img_id\timg_w\timg_h\tnum_boxes\tboxes\tfeatures\n"
    (tmp_path / "a.tsv").write_text(header + tsv_row(record))
    convert_tsv([tmp_path / "a.tsv"], ConversionOptions(str(tmp_path / "store")))
    assert FeatureStore(tmp_path / "store").get("9").labels.tolist() == [-1, -1]


def test_tsv_truncated_line_names_file_and_line(tmp_path):
    rows = tsv_row(make_record("1")) + tsv_row(make_record("2")).rsplit("\t", 1)[0] + "\n"
    (tmp_path / "a.tsv").write_text(rows)
    with pytest.raises(ConversionError, match=r"a\.tsv:2: 5 columns"):
        convert_tsv([tmp_path / "a.tsv"], ConversionOptions(str(tmp_path / "store")))
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_skip_unreadable_drops_only_the_bad_row_of_its_chunk(tmp_path, workers):
    # Rows 1 and 3 share a chunk with the truncated row 2: only row 2 is lost.
    rows = [tsv_row(make_record(str(i), seed=i)) for i in range(4)]
    rows[2] = rows[2].rsplit("\t", 1)[0] + "\n"
    (tmp_path / "a.tsv").write_text("".join(rows))
    result = convert_tsv([tmp_path / "a.tsv"], ConversionOptions(str(tmp_path / "store"), skip_unreadable=True,
                                                                 workers=workers))
    assert sorted(FeatureStore(tmp_path / "store").keys()) == ["0", "1", "3"]
    assert result.skipped == {"unreadable record": 1}
    assert "a.tsv:3: 5 columns" in result.skip_examples["unreadable record"][0]


def test_tsv_wrong_feature_size_is_an_error_naming_the_image(tmp_path):
    (tmp_path / "a.tsv").write_text(tsv_row(make_record("5", feature_size=1024)))
    with pytest.raises(ConversionError, match=r"a\.tsv:1 \(image '5'\).*1024 values per region"):
        convert_tsv([tmp_path / "a.tsv"], ConversionOptions(str(tmp_path / "store")))


def test_tsv_nan_record_is_skipped_and_counted_or_strict_error(tmp_path):
    bad = make_record("bad")
    bad.features[1, 3] = np.nan
    (tmp_path / "a.tsv").write_text(tsv_row(make_record("good")) + tsv_row(bad))
    result = convert_tsv([tmp_path / "a.tsv"], ConversionOptions(str(tmp_path / "store")))
    assert result.skipped == {"non-finite features": 1}
    assert "a.tsv:2" in result.skip_examples["non-finite features"][0]
    assert list(FeatureStore(tmp_path / "store").keys()) == ["good"]
    with pytest.raises(ConversionError, match=r"a\.tsv:2 \(image 'bad'\).*non-finite features"):
        convert_tsv([tmp_path / "a.tsv"], ConversionOptions(str(tmp_path / "strict"), strict=True))


def test_tsv_image_without_boxes_is_skipped_and_counted(tmp_path):
    empty = "\t".join(["3", "640", "480", "0", "", ""]) + "\n"
    (tmp_path / "a.tsv").write_text(tsv_row(make_record("1")) + empty)
    result = convert_tsv([tmp_path / "a.tsv"], ConversionOptions(str(tmp_path / "store")))
    assert result.skipped == {"no regions": 1}


def test_tsv_zero_area_box_is_skipped_and_counted(tmp_path):
    record = make_record("z")
    record.boxes[2, 2] = record.boxes[2, 0]
    (tmp_path / "a.tsv").write_text(tsv_row(record))
    result = convert_tsv([tmp_path / "a.tsv"], ConversionOptions(str(tmp_path / "store")))
    assert result.skipped == {"zero-area box": 1}


def test_npz_round_trip_with_alternative_key_names(tmp_path):
    folder = tmp_path / "npz"
    folder.mkdir()
    a, b = make_record("a", num_regions=3), make_record("b", num_regions=6, seed=1)
    np.savez(folder / "a.npz", x=a.features, bbox=a.boxes, image_w=640, image_h=480,
             objects_id=a.labels, objects_conf=a.confidences)
    np.savez(folder / "b.npz", features=b.features, boxes=b.boxes, w=np.array([640]), h=np.array([480]),
             labels=b.labels, scores=b.confidences)
    convert_npz(folder, ConversionOptions(str(tmp_path / "store")))
    store = FeatureStore(tmp_path / "store")
    for record in (a, b):
        back = store.get(record.image_id)
        np.testing.assert_array_equal(back.features, record.features.astype(np.float16))
        np.testing.assert_array_equal(back.boxes, record.boxes)
        np.testing.assert_array_equal(back.labels, record.labels + 1)
        np.testing.assert_array_equal(back.confidences, record.confidences)


def test_npz_pickled_array_is_refused(tmp_path):
    folder = tmp_path / "npz"
    folder.mkdir()
    record = make_record("p")
    np.savez(folder / "p.npz", x=record.features, bbox=record.boxes, image_w=640,
             image_h=np.array([{"height": 480}], dtype=object))
    with pytest.raises(ConversionError, match=r"p\.npz: array 'image_h' is a pickled object"):
        convert_npz(folder, ConversionOptions(str(tmp_path / "store")))


def test_npz_missing_features_names_the_accepted_keys(tmp_path):
    folder = tmp_path / "npz"
    folder.mkdir()
    np.savez(folder / "q.npz", bbox=np.zeros((1, 4)), image_w=1, image_h=1)
    with pytest.raises(ConversionError, match=r"q\.npz: no features array \(looked for features, x"):
        convert_npz(folder, ConversionOptions(str(tmp_path / "store")))
