"""Fixtures of the fine-tuning tests: a small synthetic corpus, VCR and GLUE files written in
their real formats, DeepSpeed configs, and `run_finetune` (the real entry point, in process)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def ft_corpus(tmp_path_factory) -> Path:
    """24 synthetic images (16 train, 4 val, 4 test), 3 captions each: features/, captions.jsonl."""
    from interbert.data.ingest.synth import synthesize_corpus

    root = tmp_path_factory.mktemp("ft") / "corpus"
    synthesize_corpus(root, num_images=24, seed=1, captions_per_image=3, val_images=4, test_images=4,
                      progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_model():
    """A tiny InterBertForPretraining in evaluation mode (fixed seed)."""
    import torch

    from interbert.modeling import InterBertConfig, InterBertForPretraining

    torch.manual_seed(0)
    return InterBertForPretraining(InterBertConfig.from_preset("tiny")).eval()


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


def write_ds_config(path: Path, *, micro: int = 2, accumulation: int = 1, precision: str = "fp32",
                    lr: float = 1e-3, finetune: dict | None = None) -> Path:
    config = {
        "train_batch_size": micro * accumulation, "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accumulation, "gradient_clipping": 1.0,
        "optimizer": {"type": "AdamW", "params": {"lr": lr, "weight_decay": 0.01}},
        "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_min_lr": 0.0, "warmup_max_lr": lr,
                                                          "warmup_num_steps": 1}},
        "bf16": {"enabled": precision == "bf16"}, "zero_optimization": {"stage": 1},
        "tensorboard": {"enabled": True},
        "finetune": finetune if finetune is not None else {"max_regions": 12},
    }
    path.write_text(json.dumps(config, indent=2))
    return path


@pytest.fixture
def ds_config_writer():
    return write_ds_config


@pytest.fixture(scope="session")
def run_finetune():
    """The real entry point in this process (single rank): run_finetune(*argv) -> exit status."""
    from interbert.data.text.tokenization import default_vocab_file
    from interbert.finetune import main

    def run(*argv: str, vocab: bool = True) -> int:
        extra = ["--vocab", default_vocab_file()] if vocab else []  # the test wheel's bert-base-uncased vocabulary
        return main([str(a) for a in argv] + ["--num-workers", "0", "--log-every", "1", *extra])

    return run


def read_log(output: Path) -> list[dict]:
    records = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    return [r for r in records if "loss" in r]


@pytest.fixture
def train_log():
    return read_log
