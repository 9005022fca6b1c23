"""The three task families behind `--task`: what each trains on and how each is evaluated.

A Task holds its TaskSpec (the model's head and loss), its training set and collate function,
an optional hard-negative miner, `evaluate(model)` (collective: every rank calls it together)
and `notes` (counts of truncated, skipped or fallen-back items, printed at start).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from interbert.batch_contract import to_device
from interbert.errors import UserError
from interbert.evaluation.full_retrieval import rank_and_world
from interbert.finetuning import glue as glue_data
from interbert.finetuning.batching import collate_choices, collate_text
from interbert.finetuning.metrics import qar_accuracy
from interbert.finetuning.model import TaskSpec
from interbert.finetuning.settings import FinetuneSettings, TaskInputs
from interbert.training.distributed import all_gather_objects

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.data import Dataset

    from interbert.finetuning.flickr30k import HardNegativeMiner
from interbert.data.retrieval.corpus import build_retrieval_corpus
from interbert.data.text.tokenization import load_tokenizer
from interbert.evaluation.full_retrieval import evaluate_full_retrieval
from interbert.finetuning.flickr30k import HARD_KINDS, Flickr30kTrainSet, HardCaptionPool, HardNegativeMiner
from interbert.finetuning.vcr import SUBMISSION_NAME, VcrDataset, read_vcr, write_submission

DEFAULT_TEXT_LENGTH = {"flickr30k": 36, "vcr": 64, "glue": 128}


class TaskInputError(UserError, ValueError):
    """A task's data flags or files are missing or wrong."""


@dataclass
class Task:
    spec: TaskSpec
    train_set: Dataset | None  # None with --eval-only
    collate: Callable[[list], dict]
    evaluate_fn: Callable[[nn.Module, torch.device, torch.dtype], dict[str, float]]
    notes: list[str] = field(default_factory=list)
    # (the loader's sampler, device, dtype, window) -> the miner
    miner_factory: Callable[[Any, torch.device, torch.dtype, int], HardNegativeMiner] | None = None
    # (model, device, dtype, output_dir) -> the written file, or None on ranks > 0
    submit_fn: Callable[[nn.Module, torch.device, torch.dtype, Path], Path | None] | None = None

    def evaluate(self, model, device, dtype) -> dict[str, float]:
        return self._in_eval_mode(self.evaluate_fn, model, device, dtype)

    def submit(self, model, device, dtype, output_dir: Path):
        """A leaderboard file for the task's test split (collective); None when it has none."""
        if self.submit_fn is None:
            return None
        return self._in_eval_mode(self.submit_fn, model, device, dtype, output_dir)

    @staticmethod
    def _in_eval_mode(function, model, *args):
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return function(model, *args)
        finally:
            model.train(was_training)


def family(task_name: str) -> str:
    if task_name in ("flickr30k", "vcr"):
        return task_name
    if task_name.startswith("glue-"):
        try:
            glue_data.glue_task(task_name[len("glue-"):])
        except ValueError as error:
            raise TaskInputError(f"--task {task_name}: {error}") from None
        return "glue"
    raise TaskInputError(f"--task {task_name!r}: choose flickr30k, vcr or glue-NAME (NAME one of "
                         f"{', '.join(glue_data.TASKS)})")


def _require(inputs: TaskInputs, *flags: str) -> list[str]:
    """The values of `flags`, each given and naming a file or directory that exists."""
    values = []
    for flag in flags:
        value = getattr(inputs, flag)
        if not value:
            raise TaskInputError(f"--task {inputs.task} needs --{flag.replace('_', '-')}")
        if not Path(value).exists():
            raise TaskInputError(f"--{flag.replace('_', '-')} {value}: no such file or directory")
        values.append(value)
    return values


def _predict(model, dataset, indices, collate, batch_size: int, device, dtype) -> list:
    """Model outputs (numpy rows) of `dataset[indices]`, in order."""
    outputs = []
    for start in range(0, len(indices), batch_size):
        batch = collate([dataset[int(i)] for i in indices[start:start + batch_size]])
        batch.pop("labels")
        batch = {k: v for k, v in batch.items() if not k.startswith("count_")}
        outputs.extend(model.predict(**to_device(batch, device, dtype)).float().cpu().numpy())
    return outputs


