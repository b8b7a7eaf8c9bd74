"""The names hfprune shares between modules: scoring and pruning methods, schedules, and the files it writes.

One definition each; every module (the CLI included) imports them from here. Imports nothing, so the CLI can
build its help text and check an option without importing torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

# ---- methods -----------------------------------------------------------------------------------------
SCORING_METHODS: tuple[str, ...] = ("importance", "taylor", "ablation", "activation", "magnitude", "random")
"""Head scores of `hfprune.scoring.methods.score_units`, `pipeline.score_heads` and `hfprune score --method`."""

DATA_FREE_METHODS: tuple[str, ...] = ("magnitude", "random")
"""The scoring methods that read only the weights (or a seed): no dataloader, no trained task head."""

PER_LAYER_NORMALIZED_METHODS: tuple[str, ...] = ("importance", "activation")
"""Scores whose scale differs from layer to layer: each layer is normalised before they are ranked globally."""

PRUNING_METHODS: tuple[str, ...] = tuple(method for method in SCORING_METHODS if method != "ablation") + ("l0",)
"""`PruningArguments.pruning_method` and `hfprune prune --method`: every scoring method but ablation (one
evaluation pass per head, heads only), plus "l0" (trained hard-concrete gates instead of scores)."""

# ---- schedules and strategies ------------------------------------------------------------------------
PRUNING_SCHEDULES: tuple[str, ...] = ("one_shot", "iterative")

PRUNING_PHASES: tuple[str, ...] = ("l0", "recovery")
"""The training phases of one `PruningTrainer` step, in order (checkpoints record which one they are in)."""

LAYER_STRATEGIES: tuple[str, ...] = ("top", "bottom", "even", "odd", "symmetric", "contribution")
"""Which layers `hfprune.planning.plan.layers_to_drop` drops (Sajjad et al. 2020, plus "contribution": by layer scores)."""

# ---- files -------------------------------------------------------------------------------------------
README_FILE = "README.md"  # the model card
RESULTS_FILE = "hfprune_results.json"  # what a job measured, plus the card's inputs
REMOTE_CODE_FILE = "modeling_hfprune.py"  # `save_for_remote_code`'s self-contained loader
SCORES_FILE = "head_scores.json"  # `score_task`'s head scores
SPEED_FILE = "speed.json"  # `SpeedReport.save_json` next to a checkpoint
HEADS_IMAGE = "heads.png"
IMPORTANCE_IMAGE = "importance.png"
SPEED_IMAGE = "speed.png"  # written by `SpeedReport.plot` when a speed report is saved with the checkpoint
PRUNING_STATE_FILE = "pruning_state.json"  # `PruningTrainer`'s resume state, inside each of its checkpoints
L0_GATES_FILE = "l0_gates.pt"  # the L0 gates of a checkpoint taken while they train


def choices(names: tuple[str, ...]) -> str:
    """`("a", "b", "c")` -> "a, b or c", for messages and help text."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


__all__ = [
    "DATA_FREE_METHODS",
    "HEADS_IMAGE",
    "IMPORTANCE_IMAGE",
    "L0_GATES_FILE",
    "LAYER_STRATEGIES",
    "PER_LAYER_NORMALIZED_METHODS",
    "PRUNING_METHODS",
    "PRUNING_PHASES",
    "PRUNING_SCHEDULES",
    "PRUNING_STATE_FILE",
    "README_FILE",
    "REMOTE_CODE_FILE",
    "RESULTS_FILE",
    "SCORES_FILE",
    "SCORING_METHODS",
    "SPEED_FILE",
    "SPEED_IMAGE",
    "__version__",
    "choices",
]
