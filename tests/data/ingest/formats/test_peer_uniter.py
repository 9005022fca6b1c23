"""convert-lmdb --format uniter: UNITER image LMDBs (msgpack and compressed), sizes, bad input."""
from __future__ import annotations

import io
import json
import os
import shutil

import lmdb
import msgpack_numpy
import numpy as np
import pytest

from interbert.cli import main
from interbert.data.ingest.conversion import ConversionOptions
from interbert.data.ingest.detections import ConversionError
from interbert.data.ingest.formats.uniter_lmdb import convert_uniter_lmdb
from interbert.data.store.reader import FeatureStore
from tests.helpers.peer_writers import (
    Poison,
    assert_one_error_line,
    detections,
    msgpack_numpy_dumps,
    put_value,
    uniter_extractor_npz,
    uniter_nbb,
    write_uniter_lmdb,
)


def uniter_source(tmp_path, compress=False, flat_conf=False):
    """Three images whose float64 detector confidences (the extractor's max_conf) leave 5 of their
    6 boxes above UNITER's threshold 0.2."""
    images = [detections(f"dev-{i}-img0", num_regions=6, seed=i) for i in range(3)]
    confs = [np.linspace(0.9, 0.05, 6) + 0.07 * i for i in range(3)]
    lmdb_dir = write_uniter_lmdb(tmp_path / "img_db" / "nlvr2_dev", images, confs, compress=compress,
                                 flat_conf=flat_conf)
    return lmdb_dir, images, confs


def expected_rows(image, conf):
    """What UNITER stored: the extractor's float16 arrays cut to nbb boxes (threshold 0.2, at least 2)."""
    npz = uniter_extractor_npz(image, conf)
    nbb = uniter_nbb(npz["conf"], 0.2, 100, 2)
    return nbb, npz["norm_bb"][:nbb].astype(np.float32), npz["conf"][:nbb].reshape(-1)


def uniter_value(lmdb_dir, key: str) -> dict:
    """The arrays of one UNITER record, decoded by UNITER's own libraries (our test data only)."""
    env = lmdb.open(lmdb_dir, readonly=True, lock=False)
    with env.begin() as txn:
        value = txn.get(key.encode())
    env.close()
    if value[:4] == b"PK\x03\x04":
        with np.load(io.BytesIO(value)) as npz:
            return {name: npz[name] for name in npz.files}
    return msgpack_numpy.unpackb(value)


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


@pytest.mark.parametrize("compress", [False, True], ids=["msgpack", "compressed"])
def test_uniter_records_hold_conf_as_one_column_and_it_is_read(tmp_path, compress):
    """UNITER's extractor saves conf reshaped to (N, 1) and convert_imgdir.py keeps it 2-d: every
    record of a real UNITER LMDB is so, and must convert (it was once refused as not 1-d)."""
    lmdb_dir, images, confs = uniter_source(tmp_path, compress)
    value = uniter_value(lmdb_dir, f"nlvr2_{images[0].image_id}.npz")
    nbb = expected_rows(images[0], confs[0])[0]
    assert value["conf"].shape == (nbb, 1) and value["conf"].dtype == np.float16
    assert value["norm_bb"].shape == (nbb, 6) and value["soft_labels"].shape == (nbb, 1601)
    assert list(value)[:4] == ["norm_bb", "features", "conf", "soft_labels"]
    if compress:  # numpy 1.x stored savez_compressed's allow_pickle=True keyword as a member
        assert value["allow_pickle"].shape == () and value["allow_pickle"].dtype == np.bool_
    result = convert_uniter_lmdb(lmdb_dir, ConversionOptions(str(tmp_path / "store")))
    assert result.metadata.record_count == 3 and not result.skipped
    back = FeatureStore(tmp_path / "store").get(f"nlvr2_{images[0].image_id}")
    np.testing.assert_array_equal(back.confidences, value["conf"].reshape(-1).astype(np.float32))


def test_uniter_conf_of_one_dimension_is_read_too(tmp_path):
    lmdb_dir, images, confs = uniter_source(tmp_path, flat_conf=True)
    convert_uniter_lmdb(lmdb_dir, ConversionOptions(str(tmp_path / "store")))
    _, _, conf16 = expected_rows(images[2], confs[2])
    np.testing.assert_array_equal(FeatureStore(tmp_path / "store").get(f"nlvr2_{images[2].image_id}").confidences,
                                  conf16.astype(np.float32))


@pytest.mark.parametrize("field, array, message", [
    ("conf", np.zeros((3, 2), np.float16),
     r"conf is shape \(3, 2\), dtype float16; UNITER writes a float array of N or N×1"),
    ("norm_bb", np.zeros((3, 4), np.float16),
     r"norm_bb is shape \(3, 4\), dtype float16; UNITER writes a float array of N×6"),
    ("soft_labels", np.zeros((2, 1601), np.float16),
     r"soft_labels is shape \(2, 1601\).*N boxes: the rows of features"),
    ("features", np.zeros(3, np.float16),
     r"features is shape \(3,\), dtype float16; UNITER writes a float array of N×F"),
])
def test_uniter_arrays_of_another_shape_are_named(tmp_path, field, array, message):
    lmdb_dir, _, _ = uniter_source(tmp_path)
    arrays = {"features": np.zeros((3, 2048), np.float16), "norm_bb": np.zeros((3, 6), np.float16),
              "conf": np.zeros((3, 1), np.float16), "soft_labels": np.zeros((3, 1601), np.float16), field: array}
    put_value(lmdb_dir, "nlvr2_dev-1-img0.npz", msgpack_numpy_dumps(arrays))
    with pytest.raises(ConversionError, match=r"key 'nlvr2_dev-1-img0\.npz': " + message):
        convert_uniter_lmdb(lmdb_dir, ConversionOptions(str(tmp_path / "store")))


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
