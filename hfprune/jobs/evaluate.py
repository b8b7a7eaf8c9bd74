"""`evaluate_checkpoint`, the job behind `hfprune eval`: a model's metrics on every eval split of a task, and on
request the same as a JSON file.

The JSON path is checked before any data or weights load (`check_output_file`: not a directory, not a place that
cannot be written, not one of the inputs), and the file is written atomically as strict JSON: an undefined metric
(the Pearson correlation of a model that predicts a constant) is null, never the invalid `NaN`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from ..io.checkpoint import load_model_for_task
from ..io.output import check_output_file, job_inputs
from ..progress import Progress
from ..tasks.evaluate import evaluate_model
from ..tasks.task_data import load_task_data
from .report_files import write_json_atomically

logger = logging.getLogger(__name__)

__all__ = ["evaluate_checkpoint"]


def evaluate_checkpoint(
    model_name_or_path: str,
    task: str,
    *,
    json_path: str | os.PathLike | None = None,
    data_kwargs: Mapping[str, Any] | None = None,
    max_eval_samples: int | None = None,
    max_length: int = 128,
    batch_size: int = 64,
    gguf_file: str | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Evaluate a model (pruned or not; a folder, a Hub id, or a GGUF file in a folder) on every eval split of
    `task` with GLUE's metrics (both MNLI dev sets), or perplexity for `lm`.

    `data_kwargs` are `load_task_data`'s data options (`data_dir`, `train_file`, `validation_file`, columns,
    labels). A checkpoint without a trained head for the task is evaluated anyway, and `log` says so. With
    `json_path`, `{"model", "task", "metrics"}` is written there atomically, NaN and infinity as null.

    Returns:
        `{"model": ..., "task": ..., "metrics": {...}, "has_head": bool}`; the metrics as computed (NaN kept).
    Raises:
        PipelineInputError / TaskDataError (both `ValueError`): bad input, before any weights load.
    """
    say = log or (lambda message: logger.warning(message))
    if json_path is not None:
        inputs = job_inputs(model_name_or_path, data_kwargs=data_kwargs)
        json_path = check_output_file(json_path, name="json_path", cli_name="--json", inputs=inputs)
    data = load_task_data(task, need_train=False, max_eval_samples=max_eval_samples, **(data_kwargs or {}))
    model, tokenizer, has_head = load_model_for_task(model_name_or_path, data, gguf_file=gguf_file)
    if not has_head:
        say(f"{model_name_or_path} has no trained {data.name} head: these are the metrics of a random classifier")
    metrics = evaluate_model(model, tokenizer, data, batch_size=batch_size, max_length=max_length, progress=progress)
    payload = {"model": str(model_name_or_path), "task": data.name, "metrics": metrics}
    if json_path is not None:
        write_json_atomically(json_path, payload)
    return {**payload, "has_head": has_head}
