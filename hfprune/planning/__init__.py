"""Which units go: strategies and target arithmetic (`plan`), spending a time budget (`allocation`,
`speed_target`) or a parameter budget (`param_target`) by importance.
"""

from typing import TYPE_CHECKING

from .._lazy import attach

_EXPORTS = {
    "allocation": (
        "CALIBRATION_ROUNDS",
        "MAX_FACTOR",
        "OVERSHOOT",
        "allocate_for_time",
        "calibrated_allocation",
        "calibration_factors",
    ),
    "param_target": (
        "ParamTarget",
        "WIDTH_FRACTIONS",
        "parameter_cost_model",
    ),
    "plan": (
        "best_head_per_layer",
        "check_unpruned",
        "ffn_to_prune",
        "final_targets",
        "head_sparsity",
        "heads_to_prune",
        "iterative_head_pruning",
        "layers_to_drop",
        "plan_to_goal",
        "resolve_layers_to_drop",
        "step_targets",
    ),
    "speed_target": (
        "SpeedTarget",
        "TOLERANCE",
    ),
}
__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)

if TYPE_CHECKING:
    from .allocation import (
        CALIBRATION_ROUNDS,
        MAX_FACTOR,
        OVERSHOOT,
        allocate_for_time,
        calibrated_allocation,
        calibration_factors,
    )
    from .param_target import WIDTH_FRACTIONS, ParamTarget, parameter_cost_model
    from .plan import (
        best_head_per_layer,
        check_unpruned,
        ffn_to_prune,
        final_targets,
        head_sparsity,
        heads_to_prune,
        iterative_head_pruning,
        layers_to_drop,
        plan_to_goal,
        resolve_layers_to_drop,
        step_targets,
    )
    from .speed_target import TOLERANCE, SpeedTarget
