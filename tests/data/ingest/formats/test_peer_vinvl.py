"""convert-vinvl: VinVL / Oscar+ feature TSVs with .lineidx, predictions and labelmap; bad input."""
from __future__ import annotations

import os

import numpy as np
import pytest

from interbert.cli import main
from interbert.data.ingest.conversion import ConversionOptions
from interbert.data.ingest.detections import ConversionError
from interbert.data.ingest.formats.vinvl import convert_vinvl
from interbert.data.store.reader import FeatureStore
from tests.helpers.peer_writers import (
    assert_one_error_line,
    assert_stored,
    detections,
    tsv_writer,
    vinvl_feature_row,
    vinvl_labelmap,
    vinvl_prediction_row,
)

CLASS_NAMES = [f"class{i}" for i in range(1, 1601)]


def vinvl_source(tmp_path, json_layout=False, with_size=True, count=3):
    images = [detections(f"coco_{i}", num_regions=3 + i, seed=i) for i in range(count)]
    tsv_writer([vinvl_feature_row(image, json_layout) for image in images], tmp_path / "features.tsv")
    # predictions in another order than the features: rows are matched by image id
    tsv_writer([vinvl_prediction_row(image, CLASS_NAMES, with_size) for image in reversed(images)],
               tmp_path / "predictions.tsv")
    vinvl_labelmap(tmp_path / "labelmap.json", CLASS_NAMES)
    return str(tmp_path / "features.tsv"), str(tmp_path / "predictions.tsv"), str(tmp_path / "labelmap.json"), images


def test_vinvl_with_predictions_and_labelmap_stores_pixel_boxes_labels_and_confidences(tmp_path):
    features, predictions, labelmap, images = vinvl_source(tmp_path)
    convert_vinvl(features, ConversionOptions(str(tmp_path / "store")), predictions=predictions, labelmap=labelmap)
    store = FeatureStore(tmp_path / "store")
    for image in images:  # label_to_idx is 1-based: background at 0
        assert_stored(store.get(image.image_id), image, class_probs=False)


def test_vinvl_json_rows_and_size_less_predictions_keep_normalised_boxes(tmp_path):
    features, predictions, labelmap, images = vinvl_source(tmp_path, json_layout=True, with_size=False)
    convert_vinvl(features, ConversionOptions(str(tmp_path / "store")), predictions=predictions, labelmap=labelmap)
    back = FeatureStore(tmp_path / "store").get(images[2].image_id)
    assert (back.width, back.height) == (1.0, 1.0)
    np.testing.assert_array_equal(back.boxes, images[2].norm_bb[:, :4])
    np.testing.assert_array_equal(back.labels, images[2].labels)


def test_vinvl_without_predictions_has_positions_and_no_labels(tmp_path, capsys):
    features, _, _, images = vinvl_source(tmp_path)
    assert main(["data", "convert-vinvl", "--workers", "2", "--out", str(tmp_path / "store"), features]) == 0
    assert "labels -1" in capsys.readouterr().out
    back = FeatureStore(tmp_path / "store").get(images[1].image_id)
    assert (back.width, back.height) == (1.0, 1.0) and back.labels.tolist() == [-1] * 4
    np.testing.assert_array_equal(back.boxes, images[1].norm_bb[:, :4])
    assert back.confidences is None


def test_vinvl_without_labelmap_says_labels_are_missing(tmp_path, capsys):
    features, predictions, _, images = vinvl_source(tmp_path)
    assert main(["data", "convert-vinvl", "--predictions", predictions, "--out", str(tmp_path / "store"),
                 features]) == 0
    out = capsys.readouterr().out
    assert "labels are -1" in out and "give --labelmap" in out
    back = FeatureStore(tmp_path / "store").get(images[0].image_id)
    assert back.labels.tolist() == [-1] * 3
    np.testing.assert_array_equal(back.confidences, images[0].confidences)


def test_vinvl_missing_lineidx_means_the_tsv_is_scanned(tmp_path):
    features, _, _, images = vinvl_source(tmp_path)
    os.remove(tmp_path / "features.lineidx")
    convert_vinvl(features, ConversionOptions(str(tmp_path / "store")))
    assert sorted(FeatureStore(tmp_path / "store").keys()) == [image.image_id for image in images]


def test_vinvl_row_of_the_wrong_width_names_file_line_and_image(tmp_path, capsys):
    images = [detections("ok"), detections("narrow", feature_size=2040)]
    tsv_writer([vinvl_feature_row(image) for image in images], tmp_path / "features.tsv")
    with pytest.raises(ConversionError, match=r"features\.tsv:2 \(image 'narrow'\): 2046 values per region; a VinVL "
                                              r"row holds 2048 features \+ 6 position values \(2054\)"):
        convert_vinvl(str(tmp_path / "features.tsv"), ConversionOptions(str(tmp_path / "store")))
    assert main(["data", "convert-vinvl", "--out", str(tmp_path / "store"), str(tmp_path / "features.tsv")]) == 2
    assert_one_error_line(capsys.readouterr().err)


def test_vinvl_lineidx_past_the_end_names_both_files(tmp_path, capsys):
    features, _, _, _ = vinvl_source(tmp_path)
    with open(tmp_path / "features.lineidx", "a") as handle:
        handle.write(f"{os.path.getsize(features) + 10}\n")
    assert main(["data", "convert-vinvl", "--out", str(tmp_path / "store"), features]) == 2
    err = capsys.readouterr().err
    assert_one_error_line(err)
    assert "features.lineidx:4: offset" in err and "points past the end of" in err and "features.tsv" in err


def test_vinvl_predictions_of_other_images_or_classes_are_errors(tmp_path):
    features, predictions, labelmap, images = vinvl_source(tmp_path)
    vinvl_labelmap(tmp_path / "small.json", CLASS_NAMES[:10])
    with pytest.raises(ConversionError, match=r"predictions\.tsv:\d \(image 'coco_\d'\): classes .* are not in the "
                                              r"labelmap .*small\.json"):
        convert_vinvl(features, ConversionOptions(str(tmp_path / "store")), predictions=predictions,
                      labelmap=str(tmp_path / "small.json"))
    tsv_writer([vinvl_prediction_row(image, CLASS_NAMES) for image in images[:2]], tmp_path / "predictions.tsv")
    result = convert_vinvl(features, ConversionOptions(str(tmp_path / "store"), skip_unreadable=True),
                           predictions=predictions, labelmap=labelmap)
    assert dict(result.skipped) == {"unreadable record": 1}
    assert "features.tsv:3 (image 'coco_2'): the image has no row in" in result.skip_examples["unreadable record"][0]


def test_vinvl_lineidx_offset_inside_a_row_is_an_error(tmp_path):
    features, _, _, _ = vinvl_source(tmp_path)
    (tmp_path / "features.lineidx").write_text("0\n5\n")
    with pytest.raises(ConversionError, match=r"features\.lineidx:2: offset 5 is not the start of a row of "):
        convert_vinvl(features, ConversionOptions(str(tmp_path / "store")))
