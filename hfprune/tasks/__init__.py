"""Task data and metrics: the GLUE table and its original file layouts, custom CSV/TSV/JSON tasks, language
modelling text, metrics in numpy, evaluation, and majority-class baselines.

`hfprune.tasks` was one module before the package had subpackages; every public name it had is still read here.
"""

from .._lazy import attach

# module -> the public names it provides
_EXPORTS: dict[str, tuple[str, ...]] = {  # fmt: skip
    "baselines": ("Z_ONE_SIDED_95", "check_dense_model", "split_baselines", "task_baselines", "weak_baseline_reason",),
    "evaluate": ("compute_metrics", "evaluate_model", "make_compute_metrics", "metric_for_task",),
    "lm": ("lm_blocks", "load_lm_texts", "perplexity",),
    "metrics": ("accuracy", "binary_f1", "matthews_correlation", "pearson", "spearman",),
    "readers": ("load_files", "load_task",),
    "specs": (
        "CUSTOM_TASK", "GLUE_HUB_ID", "GLUE_TASKS", "LM_TASK", "TaskDataError", "TaskSpec", "TsvLayout", "get_task",
    ),
    "task_data": ("TaskData", "load_task_data", "tokenize_task",),
}
__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)
