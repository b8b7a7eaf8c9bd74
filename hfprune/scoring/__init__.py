"""Importance scores of heads, KV groups, FFN neurons, MLPs, channels and layers, in original indices. Scores
never change the model; `methods.score_units` is the one method table from a name to its scorer.
"""

from .._lazy import attach

# module -> the public names it provides
_EXPORTS: dict[str, tuple[str, ...]] = {  # fmt: skip
    "activations": (
        "ACTIVATION_KINDS", "ActivationWatch", "activation_ffn_scores", "activation_head_scores", "activation_kv_group_scores",
        "activation_scores", "hidden_importance",
    ),
    "common": (
        "Batch", "GATE_KINDS", "LossFn", "batch_loss", "batch_size_of", "examples_of", "gate_dtype", "is_causal_lm",
        "mean_loss", "missing_as_nan", "model_device", "normalize_per_layer", "present_units", "scoring_mode",
        "to_device", "unit_shape",
    ),
    "loss": (
        "ffn_importance", "head_ablation_scores", "head_importance", "importance_scores", "layer_ablation_scores",
        "mlp_importance", "taylor_head_scores",
    ),
    "methods": ("SCORERS", "ScoreRequest", "Scorer", "register_scorer", "score_units",),
    "similarity": ("BlockSimilarity", "angular_distance", "block_influence", "layer_cosine_scores", "token_mask",),
    "weights": ("magnitude_ffn_scores", "magnitude_head_scores", "random_ffn_scores", "random_head_scores",),
}
__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)
