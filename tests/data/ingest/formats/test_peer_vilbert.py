"""convert-lmdb --format vilbert: ViLBERT / InterBERT-release image LMDBs, good, poisoned and bad."""
from __future__ import annotations

import pickle

import pytest

from interbert.cli import main
from interbert.data.ingest.conversion import ConversionOptions
from interbert.data.ingest.detections import ConversionError
from interbert.data.ingest.formats.vilbert_lmdb import convert_vilbert_lmdb
from interbert.data.store.reader import FeatureStore
from tests.helpers.peer_writers import (
    Poison,
    assert_one_error_line,
    assert_stored,
    detections,
    put_value,
    write_vilbert_numpy_lmdb,
    write_vilbert_tsv_lmdb,
)


@pytest.mark.parametrize("python36", [False, True], ids=["dict-protocol4", "ordereddict-protocol3"])
def test_vilbert_tsv_row_lmdb_round_trip(tmp_path, python36):
    images = [detections(str(100 + i), num_regions=3 + i, seed=i) for i in range(3)]
    write_vilbert_tsv_lmdb(tmp_path / "src.lmdb", images, tmp_path, python36=python36)
    result = convert_vilbert_lmdb(str(tmp_path / "src.lmdb"), ConversionOptions(str(tmp_path / "store")))
    assert result.metadata.record_count == 3 and result.metadata.has_class_probs
    store = FeatureStore(tmp_path / "store")
    for image in images:
        assert_stored(store.get(image.image_id), image)


def test_vilbert_tsv_rows_without_cls_prob_have_no_labels(tmp_path):
    image = detections("7", num_regions=4)
    write_vilbert_tsv_lmdb(tmp_path / "src.lmdb", [image], tmp_path, with_cls_prob=False)
    convert_vilbert_lmdb(str(tmp_path / "src.lmdb"), ConversionOptions(str(tmp_path / "store")))
    back = FeatureStore(tmp_path / "store").get("7")
    assert_stored(back, image, labels=False)
    assert back.labels.tolist() == [-1] * 4 and back.class_probs is None


@pytest.mark.parametrize("with_cls_prob", [False, True])
def test_vilbert_numpy_lmdb_takes_regions_from_the_features_not_num_boxes(tmp_path, with_cls_prob):
    images = [detections("a", num_regions=6), detections("b", num_regions=4, seed=1)]
    write_vilbert_numpy_lmdb(tmp_path / "src.lmdb", images, tmp_path, with_cls_prob=with_cls_prob, nonzero_boxes=2)
    convert_vilbert_lmdb(str(tmp_path / "src.lmdb"), ConversionOptions(str(tmp_path / "store")))
    store = FeatureStore(tmp_path / "store")
    for image in images:
        back = store.get(image.image_id)
        assert back.num_regions == len(image.boxes)
        assert_stored(back, image, labels=with_cls_prob)


def test_vilbert_poisoned_record_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "marker"
    write_vilbert_tsv_lmdb(tmp_path / "src.lmdb", [detections("1"), detections("2", seed=2)], tmp_path)
    put_value(tmp_path / "src.lmdb", "2", pickle.dumps({"image_id": Poison(marker), "features": "AAAA"}))
    with pytest.raises(ConversionError, match=r"src\.lmdb key '2': refused to unpickle: the record names "
                                              r"posix\.system"):
        convert_vilbert_lmdb(str(tmp_path / "src.lmdb"), ConversionOptions(str(tmp_path / "store")))
    result = convert_vilbert_lmdb(str(tmp_path / "src.lmdb"),
                                  ConversionOptions(str(tmp_path / "store"), skip_unreadable=True))
    assert dict(result.skipped) == {"unreadable record": 1} and list(FeatureStore(tmp_path / "store").keys()) == ["1"]
    assert not marker.exists()


def test_vilbert_poisoned_key_listing_is_refused(tmp_path):
    marker = tmp_path / "marker"
    write_vilbert_tsv_lmdb(tmp_path / "src.lmdb", [detections("1")], tmp_path)
    put_value(tmp_path / "src.lmdb", "keys", pickle.dumps([b"1", Poison(marker)]))
    with pytest.raises(ConversionError, match=r"src\.lmdb key 'keys': refused to unpickle"):
        convert_vilbert_lmdb(str(tmp_path / "src.lmdb"), ConversionOptions(str(tmp_path / "store")))
    assert not marker.exists()


def test_vilbert_record_with_truncated_features_names_the_key(tmp_path):
    write_vilbert_tsv_lmdb(tmp_path / "src.lmdb", [detections("1")], tmp_path)
    put_value(tmp_path / "src.lmdb", "1", pickle.dumps({"image_id": "1", "image_w": "640", "image_h": "480",
                                                      "num_boxes": "5", "boxes": "AAAA", "features": "AAAA"}))
    with pytest.raises(ConversionError, match=r"src\.lmdb key '1' field features, num_boxes 5: 3 bytes"):
        convert_vilbert_lmdb(str(tmp_path / "src.lmdb"), ConversionOptions(str(tmp_path / "store")))


def test_convert_lmdb_command_with_workers_and_shards(tmp_path, capsys):
    images = [detections(str(i), num_regions=3, seed=i) for i in range(40)]
    write_vilbert_tsv_lmdb(tmp_path / "src.lmdb", images, tmp_path)
    status = main(["data", "convert-lmdb", "--format", "vilbert", "--workers", "2", "--shards", "2",
                   "--out", str(tmp_path / "store"), str(tmp_path / "src.lmdb")])
    assert status == 0 and "40 images, 120 regions" in capsys.readouterr().out
    store = FeatureStore(tmp_path / "store")
    assert sorted(store.keys(), key=int) == [image.image_id for image in images]
    assert_stored(store.get("17"), images[17])


@pytest.mark.parametrize("case", ["unknown format", "poisoned record", "no such lmdb", "flag of another format"])
def test_convert_lmdb_bad_input_is_one_line_and_status_2(tmp_path, capsys, case):
    marker = tmp_path / "marker"
    write_vilbert_tsv_lmdb(tmp_path / "src.lmdb", [detections("1")], tmp_path)
    put_value(tmp_path / "src.lmdb", "1", pickle.dumps(Poison(marker)))
    args = {"unknown format": ["--format", "lxmert", str(tmp_path / "src.lmdb")],
            "poisoned record": ["--format", "vilbert", str(tmp_path / "src.lmdb")],
            "no such lmdb": ["--format", "vilbert", str(tmp_path / "absent.lmdb")],
            "flag of another format": ["--format", "vilbert", "--captions-out", str(tmp_path / "c.jsonl"),
                                       str(tmp_path / "src.lmdb")]}[case]
    assert main(["data", "convert-lmdb", "--out", str(tmp_path / "store"), *args]) == 2
    assert_one_error_line(capsys.readouterr().err)
    assert not marker.exists() and not (tmp_path / "store").exists()
