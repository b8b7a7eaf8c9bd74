"""Task data and metrics: the GLUE table and its original file layouts, custom CSV/TSV/JSON tasks, language
modelling text, metrics in numpy, evaluation, and majority-class baselines.
"""

from typing import TYPE_CHECKING

from .._lazy import attach

_EXPORTS = {
    "baselines": (
        "Z_ONE_SIDED_95",
        "check_dense_model",
        "split_baselines",
        "task_baselines",
        "weak_baseline_reason",
    ),
    "metrics": (
        "accuracy",
        "binary_f1",
        "matthews_correlation",
        "pearson",
        "spearman",
    ),
    "task_data": (
        "CUSTOM_TASK",
        "GLUE_HUB_ID",
        "GLUE_TASKS",
        "LM_TASK",
        "TaskData",
        "TaskDataError",
        "TaskSpec",
        "TsvLayout",
        "compute_metrics",
        "evaluate_model",
        "get_task",
        "lm_blocks",
        "load_files",
        "load_lm_texts",
        "load_task",
        "load_task_data",
        "make_compute_metrics",
        "metric_for_task",
        "perplexity",
        "tokenize_task",
    ),
}
__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)

if TYPE_CHECKING:
    from .baselines import Z_ONE_SIDED_95, check_dense_model, split_baselines, task_baselines, weak_baseline_reason
    from .metrics import accuracy, binary_f1, matthews_correlation, pearson, spearman
    from .task_data import (
        CUSTOM_TASK,
        GLUE_HUB_ID,
        GLUE_TASKS,
        LM_TASK,
        TaskData,
        TaskDataError,
        TaskSpec,
        TsvLayout,
        compute_metrics,
        evaluate_model,
        get_task,
        lm_blocks,
        load_files,
        load_lm_texts,
        load_task,
        load_task_data,
        make_compute_metrics,
        metric_for_task,
        perplexity,
        tokenize_task,
    )
