"""What zero-shot retrieval needs besides the scorer: the corpus and moving batches to a device.

The scoring itself (every caption against every image with the ITM head, each rank its share,
R@1/5/10, median and mean rank both ways) is `interbert.evaluation.full_retrieval.evaluate_full_retrieval`,
used by pretraining validation, `interbert evaluate retrieval` and fine-tuning alike. The corpus
is the data package's RetrievalCorpus (`build_retrieval_corpus`).
"""
from __future__ import annotations

import torch

from interbert.data.dataset_error import DatasetError
from interbert.data.retrieval.corpus import RetrievalCorpus


def to_device(batch: dict, device: torch.device, dtype: torch.dtype) -> dict:
    """Move a batch to `device`; floating tensors take the model's `dtype`."""
    moved = {}
    for key, value in batch.items():
        value = value.to(device, non_blocking=True)
        moved[key] = value.to(dtype) if value.is_floating_point() else value
    return moved


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
