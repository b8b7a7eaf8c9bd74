"""GLUE's metrics in plain numpy: accuracy, binary F1, Matthews correlation, Pearson and Spearman correlation.

They give the numbers of scikit-learn and scipy (checked against both in the tests) without importing either:
the two cost about 90 MB of memory and a second of start-up in every job, for five formulas.
"""

from __future__ import annotations

import numpy as np

__all__ = ["accuracy", "binary_f1", "matthews_correlation", "pearson", "spearman"]


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    return float(np.mean(np.asarray(labels) == np.asarray(predictions))) if len(labels) else 0.0


def binary_f1(labels: np.ndarray, predictions: np.ndarray) -> float:
    """F1 of the positive class (label 1); 0 when it is neither predicted nor present (sklearn's zero_division)."""
    labels, predictions = np.asarray(labels) == 1, np.asarray(predictions) == 1
    true_positives = np.sum(labels & predictions)
    denominator = np.sum(labels) + np.sum(predictions)
    return float(2 * true_positives / denominator) if denominator else 0.0


def matthews_correlation(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Matthews correlation for any number of classes (Gorodkin 2004), 0 when either side is constant."""
    classes, encoded = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
    true, predicted = encoded[: len(labels)], encoded[len(labels) :]
    confusion = np.zeros((len(classes), len(classes)), dtype=np.float64)
    np.add.at(confusion, (true, predicted), 1)
    true_sum, predicted_sum = confusion.sum(axis=1), confusion.sum(axis=0)
    n, correct = confusion.sum(), np.trace(confusion)
    covariance = correct * n - true_sum @ predicted_sum
    spread = (n**2 - predicted_sum @ predicted_sum) * (n**2 - true_sum @ true_sum)
    return float(covariance / np.sqrt(spread)) if spread else 0.0


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r; NaN when either input is constant (as scipy)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    norm = np.sqrt(np.sum(x * x) * np.sum(y * y))
    return float(np.clip(np.sum(x * y) / norm, -1.0, 1.0)) if norm else float("nan")


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank (scipy.stats.rankdata's "average")."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]])
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.concatenate([first[1:], [len(values)]]) - 1
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = (first[group] + last[group]) / 2 + 1
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: Pearson's r of the average ranks."""
    return pearson(_average_ranks(np.asarray(x)), _average_ranks(np.asarray(y)))
