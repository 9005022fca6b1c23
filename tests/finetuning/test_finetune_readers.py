"""Each task's reader on small files in the real formats; bad files name the file and line."""
from __future__ import annotations

import json

import numpy as np
import pytest

from interbert.data.dataset_error import DatasetError
from interbert.data.text.tokenization import load_tokenizer
from interbert.finetuning.glue import TASKS, GlueDataset, GlueFormatError, glue_task, read_glue_tsv
from interbert.finetuning.vcr import NEUTRAL_NAMES, VcrDataset, VcrFormatError, read_vcr, render

EXPECTED_LABELS = {"sst2": [1, 0], "cola": [1, 0], "mrpc": [1, 0], "stsb": [4.8, 0.2], "qqp": [1, 0],
                   "mnli": [1, 0, 2], "qnli": [0, 1], "rte": [0, 1]}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_glue_reader_takes_the_columns_of_each_task(name, tmp_path, glue_writer):
    folder = glue_writer(tmp_path / name, name)
    task = glue_task(name)
    for dev in task.dev_files:
        examples = read_glue_tsv(folder / dev, task)
        assert examples.labels == pytest.approx(EXPECTED_LABELS[name])
        assert (examples.text_b is None) == (name in ("sst2", "cola"))
    assert examples.text_a[0] in {"a gripping , funny film", "The cat sat on the mat.", "He said hello .",
                                  "A man plays.", "How do I cook rice?", "A man eats.", "Who wrote it?",
                                  "Ann wrote a book."}


def test_glue_bad_label_names_file_and_line(tmp_path, glue_writer):
    folder = glue_writer(tmp_path / "rte", "rte", extra_lines=("2\tA.\tB.\tmaybe",))
    with pytest.raises(GlueFormatError, match=r"train\.tsv:4: label 'maybe'"):
        read_glue_tsv(folder / "train.tsv", glue_task("rte"))


def test_glue_short_line_is_an_error_or_skipped_and_counted(tmp_path, glue_writer):
    folder = glue_writer(tmp_path / "qqp", "qqp", extra_lines=("7\t8\tonly a question",))
    with pytest.raises(GlueFormatError, match=r"train\.tsv:4: 3 tab-separated fields"):
        read_glue_tsv(folder / "train.tsv", glue_task("qqp"))
    examples = read_glue_tsv(folder / "train.tsv", glue_task("qqp"), skip_malformed=True)
    assert len(examples.labels) == 2 and [line for line, _ in examples.skipped] == [4]


def test_glue_wrong_file_names_the_missing_column(tmp_path, glue_writer):
    folder = glue_writer(tmp_path / "sst2", "sst2")
    with pytest.raises(GlueFormatError, match=r"dev\.tsv:1: the header has no 'question' column"):
        read_glue_tsv(folder / "dev.tsv", glue_task("qnli"))


def test_glue_pairs_become_cls_a_sep_b_sep_with_segments(tmp_path, glue_writer):
    folder = glue_writer(tmp_path / "rte", "rte")
    tokenizer = load_tokenizer()
    dataset = GlueDataset(read_glue_tsv(folder / "dev.tsv", glue_task("rte")), tokenizer, max_length=128)
    ids, segments = dataset[0]["text"]
    words = tokenizer.convert_ids_to_tokens(ids.tolist())
    assert words[0] == "[CLS]" and words[-1] == "[SEP]" and words.count("[SEP]") == 2
    first_sep = words.index("[SEP]")
    assert set(segments[:first_sep + 1].tolist()) == {0} and set(segments[first_sep + 1:].tolist()) == {1}
    assert "ann" in words  # lower-cased


def test_vcr_references_become_class_names_and_neutral_names(vcr_data):
    annotation = read_vcr(vcr_data["val"])[0]
    assert render(annotation.question, annotation.objects) == f"Why is {NEUTRAL_NAMES[0]} looking at dog ?"
    assert render(annotation.answers[2], annotation.objects) == \
        f"Because {NEUTRAL_NAMES[0]} and {NEUTRAL_NAMES[1]} are friends ."
    assert render(annotation.rationales[2], annotation.objects) == \
        f"{NEUTRAL_NAMES[0]}, {NEUTRAL_NAMES[1]} and dog play together ."


