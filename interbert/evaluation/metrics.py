"""Retrieval metrics from a matrix of pair scores.

scores: C×I, the match score of caption c with image i (higher = better match);
caption_image: C, the index of each caption's own image. An image may own several captions.
"""
from __future__ import annotations

import math

import torch

RECALL_AT = (1, 5, 10)


def text_to_image_ranks(scores: torch.Tensor, caption_image: torch.Tensor) -> torch.Tensor:
    """1-based rank of each caption's own image among all images (ties count against)."""
    own = scores.gather(1, caption_image[:, None])
    return (scores >= own).sum(dim=1)


def image_to_text_ranks(scores: torch.Tensor, caption_image: torch.Tensor) -> torch.Tensor:
    """1-based rank, for each image that owns captions, of its best-ranked own caption
    (other captions that tie with it count against)."""
    by_image = scores.t()  # I×C
    ranks = []
    for image in torch.unique(caption_image).tolist():
        own = caption_image == image
        best_own = by_image[image, own].max()
        others = by_image[image].masked_fill(own, float("-inf"))
        ranks.append(int((others >= best_own).sum()) + 1)
    return torch.tensor(ranks)


def _summary(ranks: torch.Tensor, prefix: str) -> dict[str, float]:
    result = {f"{prefix}_r@{k}": float((ranks <= k).float().mean()) for k in RECALL_AT}
    result[f"{prefix}_median_rank"] = float(ranks.float().median())
    result[f"{prefix}_mean_rank"] = float(ranks.float().mean())
    return result


def retrieval_metrics(scores: torch.Tensor, caption_image: torch.Tensor) -> dict[str, float]:
    """R@1/5/10, median and mean rank for text→image (`t2i_*`) and image→text (`i2t_*`),
    and `rsum` (the sum of the six recalls, in percent, as papers report it)."""
    scores = scores.float().cpu()
    caption_image = caption_image.long().cpu()
    metrics = {**_summary(text_to_image_ranks(scores, caption_image), "t2i"),
               **_summary(image_to_text_ranks(scores, caption_image), "i2t")}
    metrics["rsum"] = 100 * sum(metrics[f"{d}_r@{k}"] for d in ("t2i", "i2t") for k in RECALL_AT)
    return metrics


def chance_metrics(num_images: int, num_captions: int) -> dict[str, float]:
    """Expected recalls of random scores: K/I for text→image; for image→text with c = C/I
    captions per image, 1 - C(C-c, K)/C(C, K)."""
    per_image = num_captions / num_images
    chance = {}
    for k in RECALL_AT:
        chance[f"t2i_r@{k}"] = min(1.0, k / num_images)
        c = round(per_image)
        if k >= num_captions:
            chance[f"i2t_r@{k}"] = 1.0
        else:
            chance[f"i2t_r@{k}"] = 1.0 - math.comb(num_captions - c, k) / math.comb(num_captions, k)
    return chance


def format_table(metrics: dict[str, float], chance: dict[str, float]) -> str:
    """A small table: recall next to chance and the ratio, both directions."""
    lines = [f"{'':14}{'R@1':>16}{'R@5':>16}{'R@10':>16}   median rank"]
    for direction, name in (("t2i", "text->image"), ("i2t", "image->text")):
        cells = []
        for k in RECALL_AT:
            value, base = metrics[f"{direction}_r@{k}"], chance[f"{direction}_r@{k}"]
            cells.append(f"{100 * value:5.1f}% ({100 * base:4.1f}%)")
        lines.append(f"{name:14}" + "".join(f"{c:>16}" for c in cells)
                     + f"   {metrics[f'{direction}_median_rank']:g}")
    lines.append("(chance in brackets)")
    return "\n".join(lines)
