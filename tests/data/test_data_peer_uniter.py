"""convert-lmdb --format uniter: UNITER image LMDBs (msgpack and compressed), sizes, bad input."""
from __future__ import annotations

import json
import os
import shutil

import msgpack_numpy
import numpy as np
import pytest

from peer_writers import (Poison, assert_one_error_line, detections, msgpack_numpy_dumps, put_value,
                          uniter_nbb, write_uniter_lmdb)
from interbert.cli import main
from interbert.data.conversion import ConversionOptions
from interbert.data.detections import ConversionError
from interbert.data.feature_store import FeatureStore
from interbert.data.uniter_lmdb import convert_uniter_lmdb


def uniter_source(tmp_path, compress=False):
    images = [detections(f"dev-{i}-img0", num_regions=6, seed=i) for i in range(3)]
    confs = [np.linspace(0.9, 0.05, 6).astype(np.float32) + 0.01 * i for i in range(3)]
    lmdb_dir = write_uniter_lmdb(tmp_path / "img_db" / "nlvr2_dev", images, confs, compress=compress)
    return lmdb_dir, images, confs


def expected_rows(image, conf):
    """What UNITER stored: float16 arrays cut to nbb boxes (threshold 0.2, at least 2)."""
    nbb = uniter_nbb(conf, 0.2, 100, 2)
    return nbb, image.norm_bb.astype(np.float16)[:nbb].astype(np.float32), conf.astype(np.float16)[:nbb]


@pytest.mark.parametrize("compress", [False, True], ids=["msgpack", "compressed"])
def test_uniter_lmdb_round_trip_keeps_normalised_boxes(tmp_path, compress):
    lmdb_dir, images, confs = uniter_source(tmp_path, compress)
    result = convert_uniter_lmdb(lmdb_dir, ConversionOptions(str(tmp_path / "store")))
    assert result.metadata.record_count == 3
    store = FeatureStore(tmp_path / "store")
    for image, conf in zip(images, confs):
        nbb, norm_bb, conf16 = expected_rows(image, conf)
        back = store.get(f"nlvr2_{image.image_id}")  # the key without .npz
        assert back.num_regions == nbb < len(image.boxes)
        assert (back.width, back.height) == (1.0, 1.0)
        np.testing.assert_array_equal(back.features, image.features.astype(np.float16)[:nbb])
        np.testing.assert_array_equal(back.boxes, norm_bb[:, :4])
        np.testing.assert_array_equal(back.labels, image.labels[:nbb])
        np.testing.assert_array_equal(back.confidences, conf16.astype(np.float32))
        np.testing.assert_array_equal(back.class_probs, image.cls_prob.astype(np.float16)[:nbb])


@pytest.mark.parametrize("json_lines", [False, True])
def test_uniter_image_sizes_scale_boxes_to_pixels(tmp_path, json_lines):
    lmdb_dir, images, confs = uniter_source(tmp_path)
    sizes = {f"nlvr2_{image.image_id}": [image.width, image.height] for image in images}
    text = "".join(json.dumps({k: v}) + "\n" for k, v in sizes.items()) if json_lines else json.dumps(sizes)
    (tmp_path / "sizes.json").write_text(text)
    convert_uniter_lmdb(lmdb_dir, ConversionOptions(str(tmp_path / "store")), image_sizes=str(tmp_path / "sizes.json"))
    back = FeatureStore(tmp_path / "store").get(f"nlvr2_{images[1].image_id}")
    _, norm_bb, _ = expected_rows(images[1], confs[1])
    assert (back.width, back.height) == (640.0, 480.0)
    np.testing.assert_allclose(back.boxes, norm_bb[:, :4] * [640, 480, 640, 480], rtol=1e-6)
    np.testing.assert_allclose(back.boxes, images[1].boxes[:len(back.boxes)], atol=0.5)  # fp16 rounding


def test_uniter_image_missing_from_sizes_is_an_error_naming_it(tmp_path):
    lmdb_dir, images, _ = uniter_source(tmp_path)
    (tmp_path / "sizes.json").write_text(json.dumps({f"nlvr2_{images[0].image_id}": [640, 480]}))
    with pytest.raises(ConversionError, match=r"key 'nlvr2_dev-1-img0.npz': image 'nlvr2_dev-1-img0' has no size "
                                              r"in .*sizes\.json"):
        convert_uniter_lmdb(lmdb_dir, ConversionOptions(str(tmp_path / "store")),
                            image_sizes=str(tmp_path / "sizes.json"))