def test_vcr_examples_are_question_answer_then_question_answer_rationale(vcr_data):
    tokenizer = load_tokenizer()
    annotations = read_vcr(vcr_data["val"])
    dataset = VcrDataset(annotations, vcr_data["features"], tokenizer, gt_features=vcr_data["gt_features"],
                         max_regions=20, max_length=64)
    assert len(dataset) == 2 * len(annotations)
    q2a, qa2r = dataset[2], dataset[3]  # question 1: answer label 1
    assert q2a["label"] == 1 and qa2r["label"] == 2
    first_answer = tokenizer.decode(q2a["texts"][0][0].tolist())
    assert first_answer.startswith("[CLS] why is casey looking at dog? [SEP] casey is hungry.")
    rationale = tokenizer.decode(qa2r["texts"][1][0].tolist())
    # QA→R: question and the right answer (choice 1) in segment 0, the rationale in segment 1
    assert rationale == "[CLS] why is casey looking at dog? casey likes the dog. [SEP] casey smiles. [SEP]"
    features, locations = q2a["images"][0]
    assert features.shape[0] <= 21 and np.allclose(features[0], features[1:].mean(0), atol=1e-3)
    ground_truth = dataset._open()[1].get(annotations[1].img_fn)
    assert np.allclose(features[1:5], ground_truth.features.astype(np.float32))  # ground-truth boxes first


@pytest.mark.parametrize("change, message", [
    ({"question": ["Why", [9], "?"]}, r"val\.jsonl:2: question token 1 refers to object 9"),
    ({"answer_choices": [["a"], ["b"]]}, r"val\.jsonl:2: answer_choices must hold 4 choices"),
    ({"answer_label": 4}, r"val\.jsonl:2: answer_label is 4"),
])
def test_vcr_bad_lines_name_file_and_line(tmp_path, vcr_line_factory, change, message):
    good = vcr_line_factory("synth-0000000")
    (tmp_path / "val.jsonl").write_text(json.dumps(good) + "\n" + json.dumps({**good, **change}) + "\n")
    with pytest.raises(VcrFormatError, match=message):
        read_vcr(tmp_path / "val.jsonl")


def test_vcr_missing_field_names_file_and_line(tmp_path):
    line = {"question": ["Hi"], "objects": []}
    (tmp_path / "val.jsonl").write_text("\n" + json.dumps(line) + "\n")
    with pytest.raises(VcrFormatError, match=r"val\.jsonl:2: missing \['answer_choices'"):
        read_vcr(tmp_path / "val.jsonl")


def test_flickr30k_samples_are_positive_then_three_negatives(ft_corpus):
    from interbert.finetuning.flickr30k import Flickr30kTrainSet

    dataset = Flickr30kTrainSet(ft_corpus / "features", ft_corpus / "captions.jsonl", max_regions=12)
    sample = dataset[5]
    own = dataset.caption_to_image[5]
    assert sample["label"] == 0 and len(sample["texts"]) == len(sample["images"]) == 4
    assert np.array_equal(sample["texts"][0][0], sample["texts"][2][0])  # same caption, other image
    assert not np.array_equal(sample["texts"][0][0], sample["texts"][1][0])  # other caption, same image
    assert sample["images"][0][0] is not sample["images"][2][0]
    assert not np.allclose(sample["images"][0][0][0], sample["images"][2][0][0])
    assert sample["count_hard_fallback"] == 1  # nothing mined yet: a random image stands in
    dataset.hard_negatives[5] = (own + 1) % len(dataset.image_ids)
    mined = dataset[5]
    assert mined["count_hard_mined"] == 1
    assert np.allclose(mined["images"][3][0], dataset.image((own + 1) % len(dataset.image_ids))[0])
    assert np.array_equal(dataset[5]["texts"][1][0], mined["texts"][1][0])  # same draws for the same epoch


def test_flickr30k_image_missing_from_the_store_is_named(ft_corpus, tmp_path):
    from interbert.finetuning.flickr30k import Flickr30kTrainSet

    manifest = tmp_path / "f30k.jsonl"
    lines = (ft_corpus / "captions.jsonl").read_text().splitlines()
    extra = {"image_id": "1000092795", "caption": "two men", "split": "train", "source": "flickr30k"}
    manifest.write_text("\n".join(lines + [json.dumps(extra)]) + "\n")
    with pytest.raises(DatasetError, match=r"1 images of split 'train' are not in feature store.*1000092795"):
        Flickr30kTrainSet(ft_corpus / "features", manifest)


def test_flickr30k_bad_manifest_line_is_named(ft_corpus, tmp_path):
    from interbert.data.text.manifests import ManifestError
    from interbert.finetuning.flickr30k import Flickr30kTrainSet

    manifest = tmp_path / "f30k.jsonl"
    manifest.write_text('{"image_id": "synth-0000000", "caption": "a dog", "split": "train"}\n{"image_id": 3\n')
    with pytest.raises(ManifestError, match=r"f30k\.jsonl:2: not JSON"):
        Flickr30kTrainSet(ft_corpus / "features", manifest)
