"""GLUE from the standard TSV files (the `glue_data/<TASK>/` folders of the GLUE download).

Text only: `[CLS] a [SEP] b [SEP]` (segments 0 / 1), lower-cased WordPiece, at most 128 pieces,
through the interaction stack over text alone and then the text extraction stack
(`InterBertModel.encode_text`). Columns are found by the header's names; CoLA's files have no
header (source, label, original mark, sentence). A line with too few fields or an unknown label
is an error naming the file and line; `skip_malformed` skips such lines and counts them instead
(QQP's train.tsv is known to hold a few).
"""
from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from interbert.errors import UserError
from interbert.finetuning.metrics import glue_metrics

csv.field_size_limit(sys.maxsize)


class GlueFormatError(UserError, ValueError):
    """A GLUE TSV file does not have the expected layout; the message names the file and line."""


@dataclass(frozen=True)
class GlueTask:
    name: str
    text_a: str | int  # header name, or column index for header-less files
    text_b: str | int | None
    label: str | int
    labels: tuple  # label strings in class order; () for regression
    metric: str  # the headline metric (paper Table 3)
    dev_files: tuple = ("dev.tsv",)
    header: bool = True

    @property
    def kind(self) -> str:
        return "regression" if not self.labels else "classification"


TASKS = {
    "cola": GlueTask("cola", 3, None, 1, ("0", "1"), "matthews", header=False),
    "sst2": GlueTask("sst2", "sentence", None, "label", ("0", "1"), "accuracy"),
    "mrpc": GlueTask("mrpc", "#1 String", "#2 String", "Quality", ("0", "1"), "f1"),
    "stsb": GlueTask("stsb", "sentence1", "sentence2", "score", (), "spearman"),
    "qqp": GlueTask("qqp", "question1", "question2", "is_duplicate", ("0", "1"), "f1"),
    "mnli": GlueTask("mnli", "sentence1", "sentence2", "gold_label", ("contradiction", "entailment", "neutral"),
                     "accuracy", dev_files=("dev_matched.tsv", "dev_mismatched.tsv")),
    "qnli": GlueTask("qnli", "question", "sentence", "label", ("entailment", "not_entailment"), "accuracy"),
    "rte": GlueTask("rte", "sentence1", "sentence2", "label", ("entailment", "not_entailment"), "accuracy"),
}
ALIASES = {"sst-2": "sst2", "sts-b": "stsb"}


def glue_task(name: str) -> GlueTask:
    """`name` as in --task glue-NAME (case-insensitive; SST-2 and STS-B with or without the dash)."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in TASKS:
        raise ValueError(f"unknown GLUE task {name!r}; choose one of "
                         + ", ".join(f"glue-{t}" for t in TASKS))
    return TASKS[key]


@dataclass
class GlueExamples:
    text_a: list
    text_b: list | None
    labels: list  # class indices or floats
    path: str
    skipped: list  # (line number, reason) of skipped malformed lines


def _column(header: list, wanted, path, kind: str) -> int:
    if isinstance(wanted, int):
        return wanted
    if wanted not in header:
        raise GlueFormatError(f"{path}:1: the header has no {wanted!r} column ({kind}); found "
                              f"{header}. Is this the right GLUE task's file?")
    return header.index(wanted)


def read_glue_tsv(path: str | Path, task: GlueTask, skip_malformed: bool = False) -> GlueExamples:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such GLUE file (expected {task.name.upper()} files "
                                f"train.tsv and {', '.join(task.dev_files)} in the task folder)")
    text_a: list[str] = []
    text_b: list[str] | None = [] if task.text_b is not None else None
    labels: list[int | float] = []
    skipped: list[tuple[int, str]] = []
    with open(path, encoding="utf-8-sig", newline="") as handle:
        rows = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        first_line = 1
        header: list[str] = []
        if task.header:
            first_row = next(rows, None)
            if first_row is None:
                raise GlueFormatError(f"{path}: empty file; a GLUE TSV starts with a header line")
            header = first_row
            first_line = 2
        columns = [_column(header, task.text_a, path, "first sentence"),
                   _column(header, task.label, path, "label")]
        if task.text_b is not None:
            columns.append(_column(header, task.text_b, path, "second sentence"))
        needed = max(columns) + 1
        label: int | float  # a class index, or a regression score
        for line, row in enumerate(rows, first_line):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            problem = None
            if len(row) < needed:
                problem = f"{len(row)} tab-separated fields, the {task.name} columns need {needed}"
            else:
                raw_label = row[columns[1]].strip()
                if task.labels:
                    if raw_label not in task.labels:
                        problem = f"label {raw_label!r} is not one of {list(task.labels)}"
                    else:
                        label = task.labels.index(raw_label)
                else:
                    try:
                        label = float(raw_label)
                    except ValueError:
                        problem = f"score {raw_label!r} is not a number"
            if problem:
                if not skip_malformed:
                    raise GlueFormatError(f"{path}:{line}: {problem}; fix the line, or pass "
                                          "--skip-malformed to skip such lines (they are counted)")
                skipped.append((line, problem))
                continue
            text_a.append(row[columns[0]])
            if text_b is not None:
                text_b.append(row[columns[2]])
            labels.append(label)
    if not labels:
        raise GlueFormatError(f"{path}: no examples")
    return GlueExamples(text_a, text_b, labels, str(path), skipped)


class GlueDataset(torch.utils.data.Dataset):
    """Tokenised GLUE examples: `text` (ids, segments) and `label` per item."""

    def __init__(self, examples: GlueExamples, tokenizer, max_length: int = 128):
        encoded = tokenizer(examples.text_a, examples.text_b, truncation="longest_first",
                            max_length=max_length, return_token_type_ids=True)
        self.ids = [np.asarray(ids, dtype=np.int64) for ids in encoded["input_ids"]]
        self.segments = [np.asarray(s, dtype=np.int64) for s in encoded["token_type_ids"]]
        self.labels = examples.labels
        self.truncated = sum(len(ids) >= max_length for ids in self.ids)
        self.path = examples.path

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"text": (self.ids[index], self.segments[index]), "label": self.labels[index]}


def evaluate_glue(predictions: np.ndarray, labels, task: GlueTask) -> dict[str, float]:
    """predictions: N×classes logits (classification) or N values (regression)."""
    predictions = np.asarray(predictions)
    if task.kind == "classification":
        predictions = predictions.argmax(-1)
    return glue_metrics(task.metric, predictions, np.asarray(labels))
