"""The full retrieval evaluation: every caption against every image, both directions.

    result = evaluate_full_retrieval(model, corpus, device=..., dtype=..., two_stage_k=20)

`corpus` is the data package's RetrievalCorpus (decoded region features cached per image).
Region and text embeddings are computed once (`pair_scoring.PairEmbedder`); the C×I pairs are grouped
into buckets of one caption length × one region count and cut into blocks, so no pair is padded
and attention runs without a mask (`bucket_scoring.BucketScorer`, which also computes the first
interaction layer's projections once per caption and image); every rank of an initialised
process group scores the blocks j ≡ rank (mod world) and one all-reduce gathers the matrix.
`precision="bf16"` scores with a bfloat16 copy of the model (fp32 stays the default: exact). Text→image and
image→text R@1/5/10, median and mean rank come from `interbert.evaluation.metrics`.

Two-stage mode (optional, reported separately, never mixed into the full figures): a cheaper
first stage scores all pairs with each image cut to its global token and its `first_stage_regions`
most confident regions; then, for every caption, its top-k images and, for every image, its top-k
captions are re-scored with all regions. Candidates outside a top-k keep their first-stage order
below the re-scored ones.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from interbert.data.loading.padding import pad_regions
from interbert.data.loading.regions import select_regions
from interbert.evaluation.bucket_scoring import BucketScorer, length_groups, model_in_precision
from interbert.evaluation.metrics import chance_metrics, format_table, retrieval_metrics
from interbert.evaluation.pair_scoring import Embedded, PairEmbedder, embed_in_chunks, pairs_per_batch

DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes of transient activations per forward pass


@dataclass
class RetrievalRun:
    metrics: dict[str, float]
    pairs: int
    seconds: float

    @property
    def pairs_per_second(self) -> float:
        return self.pairs / max(self.seconds, 1e-9)


@dataclass
class FullRetrievalResult:
    full: RetrievalRun
    chance: dict[str, float]
    num_captions: int
    num_images: int
    pair_batch: int
    scores: torch.Tensor  # C×I match probabilities
    precision: str = "exact"
    two_stage: dict = field(default_factory=dict)  # {"run": RetrievalRun, "top_k", "first_stage_regions",
    #                                                   "first_stage_scores" (C×I), "rescored_pairs", ...}


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the process group, (0, 1) without one."""

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _sum_over_ranks(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    if rank_and_world()[1] == 1:
        return tensor
    moved = tensor.to(device)
    dist.all_reduce(moved)
    return moved.cpu()


def reduced_image_batch(corpus, indices, regions: int) -> dict:
    """Image inputs cut to the global token (kept as computed from all regions) and the
    `regions` most confident kept regions of each image."""
    rows = []
    for index in indices:
        features, locations = corpus.image(int(index))
        record = corpus.store.get(corpus.image_ids[int(index)])
        if record.confidences is None:
            order = np.arange(features.shape[0] - 1)
        else:
            selection = select_regions(record.confidences, record.num_regions, corpus.max_regions)
            kept = record.confidences if selection is None else record.confidences[selection]
            order = np.argsort(-kept, kind="stable")
        keep = np.concatenate([[0], order[:regions] + 1])
        rows.append((features[keep].astype(np.float32), locations[keep]))
    return pad_regions(rows)


def _blocks(text_rows: torch.Tensor, image_rows: torch.Tensor, pair_batch: int) -> list:
    """One bucket's text_rows × image_rows cut into grids of at most about `pair_batch` pairs."""
    image_chunk = min(len(image_rows), pair_batch)
    text_chunk = max(1, pair_batch // image_chunk)
    return [(text_rows[t:t + text_chunk], image_rows[i:i + image_chunk])
            for t in range(0, len(text_rows), text_chunk)
            for i in range(0, len(image_rows), image_chunk)]


def bucket_blocks(texts: Embedded, images: Embedded, pair_batch: int) -> list:
    """All caption × image pairs as grids (text_rows, image_rows), each within one bucket of
    caption length × region count, so that no pair of a grid is padded."""
    return [block for _, image_rows in length_groups(images.lengths)
            for _, text_rows in length_groups(texts.lengths)
            for block in _blocks(text_rows, image_rows, pair_batch)]


def score_all_pairs(embedder: PairEmbedder, texts: Embedded, images: Embedded, pair_batch: int,
                    collective: bool = True, scoring_model=None, progress: bool = False) -> torch.Tensor:
    """C×I scores of every pair of the embedded captions and images, bucket by bucket, with
    `scoring_model` (default: the embedder's model; `bucket_scoring.model_in_precision`). Collective:
    each rank scores its blocks and the matrix is summed over ranks; otherwise this rank scores
    everything. `progress`: a progress bar on rank 0 (stderr)."""
    rank, world = rank_and_world() if collective else (0, 1)
    grid_scorer = BucketScorer(embedder.model if scoring_model is None else scoring_model, texts, images)
    scores = torch.zeros(texts.hidden.shape[0], images.hidden.shape[0], dtype=torch.float32)
    blocks = list(bucket_blocks(texts, images, pair_batch))
    blocks = tqdm(blocks, desc="scoring pairs", unit="block", mininterval=1.0, disable=not progress or rank != 0)
    for j, (text_rows, image_rows) in enumerate(blocks):
        if j % world == rank:
            scores[text_rows[:, None], image_rows[None, :]] = grid_scorer.score_grid(text_rows, image_rows)
    return _sum_over_ranks(scores, embedder.device) if collective else scores


def score_pair_list(scorer: BucketScorer, text_rows: torch.Tensor, image_rows: torch.Tensor,
                    pair_batch: int) -> torch.Tensor:
    """Scores of arbitrary pairs, grouped by bucket into batches; each rank its share."""
    rank, world = rank_and_world()
    longest_region_count = int(scorer.images.lengths.max()) + 1
    bucket = scorer.texts.lengths.cpu()[text_rows] * longest_region_count + scorer.images.lengths.cpu()[image_rows]
    scores = torch.zeros(text_rows.numel(), dtype=torch.float32)
    batches = [chunk for _, pairs in length_groups(bucket) for chunk in pairs.split(pair_batch)]
    for j, chunk in enumerate(batches):
        if j % world == rank:
            scores[chunk] = scorer.score_pairs(text_rows[chunk], image_rows[chunk])
    return _sum_over_ranks(scores, scorer.device)


def _embed_corpus(embedder: PairEmbedder, corpus, reduced_regions: int | None = None) -> tuple[Embedded, Embedded]:
    texts = embed_in_chunks(embedder.embed_texts, corpus.text_batch, list(range(len(corpus))))
    if reduced_regions is None:
        make_images = corpus.image_batch
    else:
        make_images = lambda indices: reduced_image_batch(corpus, indices, reduced_regions)  # noqa: E731
    images = embed_in_chunks(embedder.embed_images, make_images, list(range(len(corpus.image_ids))))
    return texts, images


def _tokens_per_pair(corpus) -> int:
    longest_caption = int(corpus.captions.lengths().max())
    return longest_caption + corpus.max_regions + 1


def evaluate_full_retrieval(model, corpus, *, device: torch.device | None = None,
                            dtype: torch.dtype = torch.float32, pair_batch: int | None = None,
                            memory_budget: int = DEFAULT_MEMORY_BUDGET, two_stage_k: int = 0,
                            first_stage_regions: int = 10, precision: str = "exact",
                            progress: bool = False) -> FullRetrievalResult:
    """All C×I pairs scored, R@1/5/10 and median rank both ways; optionally the two-stage
    re-ranking as well. `model`: an InterBertForPretraining in `dtype`. `precision`: "exact" scores
    with the model as it is, "bf16" with a bfloat16 copy of it (`bucket_scoring`); embeddings are
    computed with the model as it is. Collective when a process group exists. `progress`: a
    progress bar of the scoring on rank 0."""
    device = device or torch.device("cpu")
    num_captions, num_images = len(corpus), len(corpus.image_ids)
    if pair_batch is None:
        element_bytes = 2 if precision == "bf16" else torch.finfo(dtype).bits // 8
        pair_batch = pairs_per_batch(model.config, _tokens_per_pair(corpus), memory_budget, element_bytes)
    caption_image = torch.as_tensor(corpus.caption_to_image, dtype=torch.long)
    was_training = model.training
    model.eval()
    try:
        embedder = PairEmbedder(model, device, dtype)
        scoring_model = model_in_precision(model, precision)
        start = time.perf_counter()
        texts, images = _embed_corpus(embedder, corpus)
        scores = score_all_pairs(embedder, texts, images, pair_batch, scoring_model=scoring_model, progress=progress)
        full = RetrievalRun(retrieval_metrics(scores, caption_image), num_captions * num_images,
                            time.perf_counter() - start)
        result = FullRetrievalResult(full, chance_metrics(num_images, num_captions), num_captions,
                                     num_images, pair_batch, scores, precision)
        if two_stage_k:
            result.two_stage = _two_stage(embedder, scoring_model, corpus, texts, images, caption_image,
                                          pair_batch, two_stage_k, first_stage_regions)
    finally:
        model.train(was_training)
    return result


def _two_stage(embedder, scoring_model, corpus, texts, images, caption_image, pair_batch, k, regions) -> dict:
    start = time.perf_counter()
    _, reduced = _embed_corpus(embedder, corpus, reduced_regions=regions)
    first = score_all_pairs(embedder, texts, reduced, pair_batch, scoring_model=scoring_model)
    first_seconds = time.perf_counter() - start
    num_captions, num_images = first.shape
    k_images, k_captions = min(k, num_images), min(k, num_captions)
    t2i_top = first.topk(k_images, dim=1).indices  # C×k
    i2t_top = first.topk(k_captions, dim=0).indices  # k×I
    candidates = torch.zeros_like(first, dtype=torch.bool)
    candidates[torch.arange(num_captions)[:, None], t2i_top] = True
    candidates[i2t_top, torch.arange(num_images)[None, :]] = True
    text_rows, image_rows = candidates.nonzero(as_tuple=True)
    rescored = score_pair_list(BucketScorer(scoring_model, texts, images), text_rows, image_rows, pair_batch)
    full_scores = torch.full_like(first, float("nan"))
    full_scores[text_rows, image_rows] = rescored
    # Re-scored candidates rank above everything else (probabilities lie in [0, 1]).
    t2i = first.clone()
    t2i_mask = torch.zeros_like(candidates)
    t2i_mask[torch.arange(num_captions)[:, None], t2i_top] = True
    t2i[t2i_mask] = 2.0 + full_scores[t2i_mask]
    i2t = first.clone()
    i2t_mask = torch.zeros_like(candidates)
    i2t_mask[i2t_top, torch.arange(num_images)[None, :]] = True
    i2t[i2t_mask] = 2.0 + full_scores[i2t_mask]
    metrics = {key: value for key, value in retrieval_metrics(t2i, caption_image).items() if key.startswith("t2i")}
    metrics.update({key: value for key, value in retrieval_metrics(i2t, caption_image).items()
                    if key.startswith("i2t")})
    metrics["rsum"] = 100 * sum(metrics[f"{d}_r@{n}"] for d in ("t2i", "i2t") for n in (1, 5, 10))
    seconds = time.perf_counter() - start
    return {"run": RetrievalRun(metrics, num_captions * num_images + int(text_rows.numel()), seconds),
            "top_k": k, "first_stage_regions": regions, "first_stage_seconds": first_seconds,
            "rescored_pairs": int(text_rows.numel()), "first_stage_scores": first}


def format_result(result: FullRetrievalResult) -> str:
    full = result.full
    lines = [f"full evaluation: {result.num_images} images x {result.num_captions} captions = "
             f"{full.pairs} pairs in {full.seconds:.1f} s ({full.pairs_per_second:.0f} pairs/s, "
             f"at most {result.pair_batch} pairs per forward, {rank_and_world()[1]} rank(s), "
             f"precision {result.precision})",
             format_table(full.metrics, result.chance)]
    if result.two_stage:
        two = result.two_stage
        run = two["run"]
        lines += [f"two-stage (reported separately): first stage with {two['first_stage_regions']} regions "
                  f"per image over all pairs ({two['first_stage_seconds']:.1f} s), then the top {two['top_k']} "
                  f"of each caption and image re-scored ({two['rescored_pairs']} pairs); {run.seconds:.1f} s "
                  f"in all", format_table(run.metrics, result.chance)]
    return "\n".join(lines)


def result_json(result: FullRetrievalResult) -> dict:
    out = {"images": result.num_images, "captions": result.num_captions, "pairs": result.full.pairs,
           "seconds": result.full.seconds, "pairs_per_second": result.full.pairs_per_second,
           "pair_batch": result.pair_batch, "precision": result.precision, "metrics": result.full.metrics,
           "chance": result.chance}
    if result.two_stage:
        two = result.two_stage
        out["two_stage"] = {"metrics": two["run"].metrics, "seconds": two["run"].seconds,
                            "top_k": two["top_k"], "first_stage_regions": two["first_stage_regions"],
                            "rescored_pairs": two["rescored_pairs"]}
    return out
