"""Trivial baselines of a task's eval splits, and whether a dense model clearly beats them.

A pruned model is only worth reporting when the dense model it came from learned the task. On small GLUE
sets a short fine-tune often learns nothing: MRPC lands exactly on the all-"equivalent" accuracy and F1.
Pruning such a model and reporting "gains" is noise, so the job checks the dense model against the
majority class (predict the split's most frequent label) and chance (uniform random labels).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import WeakBaselineError
from .evaluate import compute_metrics
from .specs import TaskSpec
from .task_data import TaskData

__all__ = ["Z_ONE_SIDED_95", "check_dense_model", "split_baselines", "task_baselines", "weak_baseline_reason"]

Z_ONE_SIDED_95 = 1.645
_CHANCE_DRAWS = 20
_CORRELATIONS = ("matthews_correlation", "pearson", "spearmanr", "combined_score")


def _metrics(spec: TaskSpec, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    values = compute_metrics(spec, predictions, labels)
    return {key: (0.0 if isinstance(value, float) and math.isnan(value) else float(value)) for key, value in values.items()}


def split_baselines(spec: TaskSpec, labels: Sequence[Any], seed: int = 0) -> dict[str, dict[str, float]]:
    """`{"majority": metrics, "chance": metrics}` for one split's labels.

    Majority: the split's most frequent label everywhere. Chance: labels drawn uniformly at random, the mean
    of 20 seeded draws. For regression (STS-B) both predict no relation at all: correlation 0.
    """
    labels = np.asarray(labels)
    if spec.is_regression:
        zero = {key: 0.0 for key in spec.metrics}
        return {"majority": dict(zero), "chance": dict(zero)}
    counts = np.bincount(labels.astype(int), minlength=spec.num_labels)
    majority = _metrics(spec, np.full(len(labels), int(counts.argmax())), labels)
    generator = np.random.default_rng(seed)
    draws = [_metrics(spec, generator.integers(0, spec.num_labels, len(labels)), labels) for _ in range(_CHANCE_DRAWS)]
    chance = {key: float(np.mean([draw[key] for draw in draws])) for key in draws[0]}
    return {"majority": majority, "chance": chance}


def task_baselines(spec: TaskSpec, eval_labels: Mapping[str, Sequence[Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """`{split: {"majority": metrics, "chance": metrics}}` for every eval split."""
    return {split: split_baselines(spec, labels) for split, labels in eval_labels.items()}


def _undefined(value: Any) -> bool:
    """A metric that is no number: NaN (a correlation of constant predictions), inf, or None (NaN as a resumed
    run reads it back from its JSON state)."""
    return value is None or not math.isfinite(float(value))


def weak_baseline_reason(
    spec: TaskSpec,
    metrics: Mapping[str, Mapping[str, float]],
    baselines: Mapping[str, Mapping[str, Mapping[str, float]]],
    sizes: Mapping[str, int],
) -> str | None:
    """Why the dense `metrics` are not clearly above the trivial baselines, or None when they are.

    "Clearly" means beyond a one-sided 95% margin: for classification, accuracy above the majority rate p by
    1.645 * sqrt(p (1 - p) / n), the spread of a constant predictor's accuracy on n examples, and the task's
    main metric above both baselines'; for a correlation (CoLA's MCC, STS-B), above 1.645 / sqrt(n). A metric
    that is undefined (NaN, e.g. the correlation of constant predictions) is not above anything: weak.
    """
    main = spec.main_metric
    for split, values in metrics.items():
        n = max(int(sizes.get(split, 0)), 1)
        trivial = baselines[split]
        checked = (main,) if main in _CORRELATIONS else ("accuracy", main)
        undefined = next((key for key in checked if key in values and _undefined(values[key])), None)
        if undefined is not None:
            return (
                f"on {split}, the dense model's {undefined} is undefined (NaN: e.g. constant predictions), "
                "which is not above what a constant or random prediction gets"
            )
        if main in _CORRELATIONS:  # CoLA's MCC, STS-B's correlations: about N(0, 1/n) for a model that learned nothing
            needed = Z_ONE_SIDED_95 / math.sqrt(n)
            if values.get(main, 0.0) <= needed:
                return (
                    f"on {split}, the dense model's {main} {values.get(main, 0.0):.4f} is not clearly above 0, "
                    f"what a constant or random prediction gets (needs > {needed:.4f} on {n} examples)"
                )
            continue
        p = trivial["majority"]["accuracy"]
        needed = p + Z_ONE_SIDED_95 * math.sqrt(p * (1 - p) / n)
        accuracy = values.get("accuracy", 0.0)
        if accuracy <= needed:
            return (
                f"on {split}, the dense model's accuracy {accuracy:.4f} is not clearly above the majority class "
                f"({p:.4f}; needs > {needed:.4f} on {n} examples)"
            )
        best = max(trivial["majority"].get(main, 0.0), trivial["chance"].get(main, 0.0))
        if values.get(main, 0.0) <= best:
            return f"on {split}, the dense model's {main} {values.get(main, 0.0):.4f} is not above the trivial baselines' {best:.4f}"
    return None


def check_dense_model(
    data: TaskData, metrics: Mapping[str, Mapping[str, float]], *, allow_weak: bool = False
) -> tuple[dict[str, dict[str, dict[str, float]]] | None, str | None]:
    """`(baselines, weak)` of a task's eval splits for the dense model's `metrics` (`(None, None)` for `lm`).

    A weak dense model raises `WeakBaselineError` unless `allow_weak`: the job stops before pruning, with its
    state kept so that the same call with `allow_weak_baseline=True, resume=True` goes on.
    """
    if data.is_lm:
        return None, None
    baselines = task_baselines(data.spec, {split: list(dataset["label"]) for split, dataset in data.eval.items()})
    weak = weak_baseline_reason(data.spec, metrics, baselines, {split: len(dataset) for split, dataset in data.eval.items()})
    if weak and not allow_weak:
        advice = "pruning a model that learned nothing is not a result; train it longer or on more data, or prune it anyway with"
        raise WeakBaselineError(
            f"{weak}: {advice} allow_weak_baseline=True, resume=True",
            cli_message=f"{weak}: {advice} --allow-weak-baseline --resume",
        )
    return baselines, weak
