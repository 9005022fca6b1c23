"""Inputs for image-text retrieval evaluation: every caption against every image, unmasked."""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from interbert.data.dataset_error import DatasetError
from interbert.data.loading.padding import pad_regions
from interbert.data.loading.regions import fill_global_token, image_inputs
from interbert.data.store.reader import FeatureStore
from interbert.data.text.caption_batch import caption_batch
from interbert.data.text.manifests import read_manifest
from interbert.data.text.tokenization import load_tokenizer, tokenize_captions


class RetrievalCorpus:
    """The images of one split and their captions, ready to be paired in any combination.

    Attributes: ``image_ids`` (list of I ids, manifest order), ``captions`` (TokenizedCaptions,
    K captions), ``caption_texts`` (K strings), ``caption_to_image`` (K int64: index into
    ``image_ids``). Each image's regions (global token first, at most ``max_regions`` + 1) are
    decoded once and cached as float16 features and float32 locations.
    Captions of ``split`` with an image missing from the store, or empty, raise DatasetError.
    """

    def __init__(self, store_path, manifest_path: str | os.PathLike, vocab_file: str | None = None,
                 split: str | None = "test", max_images: int | None = None, max_regions: int = 36,
                 max_text_len: int = 36):
        self.store = store_path if isinstance(store_path, FeatureStore) else FeatureStore(store_path)
        self.max_regions = max_regions
        image_index: dict = {}
        texts, owners = [], []
        for line_number, entry in read_manifest(manifest_path):
            if split is not None and entry.get("split") != split:
                continue
            image_id = entry["image_id"]
            if image_id not in image_index:
                if max_images is not None and len(image_index) >= max_images:
                    continue
                image_index[image_id] = len(image_index)
            caption = str(entry["caption"]).strip()
            if not caption:
                raise DatasetError(f"{manifest_path}:{line_number}: empty caption in the {split!r} split; "
                                   "retrieval needs every caption")
            texts.append(caption)
            owners.append(image_index[image_id])
        self.image_ids = list(image_index)
        if not self.image_ids:
            raise DatasetError(f"{manifest_path}: no captions in split {split!r}")
        missing = self.store.missing(self.image_ids)
        if missing:
            raise DatasetError(f"{manifest_path}: {len(missing)} images of split {split!r} are not in feature "
                               f"store {self.store.path} (first: {missing[:3]})")
        self.caption_texts = texts
        self.caption_to_image = np.array(owners, dtype=np.int64)
        self.captions = tokenize_captions(load_tokenizer(vocab_file), texts, max_text_len)
        self._images: list = [None] * len(self.image_ids)

    def __len__(self) -> int:
        return len(self.caption_texts)

    def image(self, index: int) -> tuple:
        """Cached ``(features (n+1)×F float16, locations (n+1)×5 float32)`` of image ``index``."""
        if self._images[index] is None:
            features, locations, _ = image_inputs(self.store.get(self.image_ids[index]), self.max_regions)
            fill_global_token(features)
            self._images[index] = (features, locations)
        return self._images[index]

    def text_batch(self, caption_indices: Sequence[int]) -> dict:
        """input_ids, token_type_ids (B×T long), text_mask (B×T bool) for these captions."""
        ids, _, lengths = caption_batch(self.captions, np.asarray(caption_indices, dtype=np.int64))
        return {"input_ids": torch.from_numpy(ids), "token_type_ids": torch.zeros(ids.shape, dtype=torch.long),
                "text_mask": torch.from_numpy(np.arange(ids.shape[1]) < lengths[:, None])}

    def image_batch(self, image_indices: Sequence[int]) -> dict:
        """region_features (B×R×F float16: the model casts them on its device), region_locations
        (B×R×5 float32), region_mask (B×R bool)."""
        return pad_regions([self.image(int(i)) for i in image_indices])

    def pair_batch(self, caption_indices: Sequence[int], image_indices: Sequence[int]) -> dict:
        """The six model inputs for pairs (caption_indices[b], image_indices[b]), padded, unmasked."""
        if len(caption_indices) != len(image_indices):
            raise ValueError(f"{len(caption_indices)} captions but {len(image_indices)} images; pair them one to one")
        return {**self.text_batch(caption_indices), **self.image_batch(image_indices)}


def build_retrieval_corpus(features: str, manifests: list[str], vocab: str | None, split: str,
                           images: int | None, max_text_len: int = 36,
                           max_regions: int = 36) -> RetrievalCorpus:
    """The first `images` images of `split` (manifest order) with all their captions, from
    the first of `manifests` that has that split."""
    problems = []
    for manifest in manifests:
        try:
            return RetrievalCorpus(features, manifest, vocab_file=vocab, split=split,
                                   max_images=images, max_regions=max_regions,
                                   max_text_len=max_text_len)
        except DatasetError as error:
            problems.append(str(error))
    raise DatasetError(f"no retrieval corpus for split {split!r}: " + "; ".join(problems))
