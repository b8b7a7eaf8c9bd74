"""Reading and writing checkpoints: `from_pretrained` for pruned models, transformers-4 and `per_layer_config`
configs, where a job's model comes from, atomic output folders and a run's resume state.
"""

from typing import TYPE_CHECKING

from .._lazy import attach

_EXPORTS = {
    "checkpoint": (
        "ModelSource",
        "load_model_for_task",
        "load_tokenizer",
        "resolve_model",
    ),
    "loading": (
        "check_weight_files",
        "from_pretrained",
        "save_for_remote_code",
    ),
    "output": (
        "check_output_dir",
        "is_disk_full",
        "repair_output_dir",
        "write_atomically",
    ),
    "per_layer_load": (
        "check_per_layer_config",
        "prepare_per_layer_config",
        "saved_overrides",
    ),
    "rundir": (
        "FINETUNED_DIR",
        "IMPORTANCE_FILE",
        "RUN_STATE",
        "load_or_compute",
        "work_dir_for",
    ),
    "v4": (
        "V4_FIELD",
        "V4_MODEL_TYPES",
        "convert_v4_config",
        "v4_pruned_heads",
    ),
}
__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)

if TYPE_CHECKING:
    from .checkpoint import ModelSource, load_model_for_task, load_tokenizer, resolve_model
    from .loading import check_weight_files, from_pretrained, save_for_remote_code
    from .output import check_output_dir, is_disk_full, repair_output_dir, write_atomically
    from .per_layer_load import check_per_layer_config, prepare_per_layer_config, saved_overrides
    from .rundir import FINETUNED_DIR, IMPORTANCE_FILE, RUN_STATE, load_or_compute, work_dir_for
    from .v4 import V4_FIELD, V4_MODEL_TYPES, convert_v4_config, v4_pruned_heads
