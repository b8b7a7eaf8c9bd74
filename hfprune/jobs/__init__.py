"""The jobs behind the CLI, each one call: `prune_for_task`, `drop_layers_for_task`, `benchmark_checkpoint`,
`benchmark_llama_cpp`, `score_task`, `evaluate_checkpoint`, the dry run, the streamed job, the demo, and the files
every job writes.
"""

from .._lazy import attach

# module -> the public names it provides
_EXPORTS: dict[str, tuple[str, ...]] = {  # fmt: skip
    "bench": ("check_dense_base", "check_sequence_lengths", "load_dense_base", "max_sequence_length",),
    "demo": ("DemoReport", "SENTENCES", "default_model_path", "run_demo",),
    "dry_run": ("plan_pruning",),
    "evaluate": ("evaluate_checkpoint",),
    "finetune": (
        "FINETUNE_PATIENCE", "MAX_EVAL_INTERVAL", "MAX_MICRO_BATCH", "default_finetune_epochs", "micro_batches",
        "per_process_batch", "precision_of", "prepare_dense_model", "release_memory", "resolve_precision",
        "train_dense_control", "training_device", "validation_slice",
    ),
    "llama_cpp_bench": (
        "benchmark_llama_cpp", "check_gguf_job", "gguf_file_name", "prefill_flops", "time_in_llama_cpp",
    ),
    "max_drop": ("KeepFastestWithinDrop", "ceiling_out_of_reach", "selection_split",),
    "prune": ("benchmark_checkpoint", "check_sparsity", "drop_layers_for_task", "prune_for_task",),
    "prune_arguments": (
        "ARGUMENT_GROUPS", "ModelDataArguments", "OutputArguments", "RecoveryArguments", "TargetArguments",
        "check_targets", "check_training", "fit_head_target", "job_settings", "parse_prune_arguments",
        "recovery_recipe", "resolve_defaults",
    ),
    "prune_job": ("PruneJob",),
    "report_files": ("write_file_atomically", "write_json_atomically",),
    "results": ("PruneResult", "Stopwatch", "write_output_folder",),
    "score": ("score_heads", "score_task",),
    "stream": (
        "PROTOCOL", "SNAPSHOT_FILES", "STREAM_BATCH_SIZE", "STREAM_SHARD_SIZE", "check_fits_in_memory", "check_stream_job",
        "local_snapshot", "stream_prune_job", "weight_bytes",
    ),
}
__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)
