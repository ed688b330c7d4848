"""Classification and regression metrics (NLVR2, GLUE, image classification).

Scales follow the code each task's published numbers come from: ``accuracy``, ``f1_binary``,
``matthews_corrcoef`` and the correlations are fractions (the GLUE metric and NLVR2 report them
so); ``topk_accuracy`` is in percent (the ImageNet convention).

An undefined correlation (one side constant) is 0.0 rather than NaN, as sklearn does for the
Matthews coefficient: a constant predictor carries no correlation, and a NaN would break
best-checkpoint selection.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ._arrays import as_numpy, as_vector, integer_labels, same_length
from .ranking import check_ks, prob_first_correct_within


def accuracy(preds, labels) -> float:
    """Share of predicted class ids equal to the labels."""
    preds = integer_labels(preds, "preds")
    labels = integer_labels(labels, "labels")
    same_length(preds, labels, "preds", "labels")
    return float(np.mean(preds == labels))


def topk_accuracy(logits, labels, ks: Sequence[int] = (1, 5), ties: str = "expected") -> dict:
    """{"top1": %, "top5": %}: share of rows whose label is among the k highest logits.

    Tied logits are counted as a random order of the tied classes (exact expectation), so an
    all-equal output scores k / n_classes rather than 100%; ``ties="pessimistic"`` counts tied
    classes ahead of the label. A k at or above the number of classes scores 100.
    """
    ks = check_ks(ks)
    logits = as_numpy(logits, "logits", np.float64)
    if logits.ndim != 2:
        raise ValueError(f"logits: expected shape (N, classes), got {logits.shape}")
    labels = integer_labels(labels, "labels")
    same_length(logits, labels, "logits", "labels")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(f"labels must lie in [0, {logits.shape[1]}), got [{labels.min()}, {labels.max()}]")
    if np.isnan(logits).any():
        raise ValueError("logits contain NaN")
    target = logits[np.arange(len(labels)), labels][:, None]
    above = (logits > target).sum(axis=1)
    tied_others = (logits == target).sum(axis=1) - 1
    one = np.ones_like(above)
    return {f"top{k}": 100.0 * float(np.mean(prob_first_correct_within(above, tied_others, one, k, ties)))
            for k in ks}


def _confusion(preds: np.ndarray, labels: np.ndarray) -> np.ndarray:
    classes = np.union1d(preds, labels)
    p = np.searchsorted(classes, preds)
    t = np.searchsorted(classes, labels)
    matrix = np.zeros((len(classes), len(classes)), dtype=np.float64)
    np.add.at(matrix, (t, p), 1.0)
    return matrix


def f1_binary(preds, labels, positive: int = 1) -> float:
    """F1 of the ``positive`` class: 2 TP / (2 TP + FP + FN); 0.0 when there is no positive
    prediction and no positive label."""
    preds = integer_labels(preds, "preds")
    labels = integer_labels(labels, "labels")
    same_length(preds, labels, "preds", "labels")
    tp = float(np.sum((preds == positive) & (labels == positive)))
    fp = float(np.sum((preds == positive) & (labels != positive)))
    fn = float(np.sum((preds != positive) & (labels == positive)))
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator else 0.0


def matthews_corrcoef(preds, labels) -> float:
    """Matthews correlation (the multi-class R_K form, equal to (TP*TN - FP*FN) / sqrt(...) for
    two classes); 0.0 when undefined."""
    preds = integer_labels(preds, "preds")
    labels = integer_labels(labels, "labels")
    same_length(preds, labels, "preds", "labels")
    c = _confusion(preds, labels)
    n = c.sum()
    correct = np.trace(c)
    true_counts = c.sum(axis=1)
    pred_counts = c.sum(axis=0)
    covariance = correct * n - true_counts @ pred_counts
    denominator = np.sqrt((n * n - pred_counts @ pred_counts) * (n * n - true_counts @ true_counts))
    return float(covariance / denominator) if denominator > 0 else 0.0


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    dx = x - x.mean()
    dy = y - y.mean()
    denominator = np.sqrt(np.dot(dx, dx) * np.dot(dy, dy))
    if denominator == 0:
        return 0.0
    return float(np.clip(np.dot(dx, dy) / denominator, -1.0, 1.0))


def average_ranks(values) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    values = as_vector(values, "values", np.float64)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last_rank = np.cumsum(counts)
    return (last_rank - (counts - 1) / 2.0)[inverse]


def _float_pair(preds, labels):
    x = as_vector(preds, "preds", np.float64)
    y = as_vector(labels, "labels", np.float64)
    same_length(x, y, "preds", "labels")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("preds and labels must be finite")
    return x, y


def pearson(preds, labels) -> float:
    return _pearson(*_float_pair(preds, labels))


def spearman(preds, labels) -> float:
    """Spearman's rho: the Pearson correlation of average ranks (ties share their mean rank)."""
    x, y = _float_pair(preds, labels)
    return _pearson(average_ranks(x), average_ranks(y))


def pearson_spearman(preds, labels) -> dict:
    """{"pearson", "spearmanr"} (the GLUE metric's key names)."""
    x, y = _float_pair(preds, labels)
    return {"pearson": _pearson(x, y), "spearmanr": _pearson(average_ranks(x), average_ranks(y))}
