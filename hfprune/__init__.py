"""hfprune: structured pruning of attention heads, FFN neurons and layers for Hugging Face transformers 5."""

from .arch import ArchAdapter, get_adapter, register_adapter, supported_model_types
from .callbacks import HeadMaskCallback, LayerDropCallback
from .card import write_model_card
from .errors import PruningError
from .gates import HeadGates
from .hub import HubPushError, push_to_hub
from .loading import from_pretrained, save_for_remote_code
from .masks import MaskHandle, apply_masks, make_ffn_mask, make_head_mask, make_layer_mask, skip_layers
from .pipeline import PruneResult, prune_for_task
from .plan import (
    best_head_per_layer,
    ffn_to_prune,
    head_sparsity,
    heads_to_prune,
    iterative_head_pruning,
    layers_to_drop,
)
from .record import get_record
from .scores import (
    angular_distance,
    block_influence,
    ffn_importance,
    head_ablation_scores,
    head_importance,
    importance_scores,
    layer_cosine_scores,
    magnitude_ffn_scores,
    magnitude_head_scores,
    mlp_importance,
    random_head_scores,
    taylor_head_scores,
)
from .speed import SpeedReport, count_flops, measure_speed
from .structure import EmptyAttention
from .surgery import drop_layers, prune_ffn, prune_heads
from .trainer import PruningArguments, PruningTrainer

__version__ = "0.1.0"

__all__ = [
    # engine
    "ArchAdapter",
    "EmptyAttention",
    "MaskHandle",
    "PruningError",
    "apply_masks",
    "drop_layers",
    "get_adapter",
    "get_record",
    "make_ffn_mask",
    "make_head_mask",
    "make_layer_mask",
    "prune_ffn",
    "prune_heads",
    "register_adapter",
    "skip_layers",
    "supported_model_types",
    # save / load / share
    "HubPushError",
    "from_pretrained",
    "push_to_hub",
    "save_for_remote_code",
    # scores
    "angular_distance",
    "block_influence",
    "ffn_importance",
    "head_ablation_scores",
    "head_importance",
    "importance_scores",
    "layer_cosine_scores",
    "magnitude_ffn_scores",
    "magnitude_head_scores",
    "mlp_importance",
    "random_head_scores",
    "taylor_head_scores",
    # strategies
    "best_head_per_layer",
    "ffn_to_prune",
    "head_sparsity",
    "heads_to_prune",
    "iterative_head_pruning",
    "layers_to_drop",
    # Trainer integration
    "HeadGates",
    "HeadMaskCallback",
    "LayerDropCallback",
    "PruningArguments",
    "PruningTrainer",
    # the main job, model cards and speed
    "PruneResult",
    "SpeedReport",
    "count_flops",
    "measure_speed",
    "prune_for_task",
    "write_model_card",
]
