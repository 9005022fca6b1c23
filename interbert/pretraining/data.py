"""The pretraining run's data: training and validation loaders over the data package's
PretrainingDataset, built from the command-line paths with errors that name the flag."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from interbert.config import REGION_TASKS, TEXT_TASKS, InterBertConfig
from interbert.data.loading.loader import ResumableLoader, build_loader
from interbert.data.pretraining.dataset import PretrainingDataset
from interbert.data.pretraining.tasks import PretrainingTasks
from interbert.data.store.reader import FeatureStore
from interbert.errors import UserError
from interbert.training.stopping import ignore_stop_signals


class CorpusError(UserError, ValueError):
    pass


@dataclass
class RunData:
    train: ResumableLoader
    validation: ResumableLoader | None
    train_set: PretrainingDataset  # the dataset `train` loads (its length: the training split's captions)


def check_paths(features: str | None, captions: list[str] | None) -> None:
    """--features and --captions exist (the vocabulary is checked by tokenization.find_vocab)."""
    if not features:
        raise CorpusError("--features is required: the feature store (an LMDB directory, e.g. "
                          "demo/features from `interbert data synth`)")
    if not Path(features).is_dir():
        raise CorpusError(f"--features {features}: no such directory (a feature store is an LMDB "
                          "directory written by `interbert data synth` or `interbert data convert-*`)")
    if not captions:
        raise CorpusError("--captions is required: one or more caption manifests (JSON lines)")
    for path in captions:
        if not Path(path).is_file():
            raise CorpusError(f"--captions {path}: no such file")


def tasks_for(model_config: InterBertConfig, store_has_class_probs: bool) -> PretrainingTasks:
    """The data side of the model's `pretraining_tasks`: which text and region masking, ITM
    negatives or none (then every pair is matched), and the KL MRM target's class distributions."""
    chosen = model_config.pretraining_tasks.split(",")
    text = next((task for task in chosen if task in TEXT_TASKS), "none")
    region = next((task for task in chosen if task in REGION_TASKS), "none")
    wants_soft = model_config.mrm_loss == "kl" and region != "none"
    if wants_soft and not store_has_class_probs:
        raise CorpusError(
            "the model config's mrm_loss is 'kl' (the released target) but the feature store holds "
            "no detector class distributions: set mrm_loss to 'ce' in a --model-config file, or "
            "rebuild the store with class distributions")
    return PretrainingTasks(text_task=text, region_task=region, mrm_soft_labels=wants_soft,
                            itm_negative_prob=PretrainingTasks.itm_negative_prob if "itm" in chosen else 0.0,
                            mrm_matched_only=model_config.mrm_matched_only)


def build_run_data(*, features: str, captions: list[str], vocab: str | None,
                   model_config: InterBertConfig, micro_batch: int, rank: int, world_size: int,
                   num_workers: int, seed: int, max_text_len: int, max_regions: int,
                   validation_split: str | None, skip_corrupt: bool = False) -> RunData:
    """skip_corrupt: drop (count and log) samples whose record fails its checksum instead of
    stopping the run with the error that names the image (--skip-corrupt)."""
    check_paths(features, captions)
    train_set = PretrainingDataset(features, captions, vocab_file=vocab, split="train",
                                   max_text_len=max_text_len, max_regions=max_regions, seed=seed,
                                   tasks=tasks_for(model_config, _has_class_probs(features)),
                                   skip_corrupt=skip_corrupt)
    if len(train_set) < micro_batch * world_size:
        raise CorpusError(
            f"the training split has {len(train_set)} captions, fewer than one micro-batch per rank "
            f"({micro_batch} x {world_size} ranks): use a larger corpus or a smaller "
            "train_micro_batch_size_per_gpu")
    # drop_last: every optimizer step sees full micro-batches on every rank (one is short only
    # where skip_corrupt dropped a sample). zero_copy: the loop uses each batch only until it
    # fetches the next, so the workers' arrays are used where they lie (on CUDA: the batch comes
    # already copied to the device).
    train = build_loader(train_set, micro_batch, rank=rank, world_size=world_size,
                         num_workers=num_workers, seed=seed, shuffle=True,
                         drop_last=True, zero_copy=True)
    train.worker_init_fn = ignore_stop_signals
    validation = None
    if validation_split:
        try:
            val_set = PretrainingDataset(features, captions, vocab_file=vocab,
                                         split=validation_split, max_text_len=max_text_len,
                                         max_regions=max_regions, seed=seed + 1,
                                         tasks=train_set.tasks, skip_corrupt=skip_corrupt)
        except ValueError as error:
            raise CorpusError(f"validation split {validation_split!r}: {error}") from None
        validation = build_loader(val_set, micro_batch, rank=rank,
                                              world_size=world_size, num_workers=0, seed=seed,
                                              shuffle=False, drop_last=False)
    return RunData(train, validation, train_set)


def _has_class_probs(features: str) -> bool:
    return bool(FeatureStore(features).metadata.has_class_probs)
