"""`score_task`, the job behind `hfprune score`: head scores of a model on a task, written with their heatmap.

`score_heads` is its in-memory half (a loaded model and tokenizer in, the scores out), shared with the card's
heatmap of `prune_for_task`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._validation import check_setting
from ..constants import (
    DATA_FREE_METHODS,
    IMPORTANCE_IMAGE,
    SCORES_FILE,
    SCORING_METHODS,
    choices,
)
from ..engine.record import get_record
from ..errors import PipelineInputError
from ..export.plots import plot_head_importance
from ..io.checkpoint import load_model_for_task, resolve_model
from ..io.output import check_output_dir, job_inputs, write_atomically
from ..planning.plan import heads_left
from ..scoring.methods import score_units
from ..tasks.task_data import TaskData, load_task_data, scoring_batches

logger = logging.getLogger(__name__)


def score_heads(
    model: nn.Module,
    tokenizer: Any,
    data: TaskData,
    *,
    method: str = "importance",
    num_examples: int = 512,
    batch_size: int = 32,
    max_length: int = 128,
    seed: int = 42,
) -> torch.Tensor:
    """`[num_layers, num_heads]` head scores on the first `num_examples` train examples (never the eval
    split), by one of `SCORING_METHODS`: "importance" (Michel et al. gradient), "taylor", "fisher", "ablation",
    "magnitude" or "random" (see `hfprune.scoring.methods.score_units`)."""
    if method not in SCORING_METHODS:
        raise PipelineInputError(f"unknown scoring method {method!r}; choose {choices(SCORING_METHODS)}")
    if method in DATA_FREE_METHODS:
        return score_units(model, method, ("heads",), seed=seed)["heads"]
    loader = scoring_batches(data, tokenizer, num_examples=num_examples, batch_size=batch_size, max_length=max_length)
    return score_units(model, method, ("heads",), loader, seed=seed)["heads"]


def score_task(
    model_name_or_path: str,
    task: str,
    *,
    output_dir: str | os.PathLike,
    method: str = "importance",
    num_examples: int = 512,
    batch_size: int = 32,
    max_length: int = 128,
    seed: int = 42,
    gguf_file: str | None = None,
    data_kwargs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Score every head of a model on a task (`score_heads`) and write `head_scores.json` and a heatmap to
    `output_dir`, atomically. The model is not changed. Returns what the JSON holds (the scores included)."""
    say = log or (lambda message: logger.warning(message))
    if method not in SCORING_METHODS:
        raise PipelineInputError(f"unknown scoring method {method!r}; choose {choices(SCORING_METHODS)}")
    check_setting("seed", seed, error=PipelineInputError)
    inputs = job_inputs(model_name_or_path, data_kwargs=data_kwargs)  # --overwrite must never delete them
    output_dir = check_output_dir(output_dir, overwrite, inputs)
    data = load_task_data(task, max_train_samples=num_examples, seed=seed, **(data_kwargs or {}))
    source = resolve_model(model_name_or_path, gguf_file=gguf_file, causal_lm=data.is_lm)
    if not heads_left(source.config):  # checked on the config, before any weights load
        raise PipelineInputError(f"{model_name_or_path} has no attention heads left (every head was removed): there are no heads to score")
    model, tokenizer, has_head = load_model_for_task(source, data)
    if not has_head and method not in DATA_FREE_METHODS:
        say(f"{model_name_or_path} has no trained {data.name} head: gradient scores reflect a random classifier (fine-tune first, or use `hfprune prune`)")
    scores = score_heads(model, tokenizer, data, method=method, num_examples=num_examples, batch_size=batch_size, max_length=max_length, seed=seed)
    payload = {
        "model": model_name_or_path, "task": data.name, "method": method, "num_examples": min(num_examples, len(data.train)),
        "shape": list(scores.shape), "scores": [[None if torch.isnan(v) else float(v) for v in row] for row in scores],
    }  # fmt: skip
    record = get_record(model)

    def write(folder: Path) -> None:
        (folder / SCORES_FILE).write_text(json.dumps(payload, indent=2) + "\n")
        plot_head_importance(scores.float(), record, folder / IMPORTANCE_IMAGE, title=f"head scores ({method}), {data.name}")

    write_atomically(output_dir, write, overwrite=overwrite, inputs=inputs)
    return payload


__all__ = ["score_heads", "score_task"]
