"""Training with pruning: `PruningTrainer`, its callbacks (head masks, LayerDrop, progress), L0 gates and
distillation losses.
"""

from typing import TYPE_CHECKING

from .._lazy import attach

_EXPORTS = {
    "callbacks": (
        "HeadMaskCallback",
        "LayerDropCallback",
        "StageProgressCallback",
        "progress_callbacks",
    ),
    "distill": (
        "layer_distillation_loss",
        "layer_outputs",
        "layer_pairs",
        "logit_distillation_loss",
        "teacher_inputs",
    ),
    "gates": (
        "GateCosts",
        "HeadGates",
    ),
    "trainer": ("PruningTrainer",),
}
__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)

if TYPE_CHECKING:
    from .callbacks import HeadMaskCallback, LayerDropCallback, StageProgressCallback, progress_callbacks
    from .distill import layer_distillation_loss, layer_outputs, layer_pairs, logit_distillation_loss, teacher_inputs
    from .gates import GateCosts, HeadGates
    from .trainer import PruningTrainer
