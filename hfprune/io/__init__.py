"""Reading and writing checkpoints: `from_pretrained` for pruned models, transformers-4 and `per_layer_config`
configs, where a job's model comes from, atomic output folders, a run's resume state and a checkpoint's model
skeleton on the meta device.
"""

from .._lazy import attach

# module -> the public names it provides
_EXPORTS: dict[str, tuple[str, ...]] = {  # fmt: skip
    "checkpoint": ("ModelSource", "load_model_for_task", "load_tokenizer", "resolve_model",),
    "loading": ("check_tied_weights", "check_weight_files", "from_pretrained", "load_config", "save_for_remote_code",),
    "output": (
        "check_not_an_input", "check_output_dir", "check_output_file", "is_disk_full", "job_inputs",
        "repair_output_dir", "write_atomically",
    ),
    "per_layer_load": ("check_per_layer_config", "prepare_per_layer_config", "saved_overrides",),
    "rundir": ("FINETUNED_DIR", "IMPORTANCE_FILE", "RUN_STATE", "load_or_compute", "release_work_dir", "work_dir_for",),
    "renames": ("loaded_names",),
    "skeleton": ("checkpoint_skeleton", "saved_weight_shapes",),
    "v4": ("V4_FIELD", "V4_MODEL_TYPES", "convert_v4_config", "v4_pruned_heads",),
}
__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)
