"""How a task is measured: its GLUE metrics (`compute_metrics`, and the `transformers.Trainer` callable), and
`evaluate_model` on every eval split of a `TaskData` (GLUE's metrics, or perplexity for `lm`).

Metrics are computed with `hfprune.tasks.metrics` (numpy) rather than ``evaluate.load("glue", ...)`` so that they
work offline; the numbers and key names are the same as the official GLUE metric. It exists apart from
`task_data` so that loading a task and scoring predictions are separate jobs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import metrics
from .lm import perplexity
from .specs import TaskSpec, get_task
from .task_data import TaskData, padding_collator, tokenize_split

if TYPE_CHECKING:
    from ..progress import Progress

__all__ = ["compute_metrics", "evaluate_model", "make_compute_metrics", "metric_for_task"]


def metric_for_task(name: str | TaskSpec) -> str:
    """Main metric of a task, e.g. for ``TrainingArguments(metric_for_best_model=...)``.

    Follows the BERT paper: F1 for MRPC/QQP, Spearman for STS-B, Matthews for CoLA, accuracy otherwise.
    """
    return get_task(name).main_metric


def compute_metrics(task_name: str | TaskSpec, predictions: Any, labels: Any) -> dict[str, float]:
    """GLUE metrics for a task; ``predictions`` may be class ids, logits, or (for STS-B) scores."""
    spec = get_task(task_name)
    preds = np.asarray(predictions)
    refs = np.asarray(labels)
    if spec.is_regression:
        preds = preds.reshape(-1).astype(np.float64)
        refs = refs.reshape(-1).astype(np.float64)
    elif preds.ndim > 1:
        preds = preds.argmax(axis=-1)

    scorers: dict[str, Callable[[], float]] = {
        "accuracy": lambda: metrics.accuracy(refs, preds),
        "f1": lambda: metrics.binary_f1(refs, preds),
        "matthews_correlation": lambda: metrics.matthews_correlation(refs, preds),
        "pearson": lambda: metrics.pearson(preds, refs),
        "spearmanr": lambda: metrics.spearman(preds, refs),
    }
    results = {name: float(scorers[name]()) for name in spec.metrics if name != "combined_score"}
    if "combined_score" in spec.metrics:
        results["combined_score"] = float(np.mean(list(results.values())))
    return results


def make_compute_metrics(task_name: str | TaskSpec) -> Callable[[Any], dict[str, float]]:
    """A ``compute_metrics`` callable for ``transformers.Trainer`` (takes an ``EvalPrediction``)."""
    spec = get_task(task_name)

    def _compute(eval_pred: Any) -> dict[str, float]:
        preds = eval_pred.predictions
        if isinstance(preds, tuple):  # models that also return hidden states etc.
            preds = preds[0]
        return compute_metrics(spec, preds, eval_pred.label_ids)

    return _compute


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def evaluate_model(
    model: torch.nn.Module,
    tokenizer: Any,
    data: TaskData,
    *,
    batch_size: int = 64,
    max_length: int = 128,
    progress: Progress | None = None,
    stage: str = "evaluate",
) -> dict[str, dict[str, float]]:
    """`{split: {metric: value}}` on every eval split of the task (GLUE's metrics, or perplexity);
    `progress(f"{stage} {split}", batches done, batches)` follows it."""
    from torch.utils.data import DataLoader

    results: dict[str, dict[str, float]] = {}
    training = model.training
    model.eval()
    try:
        for split, raw in data.eval.items():
            dataset = tokenize_split(data, raw, tokenizer, max_length)
            if data.is_lm:
                results[split] = {"perplexity": perplexity(model, DataLoader(dataset, batch_size=max(1, batch_size // 8)))}
                continue
            loader = DataLoader(dataset, batch_size=batch_size, collate_fn=padding_collator(tokenizer))
            predictions, labels = [], []
            label = f"{stage} {split}"
            with torch.no_grad():
                for step, batch in enumerate(loader, start=1):
                    labels.append(batch.pop("labels"))
                    batch = {key: value.to(_device(model)) for key, value in batch.items()}
                    predictions.append(model(**batch).logits.float().cpu())
                    if progress is not None:
                        progress(label, step, len(loader))
            results[split] = compute_metrics(data.spec, torch.cat(predictions).numpy(), torch.cat(labels).numpy())
    finally:
        model.train(training)
    return results
