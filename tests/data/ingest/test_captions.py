"""Caption corpora → manifests: COCO, Conceptual Captions, SBU, Flickr30K."""
from __future__ import annotations

import hashlib
import json

import pytest

from interbert.data.ingest.captions import CaptionFormatError, convert_captions
from interbert.data.text.manifests import read_manifest


def _lines(path) -> list:
    return [entry for _, entry in read_manifest(path)]


def test_coco_captions_take_split_from_file_name(tmp_path):
    source = tmp_path / "captions_val2014.json"
    source.write_text(json.dumps({"images": [{"id": 42}], "annotations": [
        {"image_id": 42, "id": 1, "caption": "A man riding a horse."},
        {"image_id": 42, "id": 2, "caption": "  a rider\non a horse "}]}))
    count, skipped, _ = convert_captions("coco", [source], tmp_path / "coco.jsonl")
    assert count == 2 and not skipped
    assert _lines(tmp_path / "coco.jsonl") == [
        {"image_id": "42", "caption": "A man riding a horse.", "split": "val", "source": "coco"},
        {"image_id": "42", "caption": "a rider on a horse", "split": "val", "source": "coco"}]


def test_coco_file_without_split_in_name_needs_split(tmp_path):
    source = tmp_path / "caps.json"
    source.write_text(json.dumps({"annotations": []}))
    with pytest.raises(CaptionFormatError, match="pass --split"):
        convert_captions("coco", [source], tmp_path / "out.jsonl")


def test_conceptual_captions_ids_follow_the_id_rule(tmp_path):
    source = tmp_path / "Train_GCC-training.tsv"
    source.write_text("a dog on grass\thttp://x.org/a/123.jpg\na red car\thttp://x.org/b/456.png?s=1\n")
    convert_captions("cc", [source], tmp_path / "index.jsonl")
    convert_captions("cc", [source], tmp_path / "stem.jsonl", id_rule="url-stem", split="val")
    convert_captions("cc", [source], tmp_path / "sha.jsonl", id_rule="url-sha1")
    assert [e["image_id"] for e in _lines(tmp_path / "index.jsonl")] == ["0", "1"]
    assert [(e["image_id"], e["split"]) for e in _lines(tmp_path / "stem.jsonl")] == [("123", "val"), ("456", "val")]
    assert _lines(tmp_path / "sha.jsonl")[0]["image_id"] == hashlib.sha1(b"http://x.org/a/123.jpg").hexdigest()[:16]
    assert _lines(tmp_path / "index.jsonl")[1] == {"image_id": "1", "caption": "a red car", "split": "train",
                                                   "source": "cc"}


def test_conceptual_captions_bad_line_names_the_line(tmp_path):
    source = tmp_path / "cc.tsv"
    source.write_text("a dog\thttp://x/1.jpg\nno url here\n")
    with pytest.raises(CaptionFormatError, match=r"cc\.tsv:2: 1 columns"):
        convert_captions("cc", [source], tmp_path / "out.jsonl")


def test_sbu_from_captions_and_urls_files(tmp_path):
    (tmp_path / "captions.txt").write_text("man on a bike\nsunset over sea\n")
    (tmp_path / "urls.txt").write_text("http://f.com/1_a.jpg\nhttp://f.com/2_b.jpg\n")
    convert_captions("sbu", [tmp_path / "captions.txt", tmp_path / "urls.txt"], tmp_path / "sbu.jsonl",
                     id_rule="url-stem")
    assert [(e["image_id"], e["caption"]) for e in _lines(tmp_path / "sbu.jsonl")] == [
        ("1_a", "man on a bike"), ("2_b", "sunset over sea")]


def test_sbu_from_json(tmp_path):
    (tmp_path / "sbu.json").write_text(json.dumps({"captions": ["a", "b"], "image_urls": ["u/1.jpg", "u/2.jpg"]}))
    convert_captions("sbu", [tmp_path / "sbu.json"], tmp_path / "sbu.jsonl")
    assert [(e["image_id"], e["caption"], e["source"]) for e in _lines(tmp_path / "sbu.jsonl")] == [
        ("0", "a", "sbu"), ("1", "b", "sbu")]


def test_sbu_misaligned_files_are_an_error(tmp_path):
    (tmp_path / "c.txt").write_text("a\nb\n")
    (tmp_path / "u.txt").write_text("u/1.jpg\n")
    with pytest.raises(CaptionFormatError, match="2 captions but 1 urls"):
        convert_captions("sbu", [tmp_path / "c.txt", tmp_path / "u.txt"], tmp_path / "out.jsonl")


def test_flickr30k_karpathy_split_json(tmp_path):
    source = tmp_path / "dataset_flickr30k.json"
    source.write_text(json.dumps({"images": [
        {"filename": "1000092795.jpg", "split": "train", "sentences": [{"raw": "Two young guys."}, {"raw": "Men."}]},
        {"filename": "99.jpg", "split": "test", "sentences": [{"raw": "A dog."}]}]}))
    convert_captions("flickr30k", [source], tmp_path / "f.jsonl")
    assert [(e["image_id"], e["split"], e["caption"]) for e in _lines(tmp_path / "f.jsonl")] == [
        ("1000092795", "train", "Two young guys."), ("1000092795", "train", "Men."), ("99", "test", "A dog.")]


