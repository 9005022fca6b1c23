"""Flickr30K caption-based image retrieval: the 4-way multiple-choice training set.

Input: a caption manifest with splits (Karpathy's: `interbert data captions --format flickr30k`)
and a feature store of the images (up to 100 regions, paper §3.4). Each training caption c of
image i gives four pairs, the positive first (label 0):

  (c, i)   (c', i)   (c, i')   (c, h)

c' is a random caption of another image, i' a random other image, and h a hard negative: the
image that the model itself scored highest for c among a pool of candidates, mined by
`HardNegativeMiner` on a schedule (`--hard-negatives mined-images`, the default). Until a caption
has been mined, h is another random image (counted as `count_hard_fallback` and reported).

The release's kind (`--hard-negatives release-captions`) keeps the image and changes the caption:
the fourth pair is (c_h, i), c_h drawn from a precomputed pool of hard captions of other images for
i (`HardCaptionPool`, a file that `python -m interbert.finetuning.hard_captions` writes). An image
without a pool falls back to a random other caption (counted the same way).

Random draws come from PCG64(seed, epoch, index), so they are the same on resume and in any
DataLoader worker.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import torch

from interbert.data.dataset_error import DatasetError
from interbert.data.loading.padding import pad_regions, pad_texts
from interbert.data.loading.regions import fill_global_token, image_inputs
from interbert.data.store.reader import FeatureStore
from interbert.data.text.manifests import read_manifest
from interbert.data.text.tokenization import load_tokenizer, tokenize_captions
from interbert.evaluation.full_retrieval import score_all_pairs
from interbert.evaluation.pair_scoring import PairEmbedder, embed_in_chunks
from interbert.finetuning.batching import sample_rng

NOT_MINED = -1
HARD_KINDS = ("mined-images", "release-captions")
POOL_FORMAT = "interbert-hard-captions"


class HardCaptionPool:
    """Per training image, the captions (indices into the split's caption list, in manifest order)
    of other images that a model scored highest for it. A JSON file:
    {"format": "interbert-hard-captions", "split": ..., "captions": N, "pool": {image_id: [index, ...]}}."""

    def __init__(self, pool: dict, split: str, captions: int):
        self.pool, self.split, self.captions = pool, split, captions

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps({"format": POOL_FORMAT, "split": self.split, "captions": self.captions,
                                    "pool": self.pool}) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> HardCaptionPool:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            raise DatasetError(f"--hard-captions {path}: cannot read a hard-caption pool ({error})") from None
        if not isinstance(data, dict) or data.get("format") != POOL_FORMAT:
            raise DatasetError(f"--hard-captions {path}: not a hard-caption pool (format {POOL_FORMAT!r}); "
                               "write one with python -m interbert.finetuning.hard_captions")
        return cls({str(k): [int(i) for i in v] for k, v in data["pool"].items()}, data["split"], int(data["captions"]))


def read_split(manifest: str | os.PathLike, split: str) -> tuple[list, list, list]:
    """(image_ids, caption texts, caption → image index) of one split of a manifest."""
    image_index: dict = {}
    texts, owners = [], []
    for line_number, entry in read_manifest(manifest):
        if entry.get("split") != split:
            continue
        caption = str(entry["caption"]).strip()
        if not caption:
            raise DatasetError(f"{manifest}:{line_number}: empty caption in split {split!r}")
        owners.append(image_index.setdefault(entry["image_id"], len(image_index)))
        texts.append(caption)
    if len(image_index) < 2:
        raise DatasetError(f"{manifest}: split {split!r} has {len(image_index)} images; 4-way training needs "
                           "at least 2 (check the manifest's split names)")
    return list(image_index), texts, owners


class Flickr30kTrainSet(torch.utils.data.Dataset):
    """4-way samples (see the module docstring) over one split of a manifest and a store."""

    def __init__(self, features: str | Path, manifest: str | Path, vocab_file: str | None = None,
                 split: str = "train", max_regions: int = 100, max_text_len: int = 36, seed: int = 0,
                 hard_captions: HardCaptionPool | None = None):
        self.features_path, self.max_regions, self.seed = str(features), max_regions, seed
        self.image_ids, self.texts, owners = read_split(manifest, split)
        missing = FeatureStore(features).missing(self.image_ids)
        if missing:
            raise DatasetError(f"{manifest}: {len(missing)} images of split {split!r} are not in feature store "
                               f"{features} (first: {missing[:3]})")
        self.caption_to_image = np.asarray(owners, dtype=np.int64)
        self.captions = tokenize_captions(load_tokenizer(vocab_file), self.texts, max_text_len)
        # Shared with forked DataLoader workers: the miner's updates reach them without a restart.
        self.hard_negatives = torch.full((len(self.texts),), NOT_MINED, dtype=torch.long).share_memory_()
        self.epoch = 0
        self._store: FeatureStore | None = None
        self.hard_captions: list | None = (None if hard_captions is None
                                           else self._check_pool(hard_captions, manifest, split))

    def _check_pool(self, pool: HardCaptionPool, manifest, split: str) -> list:
        """Per image index, its pool's caption indices (empty: none); the pool must be of this split."""
        if pool.split != split or pool.captions != len(self.texts):
            raise DatasetError(f"the hard-caption pool is for split {pool.split!r} with {pool.captions} captions; "
                               f"{manifest} split {split!r} has {len(self.texts)}: build it for this manifest")
        index = {image_id: row for row, image_id in enumerate(self.image_ids)}
        pools = [np.zeros(0, dtype=np.int64)] * len(self.image_ids)
        for image_id, captions in pool.pool.items():
            if image_id in index:
                captions = np.asarray(captions, dtype=np.int64)
                pools[index[image_id]] = captions[self.caption_to_image[captions] != index[image_id]]
        return pools

    def __len__(self) -> int:
        return len(self.texts)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def store(self) -> FeatureStore:
        if self._store is None:
            self._store = FeatureStore(self.features_path)
        return self._store

    def image(self, index: int) -> tuple:
        features, locations, _ = image_inputs(self.store().get(self.image_ids[index]), self.max_regions)
        fill_global_token(features)
        return features, locations

    def text(self, index: int) -> tuple:
        ids = self.captions.get(index)[0].astype(np.int64)
        return ids, np.zeros_like(ids)

    def _other_image(self, rng, own: int) -> int:
        other = int(rng.integers(len(self.image_ids) - 1))
        return other + (other >= own)

    def _other_caption(self, rng, own_image: int) -> int:
        while True:
            caption = int(rng.integers(len(self.texts)))
            if self.caption_to_image[caption] != own_image:
                return caption

    def __getitem__(self, index: int) -> dict:
        rng = sample_rng(self.seed, self.epoch, index)
        own = int(self.caption_to_image[index])
        other_caption = self._other_caption(rng, own)
        random_image = self._other_image(rng, own)
        if self.hard_captions is not None:
            return self._with_hard_caption(self.hard_captions, rng, index, own, other_caption, random_image)
        hard = int(self.hard_negatives[index])
        fallback = hard == NOT_MINED or hard == own
        if fallback:
            hard = self._other_image(rng, own)
        text, image = self.text(index), self.image(own)
        return {"texts": [text, self.text(other_caption), text, text],
                "images": [image, image, self.image(random_image), self.image(hard)],
                "label": 0, "count_hard_fallback": int(fallback), "count_hard_mined": int(not fallback)}

    def _with_hard_caption(self, pools: list, rng, index: int, own: int, other_caption: int,
                           random_image: int) -> dict:
        """The release's fourth pair: a hard caption of another image (from `pools`, self.hard_captions),
        with this image."""
        pool = pools[own]
        fallback = pool.size == 0
        hard = self._other_caption(rng, own) if fallback else int(pool[rng.integers(pool.size)])
        text, image = self.text(index), self.image(own)
        return {"texts": [text, self.text(other_caption), text, self.text(hard)],
                "images": [image, image, self.image(random_image), image],
                "label": 0, "count_hard_fallback": int(fallback), "count_hard_mined": int(not fallback)}


class HardNegativeMiner:
    """Every `refresh_every` steps, scores the captions this rank will train on next (the next
    `window` of its sampler's order, across an epoch boundary if need be) against pools of
    `pool_size` random images (one pool per chunk of `chunk` captions) with the model being
    trained, and stores each caption's highest-scoring image other than its own."""

    def __init__(self, dataset: Flickr30kTrainSet, sampler, *, pool_size: int, refresh_every: int, window: int,
                 device: torch.device, dtype: torch.dtype, pair_batch: int = 256, chunk: int = 64, seed: int = 0):
        if pool_size < 1 or refresh_every < 1:
            raise ValueError("hard negatives: pool_size and refresh_every must be at least 1")
        self.dataset, self.sampler = dataset, sampler
        self.pool_size, self.refresh_every, self.window = pool_size, refresh_every, window
        self.device, self.dtype, self.pair_batch, self.chunk, self.seed = device, dtype, pair_batch, chunk, seed
        self.refreshes = 0
        self.pairs_scored = 0

    def upcoming(self) -> np.ndarray:
        """The next `window` caption indices of this rank (the sampler's order from its position)."""
        order = self.sampler.epoch_indices()[self.sampler.consumed:]
        if order.size < self.window:
            following = copy.copy(self.sampler)
            following.epoch, following.consumed = self.sampler.epoch + 1, 0
            order = np.concatenate([order, following.epoch_indices()])
        return order[:self.window]

    @torch.no_grad()
    def refresh(self, model) -> int:
        """Mine hard negatives for the upcoming captions; returns the pairs scored. Not collective."""
        was_training = model.training
        model.eval()
        try:
            scorer = PairEmbedder(model, self.device, self.dtype)
            captions = self.upcoming()
            rng = np.random.Generator(np.random.PCG64([self.seed, 7, self.refreshes, self.sampler.rank]))
            dataset = self.dataset
            scored = 0
            for start in range(0, captions.size, self.chunk):
                chunk = captions[start:start + self.chunk]
                pool = rng.choice(len(dataset.image_ids), size=min(self.pool_size + 1, len(dataset.image_ids)),
                                  replace=False)
                scores = score_captions_against_images(scorer, dataset, chunk, pool, self.pair_batch)
                best = pool[scores.argmax(dim=1).numpy()]
                dataset.hard_negatives[torch.from_numpy(chunk)] = torch.from_numpy(best.astype(np.int64))
                scored += scores.numel()
        finally:
            model.train(was_training)
        self.refreshes += 1
        self.pairs_scored += scored
        return scored

    def state_dict(self) -> dict:
        return {"hard_negatives": self.dataset.hard_negatives.clone(), "refreshes": self.refreshes,
                "pairs_scored": self.pairs_scored}

    def load_state_dict(self, state: dict) -> None:
        self.dataset.hard_negatives.copy_(state["hard_negatives"])
        self.refreshes, self.pairs_scored = int(state["refreshes"]), int(state["pairs_scored"])


def score_captions_against_images(scorer, dataset: Flickr30kTrainSet, captions: np.ndarray, images: np.ndarray,
                                  pair_batch: int) -> torch.Tensor:
    """captions x images match scores of training captions and images (indices), a caption against
    its own image set to -inf, so that neither kind of hard negative can be a positive."""
    texts = embed_in_chunks(scorer.embed_texts, lambda rows: _text_batch(dataset, rows), list(captions))
    pictures = embed_in_chunks(scorer.embed_images, lambda rows: _image_batch(dataset, rows), list(images))
    scores = score_all_pairs(scorer, texts, pictures, pair_batch, collective=False)
    own = dataset.caption_to_image[captions]
    scores[torch.from_numpy(own[:, None] == np.asarray(images)[None, :])] = -float("inf")
    return scores


def _text_batch(dataset: Flickr30kTrainSet, rows) -> dict:
    return pad_texts([dataset.text(int(r)) for r in rows])


def _image_batch(dataset: Flickr30kTrainSet, rows) -> dict:
    return pad_regions([dataset.image(int(r)) for r in rows])