def test_uniter_lmdb_without_its_nbb_file_names_the_expected_file(tmp_path):
    lmdb_dir, _, _ = uniter_source(tmp_path)
    os.remove(os.path.join(os.path.dirname(lmdb_dir), "nbb_th0.2_max100_min2.json"))
    with pytest.raises(ConversionError, match=r"nbb_th0\.2_max100_min2\.json are missing beside the LMDB.*"
                                              r"nbb_th\*_max\*_min\*\.json"):
        convert_uniter_lmdb(lmdb_dir, ConversionOptions(str(tmp_path / "store")))


def test_uniter_lmdb_under_another_name_needs_exactly_one_nbb_file(tmp_path):
    lmdb_dir, _, _ = uniter_source(tmp_path)
    renamed = os.path.join(os.path.dirname(lmdb_dir), "features")
    shutil.move(lmdb_dir, renamed)
    convert_uniter_lmdb(renamed, ConversionOptions(str(tmp_path / "store")))
    os.remove(os.path.join(os.path.dirname(lmdb_dir), "nbb_th0.2_max100_min2.json"))
    with pytest.raises(ConversionError, match=r"needs its box counts nbb_th\*_max\*_min\*\.json beside it \(none"):
        convert_uniter_lmdb(renamed, ConversionOptions(str(tmp_path / "other")))


def test_uniter_object_array_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "marker"
    lmdb_dir, images, _ = uniter_source(tmp_path)
    poisoned = np.empty(1, dtype=object)
    poisoned[0] = Poison(marker)
    value = msgpack_numpy_dumps({"features": images[0].features.astype(np.float16), "norm_bb": poisoned})
    live = np.empty(1, dtype=object)
    live[0] = Poison(tmp_path / "peer_decoder_ran_it")
    msgpack_numpy.unpackb(msgpack_numpy_dumps({"norm_bb": live}))  # the payload is live: msgpack_numpy runs it
    assert (tmp_path / "peer_decoder_ran_it").exists()
    put_value(lmdb_dir, "nlvr2_dev-0-img0.npz", value)
    with pytest.raises(ConversionError, match=r"key 'nlvr2_dev-0-img0\.npz': refused a msgpack-numpy array of kind "
                                              r"b'O'"):
        convert_uniter_lmdb(lmdb_dir, ConversionOptions(str(tmp_path / "store")))
    assert not marker.exists()


def test_uniter_undecodable_record_is_skipped_with_skip_unreadable(tmp_path, capsys):
    lmdb_dir, _, _ = uniter_source(tmp_path)
    put_value(lmdb_dir, "nlvr2_dev-2-img0.npz", b"\xc1 not msgpack")
    assert main(["data", "convert-lmdb", "--format", "uniter", "--out", str(tmp_path / "store"), lmdb_dir]) == 2
    assert_one_error_line(capsys.readouterr().err)
    assert main(["data", "convert-lmdb", "--format", "uniter", "--skip-unreadable", "--out",
                 str(tmp_path / "store"), lmdb_dir]) == 0
    out = capsys.readouterr().out
    assert "2 images" in out and "skipped 1 images (unreadable record)" in out and "width = height = 1.0" in out


def test_uniter_keep_all_lmdb_needs_no_nbb_file(tmp_path):
    lmdb_dir, images, confs = uniter_source(tmp_path)
    os.remove(os.path.join(os.path.dirname(lmdb_dir), "nbb_th0.2_max100_min2.json"))
    shutil.move(lmdb_dir, os.path.join(os.path.dirname(lmdb_dir), "all"))
    convert_uniter_lmdb(os.path.join(os.path.dirname(lmdb_dir), "all"), ConversionOptions(str(tmp_path / "store")))
    nbb, _, _ = expected_rows(images[0], confs[0])
    assert FeatureStore(tmp_path / "store").get(f"nlvr2_{images[0].image_id}").num_regions == nbb