def test_empty_caption_is_counted_or_strict_error(tmp_path):
    source = tmp_path / "cc.tsv"
    source.write_text("a dog\thttp://x/1.jpg\n  \thttp://x/2.jpg\n")
    count, skipped, examples = convert_captions("cc", [source], tmp_path / "out.jsonl")
    assert (count, dict(skipped), examples) == (1, {"empty caption": 1}, [f"{source}:2"])
    with pytest.raises(CaptionFormatError, match=r"cc\.tsv:2: empty caption"):
        convert_captions("cc", [source], tmp_path / "strict.jsonl", strict=True)
    assert not (tmp_path / "strict.jsonl").exists()


def test_an_existing_manifest_is_replaced_only_with_overwrite(tmp_path, capsys):
    from interbert.cli import main

    source = tmp_path / "captions_val2014.json"
    annotations = [{"image_id": 7, "id": 1, "caption": "a cat"}]
    source.write_text(json.dumps({"images": [{"id": 7}], "annotations": annotations}))
    out = tmp_path / "coco.jsonl"
    out.write_text("my own manifest\n")
    assert main(["data", "captions", "--format", "coco", "--out", str(out), str(source)]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {out} already exists; choose another --out or pass "
                                               "--overwrite to replace it")
    assert out.read_text() == "my own manifest\n"
    assert main(["data", "captions", "--format", "coco", "--out", str(out), "--overwrite", str(source)]) == 0
    assert _lines(out) == [{"image_id": "7", "caption": "a cat", "split": "val", "source": "coco"}]


def test_a_null_caption_is_an_empty_caption_not_the_word_none(tmp_path):
    source = tmp_path / "captions_train2014.json"
    source.write_text(json.dumps({"images": [{"id": 1}], "annotations": [
        {"image_id": 1, "id": 1, "caption": None}, {"image_id": 1, "id": 2, "caption": "a dog"}]}))
    count, skipped, _ = convert_captions("coco", [source], tmp_path / "out.jsonl")
    assert count == 1 and skipped == {"empty caption": 1}
    assert [e["caption"] for e in _lines(tmp_path / "out.jsonl")] == ["a dog"]
    with pytest.raises(CaptionFormatError, match="empty caption for image '1'"):
        convert_captions("coco", [source], tmp_path / "strict.jsonl", strict=True)


def test_split_names_outside_train_val_test_restval_are_named(tmp_path, capsys):
    from interbert.cli import main

    source = tmp_path / "dataset_flickr30k.json"
    source.write_text(json.dumps({"images": [
        {"filename": "1.jpg", "split": "train", "sentences": [{"raw": "A man."}]},
        {"filename": "2.jpg", "split": "restval", "sentences": [{"raw": "A cat."}]},
        {"filename": "3.jpg", "split": "Train", "sentences": [{"raw": "A dog."}, {"raw": "Dogs."}]}]}))
    assert main(["data", "captions", "--format", "flickr30k", "--out", str(tmp_path / "f.jsonl"), str(source)]) == 0
    out = capsys.readouterr().out
    assert "4 captions (Train 2, restval 1, train 1)" in out
    assert "note: splits 'Train' (2 lines) are not one of train, val, test, restval" in out


@pytest.mark.parametrize("fmt, name, body", [
    ("cc", "cc_train.tsv", b"a dog\thttp://x/1.jpg\ncaf\xe9 chair\thttp://x/2.jpg\n"),
    ("coco", "captions_val2014.json", b'{"annotations": [\n{"image_id": 1, "caption": "caf\xe9"}]}\n'),
])
def test_a_caption_file_that_is_not_utf8_is_named_with_its_line(tmp_path, capsys, fmt, name, body):
    from interbert.cli import main

    source = tmp_path / name
    source.write_bytes(body)
    assert main(["data", "captions", "--format", fmt, "--out", str(tmp_path / "m.jsonl"), str(source)]) == 2
    column = body.splitlines()[1].index(0xe9) + 1
    assert capsys.readouterr().err.strip() == (f"error: {source}:2: byte 0xe9 at column {column} is not UTF-8; "
                                               "convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)")


def test_a_manifest_that_is_not_utf8_is_named_with_its_line(tmp_path):
    from interbert.data.text.utf8 import NotUtf8Error

    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b'{"image_id": "1", "caption": "ok", "split": "train"}\n'
                         b'{"image_id": "2", "caption": "caf\xe9", "split": "train"}\n')
    with pytest.raises(NotUtf8Error, match=rf"^{manifest}:2: byte 0xe9 at column 34 is not UTF-8"):
        list(read_manifest(manifest))
