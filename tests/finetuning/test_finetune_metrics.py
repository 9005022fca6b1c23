"""The fine-tuning metrics (interbert/finetuning/metrics.py) against values worked out by hand on tiny
known inputs; the retrieval metrics are tested in tests/evaluation/test_retrieval_metrics.py."""
from __future__ import annotations

import math

import pytest

from interbert.finetuning.metrics import (
    accuracy,
    average_ranks,
    f1_binary,
    glue_metrics,
    matthews_correlation,
    qar_accuracy,
    spearman_correlation,
)


def test_f1_of_the_positive_class():
    # TP = 2 (rows 0, 1), FP = 1 (row 2), FN = 1 (row 3): F1 = 4 / (4 + 1 + 1)
    assert f1_binary([1, 1, 1, 0, 0], [1, 1, 0, 1, 0]) == pytest.approx(4 / 6)


def test_matthews_correlation():
    # TP 2, TN 1, FP 1, FN 1: (2·1 − 1·1) / sqrt(3·3·2·2) = 1/6
    assert matthews_correlation([1, 1, 1, 0, 0], [1, 1, 0, 1, 0]) == pytest.approx(1 / 6)
    assert matthews_correlation([1, 0, 1, 0], [1, 0, 1, 0]) == pytest.approx(1.0)
    assert matthews_correlation([1, 1, 1], [1, 0, 1]) == 0.0  # an empty margin


def test_spearman_with_ties_uses_average_ranks():
    assert list(average_ranks([10, 20, 20, 5])) == [2.0, 3.5, 3.5, 1.0]
    # ranks x = (1, 2, 3, 4), y = (1, 3, 2, 4): d² = 0+1+1+0 = 2, rho = 1 − 6·2/(4·15) = 0.8
    assert spearman_correlation([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    assert spearman_correlation([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_q2ar_counts_a_question_only_when_answer_and_rationale_are_right():
    assert qar_accuracy([1, 1, 0, 1], [1, 0, 1, 1]) == pytest.approx(0.5)


def test_glue_metrics_report_the_headline_metric_per_task():
    assert glue_metrics("f1", [1, 0], [1, 1]) == {"accuracy": 0.5, "f1": pytest.approx(2 / 3)}
    assert set(glue_metrics("matthews", [1, 0], [1, 0])) == {"accuracy", "matthews"}
    assert set(glue_metrics("spearman", [0.1, 0.5, 0.2], [1.0, 3.0, 2.0])) == {"spearman", "pearson"}
    assert accuracy([0, 2, 1], [0, 2, 2]) == pytest.approx(2 / 3)
    assert not math.isnan(glue_metrics("accuracy", [1], [1])["accuracy"])
