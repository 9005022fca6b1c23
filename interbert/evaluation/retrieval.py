"""Zero-shot image-text retrieval: score every (caption, image) pair with the model's ITM
head, then rank.

The C×I pairs are cut into one contiguous share per rank; each rank scores its share in
batches and the scores are gathered, so N ranks take 1/N of the time. The corpus is the data
package's RetrievalCorpus: unmasked input batches from `pair_batch(caption_indices,
image_indices)`, `len(corpus)` captions, `image_ids`, and `caption_to_image`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from interbert.data.pretraining_dataset import DatasetError
from interbert.data.retrieval import RetrievalCorpus
from interbert.evaluation.metrics import chance_metrics, retrieval_metrics
from interbert.modeling.pretraining import INPUT_KEYS


@dataclass
class RetrievalResult:
    metrics: dict[str, float]
    chance: dict[str, float]
    num_captions: int
    num_images: int
    seconds: float


def to_device(batch: dict, device: torch.device, dtype: torch.dtype) -> dict:
    """Move a batch to `device`; floating tensors take the model's `dtype`."""
    moved = {}
    for key, value in batch.items():
        value = value.to(device, non_blocking=True)
        moved[key] = value.to(dtype) if value.is_floating_point() else value
    return moved


@torch.no_grad()
def score_pairs(model, corpus, pair_indices: torch.Tensor, batch_size: int,
                device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """ITM match probabilities for flat pair indices p = caption * num_images + image."""
    num_images = len(corpus.image_ids)
    scores = torch.empty(pair_indices.numel(), dtype=torch.float32)
    for start in range(0, pair_indices.numel(), batch_size):
        chunk = pair_indices[start:start + batch_size]
        captions = (chunk // num_images).tolist()
        images = (chunk % num_images).tolist()
        batch = to_device(corpus.pair_batch(captions, images), device, dtype)
        scores[start:start + chunk.numel()] = model.itm_score(
            **{key: batch[key] for key in INPUT_KEYS}).float().cpu()
    return scores


def _gather_shares(share: torch.Tensor, total: int, device: torch.device) -> torch.Tensor:
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return share
    world = dist.get_world_size()
    per_rank = -(-total // world)
    padded = torch.zeros(per_rank, dtype=torch.float32, device=device)
    padded[:share.numel()] = share.to(device)
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return torch.cat([g.cpu() for g in gathered])[:total]


def evaluate_retrieval(model, corpus, batch_size: int = 256, device: torch.device | None = None,
                       dtype: torch.dtype = torch.float32) -> RetrievalResult:
    """Score all C×I pairs (each rank its share) and compute R@1/5/10 both ways.

    `model` is an InterBertForPretraining (or anything with `itm_score(**inputs)`); every rank
    of an initialised process group must call this together."""
    import torch.distributed as dist

    device = device or torch.device("cpu")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    num_captions, num_images = len(corpus), len(corpus.image_ids)
    total = num_captions * num_images
    per_rank = -(-total // world)
    mine = torch.arange(rank * per_rank, min(total, (rank + 1) * per_rank), dtype=torch.long)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        share = score_pairs(model, corpus, mine, batch_size, device, dtype)
    finally:
        model.train(was_training)
    scores = _gather_shares(share, total, device).view(num_captions, num_images)
    caption_image = torch.as_tensor(corpus.caption_to_image, dtype=torch.long)
    return RetrievalResult(
        metrics=retrieval_metrics(scores, caption_image),
        chance=chance_metrics(num_images, num_captions),
        num_captions=num_captions,
        num_images=num_images,
        seconds=time.perf_counter() - start,
    )


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
