"""The jobs behind the CLI, each one call: `prune_for_task`, `drop_layers_for_task`, `benchmark_checkpoint`,
`score_task`, the dry run, the demo, and the files every job writes.
"""

from typing import TYPE_CHECKING

from .._lazy import attach

_EXPORTS = {
    "demo": (
        "DemoReport",
        "SENTENCES",
        "default_model_path",
        "run_demo",
    ),
    "dry_run": ("plan_pruning",),
    "finetune": (
        "FINETUNE_PATIENCE",
        "MAX_EVAL_INTERVAL",
        "MAX_MICRO_BATCH",
        "default_finetune_epochs",
        "micro_batches",
        "prepare_dense_model",
        "release_memory",
        "train_dense_control",
        "validation_slice",
    ),
    "max_drop": (
        "DEFAULT_CEILING",
        "DEFAULT_STEPS",
        "KeepFastestWithinDrop",
        "selection_split",
    ),
    "prune": (
        "SPEED_TARGET_RECIPE",
        "benchmark_checkpoint",
        "check_sparsity",
        "drop_layers_for_task",
        "prune_for_task",
    ),
    "results": (
        "PruneResult",
        "Stopwatch",
        "write_output_folder",
    ),
    "score": (
        "score_heads",
        "score_task",
    ),
}
__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)

if TYPE_CHECKING:
    from .demo import SENTENCES, DemoReport, default_model_path, run_demo
    from .dry_run import plan_pruning
    from .finetune import (
        FINETUNE_PATIENCE,
        MAX_EVAL_INTERVAL,
        MAX_MICRO_BATCH,
        default_finetune_epochs,
        micro_batches,
        prepare_dense_model,
        release_memory,
        train_dense_control,
        validation_slice,
    )
    from .max_drop import DEFAULT_CEILING, DEFAULT_STEPS, KeepFastestWithinDrop, selection_split
    from .prune import SPEED_TARGET_RECIPE, benchmark_checkpoint, check_sparsity, drop_layers_for_task, prune_for_task
    from .results import PruneResult, Stopwatch, write_output_folder
    from .score import score_heads, score_task
