"""hfprune: structured pruning of attention heads, FFN neurons and layers for Hugging Face transformers 5.

The public API is imported lazily (PEP 562), as transformers does: `import hfprune` costs nothing until a
name is used, so `hfprune --help`, `--version` and bad-input errors answer without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .constants import __version__  # noqa: F401  (imports nothing: `import hfprune` stays cheap)

# module -> the public names it provides
_EXPORTS: dict[str, tuple[str, ...]] = {
    "activations": (
        "activation_ffn_scores",
        "activation_head_scores",
        "activation_kv_group_scores",
        "activation_scores",
        "hidden_importance",
    ),
    "allocation": ("allocate_for_time",),
    "arch": ("ArchAdapter", "get_adapter", "register_adapter", "supported_model_types"),
    "callbacks": ("HeadMaskCallback", "LayerDropCallback"),
    "card": ("write_model_card",),
    "convert": ("convert_checkpoint",),
    "errors": ("PipelineInputError", "PruningError", "TargetOutOfReachError", "WeakBaselineError"),
    "gates": ("HeadGates",),
    "generation_speed": ("measure_generation_speed",),
    "hidden": ("prune_hidden",),
    "hub": ("HubPushError", "push_to_hub"),
    "latency": ("LatencyModel", "measure_latency_model"),
    "loading": ("from_pretrained", "save_for_remote_code"),
    "masks": ("MaskHandle", "apply_masks", "make_ffn_mask", "make_head_mask", "make_layer_mask", "skip_layers"),
    "onnx_export": ("OnnxExport", "export_onnx"),
    "pipeline": ("SPEED_TARGET_RECIPE", "PruneResult", "prune_for_task"),
    "plan": (
        "best_head_per_layer",
        "ffn_to_prune",
        "head_sparsity",
        "heads_to_prune",
        "iterative_head_pruning",
        "layers_to_drop",
    ),
    "pruning_config": ("PruningArguments", "PruningConfig"),
    "record": ("get_record",),
    "scores": (  # fmt: skip
        "angular_distance", "block_influence", "ffn_importance", "head_ablation_scores", "head_importance",
        "importance_scores", "layer_ablation_scores", "layer_cosine_scores", "magnitude_ffn_scores", "magnitude_head_scores", "mlp_importance",
        "random_ffn_scores", "random_head_scores", "score_units", "taylor_head_scores",
    ),
    "speed": ("SpeedReport", "count_flops", "measure_speed"),
    "structure": ("EmptyAttention",),
    "surgery": ("drop_layers", "prune_ffn", "prune_heads"),
    "trainer": ("PruningTrainer",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [name for names in _EXPORTS.values() for name in names]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'hfprune' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # import once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what type checkers and IDEs see
    from .activations import (
        activation_ffn_scores,
        activation_head_scores,
        activation_kv_group_scores,
        activation_scores,
        hidden_importance,
    )
    from .allocation import allocate_for_time
    from .arch import ArchAdapter, get_adapter, register_adapter, supported_model_types
    from .callbacks import HeadMaskCallback, LayerDropCallback
    from .card import write_model_card
    from .convert import convert_checkpoint
    from .errors import PipelineInputError, PruningError, TargetOutOfReachError, WeakBaselineError
    from .gates import HeadGates
    from .generation_speed import measure_generation_speed
    from .hidden import prune_hidden
    from .hub import HubPushError, push_to_hub
    from .latency import LatencyModel, measure_latency_model
    from .loading import from_pretrained, save_for_remote_code
    from .masks import MaskHandle, apply_masks, make_ffn_mask, make_head_mask, make_layer_mask, skip_layers
    from .onnx_export import OnnxExport, export_onnx
    from .pipeline import SPEED_TARGET_RECIPE, PruneResult, prune_for_task
    from .plan import best_head_per_layer, ffn_to_prune, head_sparsity, heads_to_prune, iterative_head_pruning, layers_to_drop
    from .pruning_config import PruningArguments, PruningConfig
    from .record import get_record
    from .scores import (  # fmt: skip
        angular_distance, block_influence, ffn_importance, head_ablation_scores, head_importance, importance_scores,
        layer_ablation_scores, layer_cosine_scores, magnitude_ffn_scores, magnitude_head_scores, mlp_importance, random_ffn_scores,
        random_head_scores, score_units, taylor_head_scores,
    )
    from .speed import SpeedReport, count_flops, measure_speed
    from .structure import EmptyAttention
    from .surgery import drop_layers, prune_ffn, prune_heads
    from .trainer import PruningTrainer
