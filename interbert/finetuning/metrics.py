"""Metrics of the fine-tuning tasks, in numpy (no scipy needed).

GLUE reports F1 for QQP and MRPC, Spearman correlation for STS-B, Matthews correlation for CoLA
and accuracy for the rest (paper Table 3); VCR reports Q→A, QA→R and Q→AR accuracy. Retrieval
recall and median rank are `interbert.evaluation.metrics.retrieval_metrics`.
"""
from __future__ import annotations

import math

import numpy as np


def accuracy(predictions, labels) -> float:
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape or labels.size == 0:
        raise ValueError(f"accuracy needs equal, non-empty shapes; got {predictions.shape} and {labels.shape}")
    return float((predictions == labels).mean())


def f1_binary(predictions, labels, positive: int = 1) -> float:
    """F1 of the positive class: 2·TP / (2·TP + FP + FN); 0 when there are no positives at all."""
    predictions, labels = np.asarray(predictions) == positive, np.asarray(labels) == positive
    tp = int((predictions & labels).sum())
    fp = int((predictions & ~labels).sum())
    fn = int((~predictions & labels).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def matthews_correlation(predictions, labels) -> float:
    """(TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) for binary labels; 0 when a
    margin is empty (the usual convention)."""
    predictions, labels = np.asarray(predictions).astype(bool), np.asarray(labels).astype(bool)
    tp = float((predictions & labels).sum())
    tn = float((~predictions & ~labels).sum())
    fp = float((predictions & ~labels).sum())
    fn = float((~predictions & labels).sum())
    denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denominator if denominator else 0.0


def pearson_correlation(x, y) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denominator) if denominator else 0.0


def average_ranks(values) -> np.ndarray:
    """1-based ranks, ties sharing the mean of the ranks they span."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(values.size, dtype=np.float64)
    sorted_values = values[order]
    start = 0
    while start < values.size:
        end = start
        while end + 1 < values.size and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman_correlation(x, y) -> float:
    """Pearson correlation of the average ranks."""
    return pearson_correlation(average_ranks(x), average_ranks(y))


def qar_accuracy(answer_correct, rationale_correct) -> float:
    """Q→AR: a question counts only when both its answer and its rationale are right."""
    answer_correct = np.asarray(answer_correct, dtype=bool)
    rationale_correct = np.asarray(rationale_correct, dtype=bool)
    if answer_correct.shape != rationale_correct.shape:
        raise ValueError("Q→AR needs one answer and one rationale verdict per question")
    return float((answer_correct & rationale_correct).mean())


def glue_metrics(metric: str, predictions, labels) -> dict[str, float]:
    """The metrics of one GLUE task: `metric` is the task's headline metric (see glue.TASKS);
    accuracy (classification) or Pearson (regression) is reported beside it."""
    if metric == "spearman":
        return {"spearman": spearman_correlation(predictions, labels),
                "pearson": pearson_correlation(predictions, labels)}
    result = {"accuracy": accuracy(predictions, labels)}
    if metric == "f1":
        result["f1"] = f1_binary(predictions, labels)
    elif metric == "matthews":
        result["matthews"] = matthews_correlation(predictions, labels)
    elif metric != "accuracy":
        raise ValueError(f"unknown GLUE metric {metric!r}")
    return result
