"""Layer-wise reconstruction of what a pruned model kept (`reconstruct`): per block, the kept units' output
projection is refitted so that the block's output matches the dense model's on calibration data (`fits`; output
biases where bias compensation needs them: `biases`), from
float64 moments accumulated over the calibration tokens (`statistics`), layer after layer on the inputs the
already-reconstructed layers produce (`sequential`).
"""

from .._lazy import attach

# module -> the public names it provides
_EXPORTS: dict[str, tuple[str, ...]] = {  # fmt: skip
    "biases": ("BIAS_FLAGS", "add_output_biases", "check_biases", "lacks_output_biases"),
    "fits": ("bias_fit", "least_squares_fit", "scale_fit"),
    "sequential": (
        "BLOCK_MODULES", "DEFAULT_DAMPING", "MIN_TOKENS_PER_INPUT", "RESIDUAL_MODULES", "TARGETS", "BlockFit",
        "ReconstructionReport", "check_reconstructable", "default_target", "has_block", "reconstruct", "refit_block", "warn_if_few_tokens",
    ),
    "statistics": ("BlockStatistics", "augmented"),
}
__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)
