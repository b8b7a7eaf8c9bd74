"""Training with pruning: `PruningTrainer`, its callbacks (head masks, LayerDrop, progress), L0 gates,
distillation losses, and FSDP between its phases.
"""

from .._lazy import attach

# module -> the public names it provides
_EXPORTS: dict[str, tuple[str, ...]] = {  # fmt: skip
    "callbacks": ("HeadMaskCallback", "LayerDropCallback", "StageProgressCallback", "progress_callbacks",),
    "distill": (
        "layer_distillation_loss", "layer_outputs", "layer_pairs", "logit_distillation_loss", "teacher_inputs",
    ),
    "fsdp": ("FSDP_CONFIG",),
    "gates": ("GateCosts", "HeadGates",),
    "resume": ("PruningCheckpoints", "RESUME_KEYS",),
    "steps": ("PruningSteps",),
    "trainer": ("PruningTrainer",),
}
__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)
