"""Which units go: strategies and target arithmetic (`plan`), spending a time budget (`allocation`,
`speed_target`) or a parameter budget (`param_target`) by importance, and stock shapes for all of them (`uniform`).
"""

from .._lazy import attach

# module -> the public names it provides
_EXPORTS: dict[str, tuple[str, ...]] = {  # fmt: skip
    "allocation": (
        "CALIBRATION_ROUNDS", "MAX_FACTOR", "OVERSHOOT", "allocate_for_time", "calibrated_allocation",
        "calibration_factors",
    ),
    "param_target": ("ParamTarget", "WIDTH_FRACTIONS", "parameter_cost_model",),
    "plan": (
        "best_head_per_layer", "check_head_target", "check_unpruned", "ffn_to_prune", "final_targets", "head_sparsity",
        "heads_left", "heads_to_prune", "iterative_head_pruning", "layers_to_drop", "plan_to_goal",
        "resolve_layers_to_drop", "step_targets",
    ),
    "speed_target": ("SpeedTarget", "TOLERANCE",),
    "uniform": (
        "allowed_counts", "lowest_units", "nearest_count", "uniform_closed", "uniform_counts", "uniform_keep", "uniform_plan",
    ),
}
__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)
