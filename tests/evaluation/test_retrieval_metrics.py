"""Retrieval metrics (interbert/evaluation/metrics.py) against values worked out by hand: recall at
k and the median and mean ranks in each direction, ties counted against the model, chance levels."""
from __future__ import annotations

import pytest
import torch

from interbert.evaluation.metrics import chance_metrics, retrieval_metrics


def test_retrieval_metrics_rank_each_direction():
    # 3 images, 2 captions each (caption c belongs to image c // 2).
    caption_image = torch.tensor([0, 0, 1, 1, 2, 2])
    scores = torch.tensor([
        [0.9, 0.1, 0.0],  # rank 1
        [0.2, 0.8, 0.1],  # rank 2
        [0.1, 0.7, 0.3],  # rank 1
        [0.1, 0.6, 0.7],  # rank 2
        [0.5, 0.4, 0.3],  # rank 3
        [0.0, 0.2, 0.1],  # rank 2
    ])
    metrics = retrieval_metrics(scores, caption_image)
    assert metrics["t2i_r@1"] == pytest.approx(2 / 6)
    assert metrics["t2i_r@5"] == 1.0
    assert metrics["t2i_median_rank"] == 2.0
    # Image 0: its caption 0 (0.9) leads, rank 1. Image 1: its best caption scores 0.7 and
    # caption 1 (0.8) beats it, rank 2. Image 2: its best is 0.3, tied by caption 2 and
    # beaten by caption 3, rank 3 (ties count against).
    assert metrics["i2t_r@1"] == pytest.approx(1 / 3)
    assert metrics["i2t_median_rank"] == 2.0


def test_ties_count_against_the_model():
    caption_image = torch.tensor([0, 1, 2, 3])
    metrics = retrieval_metrics(torch.zeros(4, 4), caption_image)
    assert metrics["t2i_r@1"] == 0.0 and metrics["i2t_r@1"] == 0.0


def test_chance_levels():
    chance = chance_metrics(num_images=100, num_captions=500)
    assert chance["t2i_r@1"] == pytest.approx(0.01)
    assert chance["t2i_r@10"] == pytest.approx(0.10)
    assert chance["i2t_r@1"] == pytest.approx(5 / 500)


def test_recall_and_median_rank_on_a_known_score_matrix():
    # 3 images, 4 captions; captions 0,1 belong to image 0, caption 2 to image 1, caption 3 to image 2.
    scores = torch.tensor([[0.9, 0.1, 0.2],    # own image 0 ranked 1
                           [0.1, 0.8, 0.7],    # own image 0 ranked 3
                           [0.5, 0.4, 0.6],    # own image 1 ranked 3
                           [0.2, 0.3, 0.1]])   # own image 2 ranked 3... scores 0.1 < 0.2 < 0.3 -> rank 3
    metrics = retrieval_metrics(scores, torch.tensor([0, 0, 1, 2]))
    # text->image ranks: 1, 3, 3, 3
    assert metrics["t2i_r@1"] == pytest.approx(1 / 4)
    assert metrics["t2i_r@5"] == pytest.approx(1.0)
    assert metrics["t2i_median_rank"] == 3
    # image->text, best own caption: image 0 -> caption 0 (0.9, rank 1); image 1 -> caption 2 (0.4;
    # captions 1 (0.8) above it: rank 2); image 2 -> caption 3 (0.1; 0.2, 0.7, 0.6 above: rank 4)
    assert metrics["i2t_r@1"] == pytest.approx(1 / 3)
    assert metrics["i2t_median_rank"] == 2
    assert metrics["i2t_mean_rank"] == pytest.approx(7 / 3)
