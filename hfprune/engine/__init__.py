"""The engine: where heads, FFN neurons and layers live in each family (`arch`), masks as hooks, the record
of what was pruned, and all-or-nothing weight surgery. It imports nothing above `errors`, `constants` and
`_validation`.
"""

from typing import TYPE_CHECKING

from .._lazy import attach

_EXPORTS = {
    "arch": (
        "ArchAdapter",
        "get_adapter",
        "register_adapter",
        "supported_model_types",
    ),
    "checks": (
        "check_indices",
        "check_mapping",
        "model_for_config",
        "model_for_masks",
        "model_for_surgery",
    ),
    "hidden": (
        "channel_sites",
        "prune_hidden",
    ),
    "masks": (
        "MaskHandle",
        "apply_masks",
        "make_ffn_mask",
        "make_head_mask",
        "make_layer_mask",
        "skip_layers",
    ),
    "per_layer": (
        "PRE_NORM_MODEL_TYPES",
        "is_supported",
        "layer_overrides",
        "write_per_layer_config",
    ),
    "record": (
        "check_record",
        "get_record",
        "gqa_group_size",
        "kept_ffn",
        "kept_hidden",
        "kv_groups",
        "original_config",
        "original_hidden_size",
        "original_sizes",
        "save_record",
        "unpruned_twin",
        "validate_record",
    ),
    "restore": ("restore_structure",),
    "structure": (
        "EmptyAttention",
        "EmptyMLP",
        "PATCH_KEY",
        "PatchError",
        "apply_structure_patch",
        "restructured_class",
        "stock_class",
        "structure_patch",
    ),
    "surgery": (
        "drop_layers",
        "finish_surgery",
        "prune_ffn",
        "prune_heads",
        "start_surgery",
    ),
    "transaction": (
        "all_or_nothing",
        "replace_parameter",
        "slice_parameter",
    ),
}
__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)

if TYPE_CHECKING:
    from .arch import ArchAdapter, get_adapter, register_adapter, supported_model_types
    from .checks import check_indices, check_mapping, model_for_config, model_for_masks, model_for_surgery
    from .hidden import channel_sites, prune_hidden
    from .masks import MaskHandle, apply_masks, make_ffn_mask, make_head_mask, make_layer_mask, skip_layers
    from .per_layer import PRE_NORM_MODEL_TYPES, is_supported, layer_overrides, write_per_layer_config
    from .record import (
        check_record,
        get_record,
        gqa_group_size,
        kept_ffn,
        kept_hidden,
        kv_groups,
        original_config,
        original_hidden_size,
        original_sizes,
        save_record,
        unpruned_twin,
        validate_record,
    )
    from .restore import restore_structure
    from .structure import (
        PATCH_KEY,
        EmptyAttention,
        EmptyMLP,
        PatchError,
        apply_structure_patch,
        restructured_class,
        stock_class,
        structure_patch,
    )
    from .surgery import drop_layers, finish_surgery, prune_ffn, prune_heads, start_surgery
    from .transaction import all_or_nothing, replace_parameter, slice_parameter
