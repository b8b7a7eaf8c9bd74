"""Importance scores of heads, KV groups, FFN neurons, MLPs, channels and layers, in original indices. Scores
never change the model; `methods.score_units` is the one method table from a name to its scorer.
"""

from typing import TYPE_CHECKING

from .._lazy import attach

_EXPORTS = {
    "activations": (
        "ACTIVATION_KINDS",
        "activation_ffn_scores",
        "activation_head_scores",
        "activation_kv_group_scores",
        "activation_scores",
        "hidden_importance",
    ),
    "common": (
        "Batch",
        "GATE_KINDS",
        "LossFn",
        "normalize_per_layer",
    ),
    "loss": (
        "ffn_importance",
        "head_ablation_scores",
        "head_importance",
        "importance_scores",
        "layer_ablation_scores",
        "mlp_importance",
        "taylor_head_scores",
    ),
    "methods": ("score_units",),
    "similarity": (
        "angular_distance",
        "block_influence",
        "layer_cosine_scores",
    ),
    "weights": (
        "magnitude_ffn_scores",
        "magnitude_head_scores",
        "random_ffn_scores",
        "random_head_scores",
    ),
}
__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)

if TYPE_CHECKING:
    from .activations import (
        ACTIVATION_KINDS,
        activation_ffn_scores,
        activation_head_scores,
        activation_kv_group_scores,
        activation_scores,
        hidden_importance,
    )
    from .common import GATE_KINDS, Batch, LossFn, normalize_per_layer
    from .loss import (
        ffn_importance,
        head_ablation_scores,
        head_importance,
        importance_scores,
        layer_ablation_scores,
        mlp_importance,
        taylor_head_scores,
    )
    from .methods import score_units
    from .similarity import angular_distance, block_influence, layer_cosine_scores
    from .weights import magnitude_ffn_scores, magnitude_head_scores, random_ffn_scores, random_head_scores
