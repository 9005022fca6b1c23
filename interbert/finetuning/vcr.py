"""Visual Commonsense Reasoning from the official annotation JSON lines and feature stores.

Each line holds `question`, `answer_choices` (4), `rationale_choices` (4), `answer_label`,
`rationale_label` (absent in the test split), `objects` (detector class names), `img_fn` and
`metadata_fn`. Texts are token lists in which a list of integers refers to objects: a reference
becomes the object's class name, and a person becomes a gender-neutral name fixed by its index
("Casey and Riley"), as R2C and ViLBERT render them.

Q→A: `[CLS] question [SEP] answer_i [SEP]`; QA→R: `[CLS] question answer [SEP] rationale_i [SEP]`
(segments 0 / 1, the release's input: question and answer joined in the first segment), 4-way
each; QA→R takes the correct answer. Q→AR counts a question right when both are right. The test
split has no labels, so its QA→R is built for each of the 4 answers (`conditioned=True`): the 4 × 4
rationale scores the leaderboard's submission holds (`write_submission`). Regions: the ground-truth
boxes of the objects (a second feature store keyed by `img_fn`, when given) and then the detector's,
at most `max_regions` in all, after the global token.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from interbert.data.loading.regions import fill_global_token, image_inputs, region_locations
from interbert.data.store.reader import FeatureStore
from interbert.errors import UserError

CHOICES = 4
REQUIRED = ("question", "answer_choices", "rationale_choices", "objects", "img_fn")
NEUTRAL_NAMES = ("Casey", "Riley", "Jessie", "Jackie", "Avery", "Jaime", "Peyton", "Kerry", "Jody", "Kendall",
                 "Skyler", "Frankie", "Pat", "Quinn", "Morgan", "Finley", "Harley", "Robbie", "Sidney", "Tommie",
                 "Ashley", "Carter", "Adrian", "Clarke", "Logan", "Mickey", "Nicky", "Parker", "Tyler", "Reese")


class VcrFormatError(UserError, ValueError):
    """A VCR annotation line is malformed; the message names the file and line."""


@dataclass
class VcrAnnotation:
    where: str  # "file:line"
    annot_id: str  # the line's annot_id (the leaderboard's key); "file:line" when absent
    img_fn: str
    objects: list
    question: list
    answers: list
    rationales: list
    answer_label: int | None
    rationale_label: int | None


def _check_tokens(tokens, objects, where: str, field: str) -> None:
    if not isinstance(tokens, list) or not tokens:
        raise VcrFormatError(f"{where}: {field} must be a non-empty list of tokens")
    for position, token in enumerate(tokens):
        if isinstance(token, str):
            continue
        if not isinstance(token, list) or not token or not all(isinstance(i, int) for i in token):
            raise VcrFormatError(f"{where}: {field} token {position} is {token!r}; a token is a word or a "
                                 "list of object indices")
        bad = [i for i in token if not 0 <= i < len(objects)]
        if bad:
            raise VcrFormatError(f"{where}: {field} token {position} refers to object {bad[0]}, but the "
                                 f"annotation lists {len(objects)} objects")


def _label(record: dict, key: str, where: str, require: bool) -> int | None:
    value = record.get(key)
    if value is None:
        if require:
            raise VcrFormatError(f"{where}: no {key!r}; training and validation files need labels")
        return None
    if not isinstance(value, int) or not 0 <= value < CHOICES:
        raise VcrFormatError(f"{where}: {key} is {value!r}, expected an integer in 0..{CHOICES - 1}")
    return value


def read_vcr(path: str | Path, require_labels: bool = True) -> list[VcrAnnotation]:
    """Every annotation of a VCR JSON-lines file, checked (errors name the file and line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such VCR annotation file (train.jsonl / val.jsonl)")
    annotations = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                record = json.loads(line)
            except ValueError as error:
                raise VcrFormatError(f"{where}: not JSON ({error})") from None
            if not isinstance(record, dict):
                raise VcrFormatError(f"{where}: expected one JSON object per line")
            missing = [key for key in REQUIRED if key not in record]
            if missing:
                raise VcrFormatError(f"{where}: missing {missing}; a VCR line has {', '.join(REQUIRED)}, "
                                     "answer_label and rationale_label")
            objects = record["objects"]
            if not isinstance(objects, list) or not all(isinstance(o, str) for o in objects):
                raise VcrFormatError(f"{where}: objects must be a list of class names")
            _check_tokens(record["question"], objects, where, "question")
            for field in ("answer_choices", "rationale_choices"):
                choices = record[field]
                if not isinstance(choices, list) or len(choices) != CHOICES:
                    raise VcrFormatError(f"{where}: {field} must hold {CHOICES} choices")
                for i, choice in enumerate(choices):
                    _check_tokens(choice, objects, where, f"{field}[{i}]")
            annotations.append(VcrAnnotation(
                where, str(record.get("annot_id", where)), str(record["img_fn"]), objects, record["question"],
                record["answer_choices"], record["rationale_choices"],
                _label(record, "answer_label", where, require_labels),
                _label(record, "rationale_label", where, require_labels)))
    if not annotations:
        raise VcrFormatError(f"{path}: no annotations")
    return annotations


def _join(words: list) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def render(tokens: list, objects: list) -> str:
    """Token list → text; object references → class names, people → gender-neutral names."""
    words = []
    for token in tokens:
        if isinstance(token, str):
            words.append(token)
        else:
            words.append(_join([NEUTRAL_NAMES[i % len(NEUTRAL_NAMES)] if objects[i] == "person" else objects[i]
                                for i in token]))
    return " ".join(words)


def vcr_regions(detections, ground_truth, max_regions: int) -> tuple:
    """Ground-truth regions first, then detector regions, at most `max_regions`, with the
    global token in row 0: (features (n+1)×F float32, locations (n+1)×5 float32)."""
    if ground_truth is None:
        features, locations, _ = image_inputs(detections, max_regions)
        fill_global_token(features)
        return features, locations
    kept_truth = min(ground_truth.num_regions, max_regions)
    truth_features = ground_truth.features[:kept_truth].astype(np.float32)
    truth_locations = region_locations(ground_truth.boxes[:kept_truth], ground_truth.width, ground_truth.height)
    features, locations, _ = image_inputs(detections, max(max_regions - kept_truth, 0))
    if max_regions - kept_truth <= 0:
        features, locations = features[:1], locations[:1]
    features = np.concatenate([features[:1], truth_features, features[1:]])
    locations = np.concatenate([locations[:1], truth_locations, locations[1:]])
    fill_global_token(features)
    return features, locations


class VcrDataset(torch.utils.data.Dataset):
    """Q→A and QA→R examples: item G·q is question q's Q→A, items G·q + 1 ... its QA→R, G =
    `groups` per question: 2 (QA→R with the correct answer), or 5 with `conditioned` (QA→R with
    each of the 4 answers, for the unlabelled test split).

    An item: `texts` (4 × (ids, segments)), `images` (one shared (features, locations)), `label`
    (-1 where there is none). Texts are tokenised once, here."""

    def __init__(self, annotations: list, features: str | Path, tokenizer, gt_features: str | Path | None = None,
                 max_regions: int = 100, max_length: int = 64, conditioned: bool = False):
        self.annotations = annotations
        self.conditioned = conditioned
        self.groups = 1 + (CHOICES if conditioned else 1)
        self.features_path, self.gt_path = str(features), (str(gt_features) if gt_features else None)
        self.max_regions = max_regions
        store = FeatureStore(features)
        missing = store.missing(sorted({a.img_fn for a in annotations}))
        if missing:
            first = next(a for a in annotations if a.img_fn == missing[0])
            raise VcrFormatError(f"{first.where}: image {missing[0]!r} is not in feature store {features} "
                                 f"({len(missing)} images missing in all)")
        if gt_features:
            self._check_ground_truth(annotations, FeatureStore(gt_features))
        first_texts, second_texts = [], []
        for a in annotations:
            question = render(a.question, a.objects)
            for answer in a.answers:
                first_texts.append(question)
                second_texts.append(render(answer, a.objects))
            conditions = range(CHOICES) if conditioned else [a.answer_label or 0]
            for condition in conditions:  # QA→R with the right answer, or with each one
                answer = render(a.answers[condition], a.objects)
                for rationale in a.rationales:
                    first_texts.append(f"{question} {answer}")
                    second_texts.append(render(rationale, a.objects))
        full = tokenizer(first_texts, second_texts, add_special_tokens=True)["input_ids"]
        encoded = tokenizer(first_texts, second_texts, truncation="longest_first", max_length=max_length,
                            return_token_type_ids=True)
        self.truncated = sum(len(f) > max_length for f in full)
        self.ids = [np.asarray(x, dtype=np.int64) for x in encoded["input_ids"]]
        self.segments = [np.asarray(x, dtype=np.int64) for x in encoded["token_type_ids"]]
        self._stores = None

    @staticmethod
    def _check_ground_truth(annotations, store) -> None:
        for a in annotations:
            if a.img_fn not in store:
                raise VcrFormatError(f"{a.where}: image {a.img_fn!r} has no ground-truth boxes in {store.path}")
            count = store.get(a.img_fn).num_regions
            if count != len(a.objects):
                raise VcrFormatError(f"{a.where}: {a.img_fn!r} has {count} ground-truth boxes in {store.path} but "
                                     f"the annotation lists {len(a.objects)} objects; they must correspond")

    def __len__(self) -> int:
        return self.groups * len(self.annotations)

    def _open(self):
        if self._stores is None:  # opened lazily: each DataLoader worker opens its own handles
            self._stores = (FeatureStore(self.features_path), FeatureStore(self.gt_path) if self.gt_path else None)
        return self._stores

    def __getitem__(self, index: int) -> dict:
        annotation = self.annotations[index // self.groups]
        group = index % self.groups
        detections, truth = self._open()
        regions = vcr_regions(detections.get(annotation.img_fn),
                              truth.get(annotation.img_fn) if truth is not None else None, self.max_regions)
        first = CHOICES * index
        label = None if self.conditioned else (annotation.rationale_label if group else annotation.answer_label)
        return {"texts": [(self.ids[i], self.segments[i]) for i in range(first, first + CHOICES)],
                "images": [regions], "label": -1 if label is None else label}


SUBMISSION_NAME = "vcr_test_submission.csv"
SUBMISSION_COLUMNS = ("annot_id", *(f"answer_{i}" for i in range(CHOICES)),
                      *(f"rationale_conditioned_on_a{a}_{r}" for a in range(CHOICES) for r in range(CHOICES)))


def write_submission(path: str | Path, annotations: list, scores: np.ndarray) -> Path:
    """The leaderboard's CSV: per question, the 4 answer probabilities and the 4 rationale
    probabilities conditioned on each answer. `scores`: Q × 5 × 4 choice scores of a
    `conditioned` dataset, in its item order."""

    scores = np.asarray(scores, dtype=np.float64)
    probabilities = np.exp(scores - scores.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(SUBMISSION_COLUMNS)
        for annotation, rows in zip(annotations, probabilities):
            writer.writerow([annotation.annot_id, *(f"{v:.6f}" for v in rows.reshape(-1))])
    return path
