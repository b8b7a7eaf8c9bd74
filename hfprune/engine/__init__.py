"""The engine: where heads, FFN neurons and layers live in each family (`arch`), masks as hooks, the record
of what was pruned, and all-or-nothing weight surgery. It imports nothing above `errors`, `constants` and
`_validation`.
"""

from .._lazy import attach

# module -> the public names it provides
_EXPORTS: dict[str, tuple[str, ...]] = {  # fmt: skip
    "apply_plan": ("PLAN_KEYS", "PLAN_NOTES", "apply_plan",),
    "arch": ("ArchAdapter", "get_adapter", "register_adapter", "supported_model_types",),
    "checks": ("check_indices", "check_mapping", "model_for_config", "model_for_masks", "model_for_surgery",),
    "hidden": ("channel_sites", "prune_hidden",),
    "layer_inputs": ("LayerInput", "StopForward", "first_layer_inputs", "layer_output", "next_input",),
    "masks": ("MaskHandle", "apply_masks", "make_ffn_mask", "make_head_mask", "make_layer_mask", "skip_layers",),
    "per_layer": ("PRE_NORM_MODEL_TYPES", "is_supported", "layer_overrides", "write_per_layer_config",),
    "record": (
        "RECORD_KEYS", "RECORD_VERSION", "check_record", "check_record_format", "check_record_structure", "get_record",
        "gqa_group_size", "kept_ffn", "kept_hidden", "kv_groups", "original_config", "original_hidden_size",
        "original_sizes", "save_record", "unpruned_twin", "validate_record",
    ),
    "restore": ("restore_structure",),
    "structure": ("EmptyAttention", "EmptyMLP", "PATCH_KEY", "PatchError", "stock_class", "structure_patch",),
    "surgery": ("drop_layers", "finish_surgery", "prune_ffn", "prune_heads", "start_surgery",),
    "transaction": ("SliceTrace", "Trace", "all_or_nothing", "copied_parameter", "is_tracing", "replace_parameter", "slice_parameter", "tracing_slices",),
}
__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)
