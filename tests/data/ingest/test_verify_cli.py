"""`interbert data ...` end to end: synth output passes verify; verify reports each problem."""
from __future__ import annotations

import json

import numpy as np

from interbert.cli import main
from interbert.data.ingest.synth import OBJECT_WORDS, synthesize_corpus
from interbert.data.loading.regions import box_iou
from interbert.data.store.reader import FeatureStore
from interbert.data.store.record_format import encode_record
from interbert.data.text.tokenization import load_tokenizer
from tests.helpers.data import make_record, put_raw, write_manifest_lines, write_store


def test_synth_corpus_passes_verify(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path / "corpus"), "--images", "30", "--seed", "2"]) == 0
    assert main(["data", "verify", "--features", str(tmp_path / "corpus" / "features"),
                 "--captions", str(tmp_path / "corpus" / "captions.jsonl")]) == 0
    assert "no problems found" in capsys.readouterr().out


def test_synth_images_have_overlap_groups_and_captions_name_their_objects(synth_corpus):
    store = FeatureStore(synth_corpus / "features")
    lines = [json.loads(line) for line in (synth_corpus / "captions.jsonl").read_text().splitlines()]
    assert {line["split"] for line in lines} == {"train", "val", "test"} and len(lines) == 5 * 60
    for line in lines[:50]:
        record = store.get(line["image_id"])
        assert 10 <= record.num_regions <= 36
        present = {OBJECT_WORDS[label - 1] for label in record.labels[record.confidences > 0.55]}
        named = {word for word in line["caption"].replace(",", "").split() if word in OBJECT_WORDS}
        assert 2 <= len(named) <= 3 and named <= present
    overlapping = [bool((np.triu(box_iou(store.get(i).boxes), 1) > 0.4).any()) for i in store.keys()]
    assert np.mean(overlapping) > 0.8


def test_synth_object_words_are_single_word_pieces(vocab_file):
    tokenizer = load_tokenizer(vocab_file)
    assert all(len(tokenizer.tokenize(word)) == 1 for word in OBJECT_WORDS)


def test_synth_is_reproducible_from_its_seed(tmp_path):
    synthesize_corpus(tmp_path / "a", 12, seed=9, progress=False)
    synthesize_corpus(tmp_path / "b", 12, seed=9, progress=False)
    assert (tmp_path / "a" / "captions.jsonl").read_text() == (tmp_path / "b" / "captions.jsonl").read_text()
    first, second = FeatureStore(tmp_path / "a" / "features"), FeatureStore(tmp_path / "b" / "features")
    assert all(first.get_bytes(k) == second.get_bytes(k) for k in first.keys())


def test_verify_counts_each_problem_and_fails(tmp_path, capsys):
    store = write_store(tmp_path / "store", [make_record("ok"), make_record("ok2")])
    put_raw(store, "broken", b"IBRF" + b"\x01" * 30)
    nan = make_record("nan")
    nan.features[0, 0] = np.inf
    put_raw(store, "nan", encode_record(nan))
    outside = make_record("outside")
    outside.boxes[0, 2] = 2000
    put_raw(store, "outside", encode_record(outside))
    manifest = write_manifest_lines(tmp_path / "c.jsonl", [
        {"image_id": "ok", "caption": "a dog", "split": "train", "source": "t"},
        {"image_id": "ghost", "caption": "a cat", "split": "train", "source": "t"},
        {"image_id": "ok2", "caption": " ", "split": "train", "source": "t"}])
    assert main(["data", "verify", "--features", store, "--captions", manifest]) == 1
    out = capsys.readouterr().out
    assert "corrupt record: 1  (first: 'broken'" in out
    assert "non-finite features: 1  (first: 'nan'" in out
    assert "box outside image: 1  (first: 'outside'" in out
    assert f"caption image missing from store: 1  (first: {manifest}:2 ('ghost'))" in out
    assert f"empty caption: 1  (first: {manifest}:3)" in out
    assert "record count differs from metadata: 1" in out


def test_convert_command_reports_skips_and_strict_fails(tmp_path, capsys):
    folder = tmp_path / "npz"
    folder.mkdir()
    good, bad = make_record("good"), make_record("bad")
    bad.features[0, 0] = np.nan
    for record in (good, bad):
        np.savez(folder / f"{record.image_id}.npz", x=record.features, bbox=record.boxes, image_w=640, image_h=480)
    assert main(["data", "convert-npz", "--out", str(tmp_path / "store"), str(folder)]) == 0
    assert "skipped 1 images (non-finite features)" in capsys.readouterr().out
    assert main(["data", "convert-npz", "--strict", "--out", str(tmp_path / "strict"), str(folder)]) == 2
    assert "bad.npz (image 'bad'): non-finite features" in capsys.readouterr().err
    assert not (tmp_path / "strict").exists()


def test_existing_output_is_not_overwritten_without_the_flag(tmp_path, capsys):
    write_store(tmp_path / "store", [make_record("a")])
    (tmp_path / "a.tsv").write_text("")
    assert main(["data", "convert-tsv", "--out", str(tmp_path / "store"), str(tmp_path / "a.tsv")]) == 2
    assert "already exists; choose another --out or pass --overwrite" in capsys.readouterr().err


def test_synth_objects_limits_the_classes_images_and_captions_use(tmp_path):
    assert main(["data", "synth", "--out", str(tmp_path / "c"), "--images", "40", "--seed", "1",
                 "--objects", "8"]) == 0
    allowed = set(OBJECT_WORDS[:8])
    store = FeatureStore(tmp_path / "c" / "features")
    labels = {int(label) for image in store.keys() for label in store.get(image).labels}
    assert labels <= set(range(1, 9)) and len(labels) == 8  # clutter too comes from the 8
    for line in (tmp_path / "c" / "captions.jsonl").read_text().splitlines():
        named = {w for w in json.loads(line)["caption"].replace(",", "").split() if w in OBJECT_WORDS}
        assert named and named <= allowed
    assert json.loads((tmp_path / "c" / "corpus.json").read_text())["objects"] == list(OBJECT_WORDS[:8])


def test_synth_refuses_too_few_objects(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path / "c"), "--images", "20", "--objects", "3"]) == 2
    assert "num_objects is 3" in capsys.readouterr().err
