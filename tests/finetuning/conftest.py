"""Fixtures of the fine-tuning tests: VCR and GLUE files written in their real formats, DeepSpeed
configs, `run_finetune` (the real entry point, in process) and the train log read back. The corpus
(`ft_corpus`) and `tiny_model` come from tests/conftest.py."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.ds_config import FINETUNING, write_ds_config
from tests.helpers.train_log import read_train_log

VCR_OBJECTS = ["person", "person", "dog", "car"]


def vcr_line(img_fn: str, answer_label: int = 1, rationale_label: int = 2, **override) -> dict:
    """One annotation in the official layout (object references are index lists)."""
    line = {
        "annot_id": f"val-{img_fn}", "movie": "synthetic", "img_fn": img_fn, "metadata_fn": img_fn + ".json",
        "objects": list(VCR_OBJECTS), "question_number": 0,
        "question": ["Why", "is", [0], "looking", "at", [2], "?"],
        "answer_choices": [[[0], "is", "hungry", "."], [[0], "likes", "the", [2], "."],
                           ["Because", [0, 1], "are", "friends", "."], [[1], "is", "driving", "the", [3], "."]],
        "rationale_choices": [["The", [2], "is", "small", "."], [[0], "smiles", "."],
                              [[0, 1, 2], "play", "together", "."], ["It", "is", "raining", "."]],
        "answer_label": answer_label, "rationale_label": rationale_label,
    }
    line.update(override)
    return line


@pytest.fixture
def vcr_line_factory():
    return vcr_line


@pytest.fixture(scope="session")
def vcr_data(ft_corpus, tmp_path_factory) -> dict:
    """train.jsonl / val.jsonl over the synthetic images and a ground-truth box store whose
    records hold one box per annotated object."""
    from interbert.data.store.reader import FeatureStore
    from interbert.data.store.record_format import RegionRecord
    from interbert.data.store.writer import FeatureStoreWriter

    root = tmp_path_factory.mktemp("vcr")
    images = sorted(FeatureStore(ft_corpus / "features").keys())
    rng = np.random.default_rng(0)
    with FeatureStoreWriter(root / "gt_features", strict=True) as writer:
        for image_id in images[:12]:
            boxes = np.array([[10, 10, 100, 200], [120, 20, 220, 210], [30, 150, 90, 220], [200, 100, 300, 200]],
                             dtype=np.float32)
            writer.add(RegionRecord(image_id, 400.0, 300.0, rng.random((4, 2048)).astype(np.float16), boxes))
    write_jsonl(root / "train.jsonl", [vcr_line(i, answer_label=k % 4, rationale_label=(k + 1) % 4)
                                       for k, i in enumerate(images[:8])])
    write_jsonl(root / "val.jsonl", [vcr_line(i, answer_label=k % 4) for k, i in enumerate(images[8:12])])
    return {"root": root, "train": root / "train.jsonl", "val": root / "val.jsonl",
            "gt_features": root / "gt_features", "features": ft_corpus / "features"}


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


# GLUE files in their download layout: header (except CoLA), tab-separated, one example a line.
GLUE_ROWS = {
    "sst2": ("sentence\tlabel", ["a gripping , funny film\t1", "dull and lifeless\t0"]),
    "cola": (None, ["gj04\t1\t\tThe cat sat on the mat.", "gj04\t0\t*\tCat the mat on sat."]),
    "mrpc": ("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
             ["1\t11\t12\tHe said hello .\tHe greeted them .", "0\t13\t14\tIt rained .\tStocks rose ."]),
    "stsb": ("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
             ["0\tmain\tf\t2012\t1\tnone\tnone\tA man plays.\tA man is playing.\t4.8",
              "1\tmain\tf\t2012\t2\tnone\tnone\tA dog runs.\tThe sky is blue.\t0.2"]),
    "qqp": ("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
            ["0\t1\t2\tHow do I cook rice?\tWhat is the way to cook rice?\t1", "1\t3\t4\tWhy?\tWhere?\t0"]),
    "mnli": ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
             "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label",
             ["0\t1\t1n\tfiction\t(x)\t(y)\t(X)\t(Y)\tA man eats.\tA person eats.\tentailment\tentailment",
              "1\t2\t2c\tfiction\t(x)\t(y)\t(X)\t(Y)\tA man eats.\tNobody eats.\tcontradiction\tcontradiction",
              "2\t3\t3n\tfiction\t(x)\t(y)\t(X)\t(Y)\tA man eats.\tHe is hungry.\tneutral\tneutral"]),
    "qnli": ("index\tquestion\tsentence\tlabel",
             ["0\tWho wrote it?\tIt was written by Ann.\tentailment", "1\tWho wrote it?\tIt is blue.\tnot_entailment"]),
    "rte": ("index\tsentence1\tsentence2\tlabel",
            ["0\tAnn wrote a book.\tAnn is an author.\tentailment", "1\tAnn wrote.\tBob sang.\tnot_entailment"]),
}


def write_glue(directory: Path, task: str, repeat: int = 1, extra_lines: tuple = ()) -> Path:
    """train.tsv and the dev file(s) of `task` (rows repeated `repeat` times)."""
    directory.mkdir(parents=True, exist_ok=True)
    header, rows = GLUE_ROWS[task]
    body = [row for _ in range(repeat) for row in rows] + list(extra_lines)
    text = ((header + "\n") if header else "") + "\n".join(body) + "\n"
    names = ["train.tsv"] + (["dev_matched.tsv", "dev_mismatched.tsv"] if task == "mnli" else ["dev.tsv"])
    for name in names:
        (directory / name).write_text(text)
    return directory


@pytest.fixture
def glue_writer():
    return write_glue


@pytest.fixture
def ds_config_writer():
    """write_ds_config with the fine-tuning defaults (one rank, micro-batch 2, a `finetune` section)."""
    return functools.partial(write_ds_config, **FINETUNING)


@pytest.fixture(scope="session")
def run_finetune():
    """The real entry point in this process (single rank): run_finetune(*argv) -> exit status."""
    from interbert.data.text.tokenization import default_vocab_file
    from interbert.finetuning.command import main

    def run(*argv: str, vocab: bool = True) -> int:
        extra = ["--vocab", default_vocab_file()] if vocab else []  # the test wheel's bert-base-uncased vocabulary
        return main([str(a) for a in argv] + ["--num-workers", "0", "--log-every", "1", *extra])

    return run


@pytest.fixture
def train_log():
    return read_train_log