# ---------------------------------------------------------------------- Flickr30K
def flickr30k_task(inputs: TaskInputs, settings: FinetuneSettings) -> Task:
    features, captions = _require(inputs, "features", "captions")
    length = settings.max_text_len or DEFAULT_TEXT_LENGTH["flickr30k"]
    hard = settings.hard_negatives
    kind = inputs.hard_negatives or hard.kind
    if kind not in HARD_KINDS:
        raise TaskInputError(f"hard negatives {kind!r}: choose {' or '.join(HARD_KINDS)} (--hard-negatives, or "
                             "finetune.hard_negatives.kind)")
    train_set = None
    if not inputs.eval_only:
        pool = None
        if hard.enabled and kind == "release-captions":
            if not inputs.hard_captions:
                raise TaskInputError("--hard-negatives release-captions needs --hard-captions FILE, a pool that "
                                     "python -m interbert.finetuning.hard_captions writes")
            _require(inputs, "hard_captions")
            pool = HardCaptionPool.load(inputs.hard_captions)
        train_set = Flickr30kTrainSet(features, captions, inputs.vocab, split=inputs.train_split,
                                      max_regions=settings.max_regions, max_text_len=length, seed=inputs.seed,
                                      hard_captions=pool)
    corpus = build_retrieval_corpus(features, [captions], inputs.vocab, inputs.eval_split,
                                    inputs.eval_images or None, length, settings.max_regions)

    def evaluate(model, device, dtype):
        result = evaluate_full_retrieval(model.pretraining, corpus, device=device, dtype=dtype,
                                         pair_batch=inputs.pair_batch or None, two_stage_k=inputs.two_stage_k)
        metrics = dict(result.full.metrics)
        metrics.update(eval_seconds=result.full.seconds, eval_pairs_per_second=result.full.pairs_per_second)
        if result.two_stage:
            metrics.update({f"two_stage_{k}": v for k, v in result.two_stage["run"].metrics.items()})
            metrics["two_stage_seconds"] = result.two_stage["run"].seconds
        return metrics

    miner_factory = None
    if hard.enabled and kind == "mined-images" and train_set is not None:
        def miner_factory(sampler, device, dtype, window):
            return HardNegativeMiner(train_set, sampler, pool_size=hard.pool_size, refresh_every=hard.refresh_every,
                                     window=window, device=device, dtype=dtype, seed=inputs.seed)
    notes = [f"evaluation: {len(corpus.image_ids)} images x {len(corpus)} captions of split {inputs.eval_split!r}"]
    if train_set is not None:
        notes.insert(0, f"training: {len(train_set)} captions of {len(train_set.image_ids)} images, 4-way "
                        f"({settings.retrieval_loss} loss, hard negatives: {kind if hard.enabled else 'off'}), "
                        f"{int(train_set.captions.truncated.sum())} captions "
                        f"truncated to {length} word pieces")
    spec = TaskSpec("flickr30k", "retrieval", retrieval_loss=settings.retrieval_loss)
    return Task(spec, train_set, collate_choices, evaluate, notes, miner_factory)


# ---------------------------------------------------------------------- VCR
def vcr_task(inputs: TaskInputs, settings: FinetuneSettings, tokenizer) -> Task:
    _require(inputs, "features", "vcr_val")
    if inputs.gt_features:
        _require(inputs, "gt_features")
    length = settings.max_text_len or DEFAULT_TEXT_LENGTH["vcr"]

    def dataset(path, conditioned=False):
        return VcrDataset(read_vcr(path, require_labels=not conditioned), inputs.features, tokenizer,
                          gt_features=inputs.gt_features, max_regions=settings.max_regions, max_length=length,
                          conditioned=conditioned)

    train_set = None
    if not inputs.eval_only:
        _require(inputs, "vcr_train")
        train_set = dataset(inputs.vcr_train)
    val_set = dataset(inputs.vcr_val)

    def evaluate(model, device, dtype):
        rank, world = rank_and_world()
        questions = np.arange(len(val_set.annotations))[rank::world]
        items = np.stack([2 * questions, 2 * questions + 1], axis=1).reshape(-1)
        scores = _predict(model, val_set, items, collate_choices, inputs.eval_batch_size, device, dtype)
        verdicts = []
        for q, answer_scores, rationale_scores in zip(questions, scores[0::2], scores[1::2]):
            a = val_set.annotations[q]
            verdicts.append((int(np.argmax(answer_scores) == a.answer_label),
                             int(np.argmax(rationale_scores) == a.rationale_label)))
        verdicts = np.array([v for part in all_gather_objects(verdicts) for v in part]).reshape(-1, 2)
        return {"q2a_accuracy": float(verdicts[:, 0].mean()), "qa2r_accuracy": float(verdicts[:, 1].mean()),
                "q2ar_accuracy": qar_accuracy(verdicts[:, 0], verdicts[:, 1]), "questions": float(len(verdicts))}

    submit, test_set = None, None
    if inputs.vcr_test:
        _require(inputs, "vcr_test")
        test_set = dataset(inputs.vcr_test, conditioned=True)
        submit = _vcr_submitter(test_set, inputs.eval_batch_size)

    notes = [f"evaluation: {len(val_set.annotations)} questions of {inputs.vcr_val}, "
             f"{val_set.truncated} choice texts truncated to {length} pieces"]
    if test_set is not None:  # given --vcr-test
        notes.append(f"test split: {len(test_set.annotations)} questions of {inputs.vcr_test}, Q->A and QA->R "
                     f"conditioned on each answer, for {SUBMISSION_NAME}")
    if train_set is not None:
        notes.insert(0, f"training: {len(train_set.annotations)} questions -> {len(train_set)} 4-way examples "
                        f"(Q->A and QA->R), {train_set.truncated} choice texts truncated to {length} pieces; "
                        f"regions: {'ground-truth + ' if inputs.gt_features else ''}detector, at most "
                        f"{settings.max_regions}")
    return Task(TaskSpec("vcr", "multiple_choice"), train_set, collate_choices, evaluate, notes, submit_fn=submit)


