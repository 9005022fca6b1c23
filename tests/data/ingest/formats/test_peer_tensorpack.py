"""convert-lmdb --format tensorpack: the InterBERT release's Conceptual Captions LMDB and captions."""
from __future__ import annotations

import json

import numpy as np
import pytest

from interbert.cli import main
from interbert.data.ingest.conversion import ConversionOptions
from interbert.data.ingest.detections import ConversionError
from interbert.data.ingest.formats.tensorpack_lmdb import convert_tensorpack_lmdb
from interbert.data.store.reader import FeatureStore
from tests.helpers.peer_writers import (
    assert_one_error_line,
    assert_stored,
    conceptual_caption_datapoint,
    detections,
    msgpack_numpy_dumps,
    put_value,
    write_tensorpack_lmdb,
)


def cc_source(tmp_path, count=3):
    images = [detections(str(3000000 + i), num_regions=4 + i % 3, seed=i) for i in range(count)]
    captions = [f"a  photo of\tthing {i}" for i in range(count)]
    write_tensorpack_lmdb(tmp_path / "training_feat_all.lmdb",
                          [conceptual_caption_datapoint(image, caption) for image, caption in zip(images, captions)])
    return str(tmp_path / "training_feat_all.lmdb"), images


def test_tensorpack_lmdb_round_trip_with_captions(tmp_path):
    src, images = cc_source(tmp_path)
    result = convert_tensorpack_lmdb(src, ConversionOptions(str(tmp_path / "store")))
    assert result.captions == [(image.image_id, f"a photo of thing {i}") for i, image in enumerate(images)]
    store = FeatureStore(tmp_path / "store")
    for image in images:
        assert_stored(store.get(image.image_id), image)


def test_convert_lmdb_tensorpack_command_writes_the_captions_manifest(tmp_path, capsys):
    src, images = cc_source(tmp_path, count=20)
    captions = tmp_path / "cc_train.jsonl"
    command = ["data", "convert-lmdb", "--format", "tensorpack", "--workers", "2", "--captions-out", str(captions),
               "--out", str(tmp_path / "store"), src]
    assert main(command) == 0
    assert f"wrote {captions}: 20 captions (split train)" in capsys.readouterr().out
    lines = [json.loads(line) for line in captions.read_text().splitlines()]
    assert lines[5] == {"image_id": images[5].image_id, "caption": "a photo of thing 5", "split": "train",
                        "source": "cc"}
    assert [line["image_id"] for line in lines] == [image.image_id for image in images]
    assert len(FeatureStore(tmp_path / "store")) == 20
    # an existing manifest is refused before anything is read, unless --overwrite
    assert main([*command[:-3], "--out", str(tmp_path / "other"), src]) == 2
    assert "cc_train.jsonl already exists" in capsys.readouterr().err and not (tmp_path / "other").exists()
    assert main([*command[:-3], "--overwrite", "--out", str(tmp_path / "store"), src]) == 0


def test_tensorpack_datapoint_of_another_layout_names_the_key(tmp_path):
    src, _ = cc_source(tmp_path)
    put_value(src, "00000001", msgpack_numpy_dumps([np.zeros((2, 4), np.float32), "caption"]))
    with pytest.raises(ConversionError, match=r"training_feat_all\.lmdb key '00000001': the datapoint is not the "
                                              r"8-field list \[features, cls_prob, boxes, num_boxes"):
        convert_tensorpack_lmdb(src, ConversionOptions(str(tmp_path / "store")))


def test_tensorpack_non_msgpack_record_is_an_error_or_a_counted_skip(tmp_path, capsys):
    src, _ = cc_source(tmp_path)
    put_value(src, "00000002", b"ARROW1\x00\x00\xff\xff\xff\xff")  # e.g. a pyarrow-serialised datapoint
    assert main(["data", "convert-lmdb", "--format", "tensorpack", "--out", str(tmp_path / "store"), src]) == 2
    err = capsys.readouterr().err
    assert_one_error_line(err)
    assert "key '00000002': not a msgpack record of tensorpack's LMDBSerializer" in err and "pyarrow" in err
    assert main(["data", "convert-lmdb", "--format", "tensorpack", "--skip-unreadable", "--out",
                 str(tmp_path / "store"), src]) == 0
    assert "2 images" in capsys.readouterr().out


def test_a_caption_pandas_read_as_nan_gives_no_caption_not_the_text_nan(tmp_path):
    """vilbert_beta's preprocessing reads the captions with pandas.read_csv: an empty caption
    field is the float NaN in the datapoint."""
    images = [detections(str(3000000 + i), num_regions=4, seed=i) for i in range(2)]
    write_tensorpack_lmdb(tmp_path / "cc.lmdb", [conceptual_caption_datapoint(images[0], float("nan")),
                                                 conceptual_caption_datapoint(images[1], "a dog")])
    result = convert_tensorpack_lmdb(str(tmp_path / "cc.lmdb"), ConversionOptions(str(tmp_path / "store")))
    assert result.captions == [(images[1].image_id, "a dog")]
    assert len(FeatureStore(tmp_path / "store")) == 2