def _vcr_submitter(test_set, batch_size: int):
    """(model, device, dtype, output_dir) -> the leaderboard CSV: Q->A and the 4 x 4 QA->R scores of
    every test question (a share per rank), written by rank 0."""

    def submit(model, device, dtype, output_dir):
        rank, world = rank_and_world()
        questions = np.arange(len(test_set.annotations))[rank::world]
        items = (test_set.groups * questions[:, None] + np.arange(test_set.groups)).reshape(-1)
        scores = _predict(model, test_set, items, collate_choices, batch_size, device, dtype)
        rows = list(zip(questions.tolist(), np.asarray(scores).reshape(len(questions), test_set.groups, -1)))
        rows = sorted((r for part in all_gather_objects(rows) for r in part), key=lambda r: r[0])
        if rank != 0:
            return None
        return write_submission(Path(output_dir) / SUBMISSION_NAME, test_set.annotations,
                                np.stack([r[1] for r in rows]))
    return submit


# ---------------------------------------------------------------------- GLUE
def glue_task(inputs: TaskInputs, settings: FinetuneSettings, tokenizer) -> Task:
    task = glue_data.glue_task(inputs.task[len("glue-"):])
    (glue_dir,) = _require(inputs, "glue_dir")
    length = settings.max_text_len or DEFAULT_TEXT_LENGTH["glue"]
    directory = Path(glue_dir)

    def dataset(name):
        examples = glue_data.read_glue_tsv(directory / name, task, skip_malformed=inputs.skip_malformed)
        return glue_data.GlueDataset(examples, tokenizer, length), examples

    notes = []
    train_set = None
    if not inputs.eval_only:
        train_set, examples = dataset("train.tsv")
        notes.append(f"training: {len(train_set)} examples of {examples.path}, {train_set.truncated} at the "
                     f"{length}-piece limit, {len(examples.skipped)} malformed lines skipped"
                     + (f" (first: line {examples.skipped[0][0]}: {examples.skipped[0][1]})"
                        if examples.skipped else ""))
    dev_sets = {}
    for name in task.dev_files:
        dev_sets[name], examples = dataset(name)
        notes.append(f"evaluation: {len(dev_sets[name])} examples of {examples.path}, "
                     f"{len(examples.skipped)} malformed lines skipped")

    def evaluate(model, device, dtype):
        rank, world = rank_and_world()
        metrics = {}
        for name, dev in dev_sets.items():
            indices = np.arange(len(dev))[rank::world]
            rows = list(zip(indices.tolist(), _predict(model, dev, indices, collate_text, inputs.eval_batch_size,
                                                      device, dtype)))
            rows = sorted(r for part in all_gather_objects(rows) for r in part)
            predictions = np.stack([r[1] for r in rows])
            suffix = "" if len(dev_sets) == 1 else ("_m" if "mismatched" not in name else "_mm")
            scored = glue_data.evaluate_glue(predictions, dev.labels, task)
            metrics.update({f"{k}{suffix}": v for k, v in scored.items()})
        return metrics

    spec = TaskSpec(f"glue-{task.name}", task.kind, num_labels=max(len(task.labels), 1))
    return Task(spec, train_set, collate_text, evaluate, notes)


def build_task(inputs: TaskInputs, settings: FinetuneSettings) -> Task:
    kind = family(inputs.task)
    if kind == "flickr30k":
        return flickr30k_task(inputs, settings)
    tokenizer = load_tokenizer(inputs.vocab)
    return vcr_task(inputs, settings, tokenizer) if kind == "vcr" else glue_task(inputs, settings, tokenizer)
