"""The names hfprune shares between modules: scoring and pruning methods, schedules, the defaults of the prune
job's parameters, and the files it writes.

One definition each; every module (the CLI included) imports them from here. Imports only the standard library,
so the CLI can build its help text and check an option without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

__version__ = "0.1.0"

# ---- methods -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScoringMethod:
    """What a scoring method is, known before torch is imported (the CLI's help and checks read it).

    `hfprune.scoring.methods` registers the function that computes each one (`register_scorer`).
    """

    kinds: tuple[str, ...]
    """The unit kinds it can score ("heads", "ffn", "mlp")."""
    needs_data: bool
    """False: it reads only the weights (or a seed), so it needs no dataloader and no trained task head."""
    per_layer_normalized: bool
    """Its scale differs from layer to layer, so each layer is normalised before a global ranking (by default)."""
    prunes: bool = True
    """Usable as `PruningConfig.pruning_method` (ablation is not: one evaluation pass per head, heads only)."""
    allocates: bool = False
    """Its scores are loss sensitivities of gates, comparable across heads, neurons and layers, so a speed target or a
    parameter budget can be spent on them (the gradient methods)."""


METHODS: dict[str, ScoringMethod] = {
    "importance": ScoringMethod(("heads", "ffn", "mlp"), needs_data=True, per_layer_normalized=True, allocates=True),
    "taylor": ScoringMethod(("heads", "ffn", "mlp"), needs_data=True, per_layer_normalized=False, allocates=True),
    "fisher": ScoringMethod(("heads", "ffn", "mlp"), needs_data=True, per_layer_normalized=False, allocates=True),
    "ablation": ScoringMethod(("heads",), needs_data=True, per_layer_normalized=False, prunes=False),
    "activation": ScoringMethod(("heads", "ffn"), needs_data=True, per_layer_normalized=True),
    "magnitude": ScoringMethod(("heads", "ffn"), needs_data=False, per_layer_normalized=False),
    "random": ScoringMethod(("heads", "ffn"), needs_data=False, per_layer_normalized=False),
}
"""The one method table: every scoring method, what it scores, whether it needs data and how it is normalised."""

SCORING_METHODS: tuple[str, ...] = tuple(METHODS)
"""Head scores of `hfprune.scoring.methods.score_units`, `jobs.score.score_heads` and `hfprune score --method`."""

DATA_FREE_METHODS: tuple[str, ...] = tuple(name for name, method in METHODS.items() if not method.needs_data)

PER_LAYER_NORMALIZED_METHODS: tuple[str, ...] = tuple(name for name, info in METHODS.items() if info.per_layer_normalized)

ALLOCATING_METHODS: tuple[str, ...] = tuple(name for name, info in METHODS.items() if info.allocates)
"""The methods a speed target, an allocated parameter budget and `prune_width` rank by."""

PRUNING_METHODS: tuple[str, ...] = tuple(name for name, method in METHODS.items() if method.prunes) + ("l0",)
"""`PruningConfig.pruning_method` and `hfprune prune --method`: every scoring method that prunes, plus "l0"
(trained hard-concrete gates instead of scores)."""

# ---- schedules and strategies ------------------------------------------------------------------------
PRUNING_SCHEDULES: tuple[str, ...] = ("one_shot", "iterative")

PRUNING_PHASES: tuple[str, ...] = ("l0", "recovery")
"""The training phases of one `PruningTrainer` step, in order (checkpoints record which one they are in)."""

LAYER_STRATEGIES: tuple[str, ...] = ("top", "bottom", "even", "odd", "symmetric", "contribution")
"""Which layers `hfprune.planning.plan.layers_to_drop` drops (Sajjad et al. 2020, plus "contribution": by layer scores)."""

RECONSTRUCTION_METHODS: tuple[str, ...] = ("least_squares", "scales", "bias")
"""How `hfprune.reconstruct` refits an output projection: every kept column, one scale per kept unit (Kwon et al.),
or its bias alone (FLAP's bias compensation: the weights stay, the bias absorbs the mean of what was removed)."""

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
"""`prune_for_task(precision=...)` and `hfprune prune --precision`: what the Trainer computes in ("bf16"/"fp16":
mixed precision, fp32 master weights). "auto": bf16 on a CUDA GPU that computes it natively, else fp32
(`hfprune.jobs.finetune.resolve_precision`)."""

# ---- defaults -----------------------------------------------------------------------------------------
PRUNE_DEFAULTS = MappingProxyType(
    {
        # the model and the task data
        "label_column": "label",
        "max_length": 128,
        "seed": 42,
        # what to remove, and how it is chosen
        "ffn_sparsity": 0.0,
        "layer_sparsity": 0.0,
        "prune_width": False,
        "speedup_batch_size": 32,
        "speedup_seq_len": 128,
        "latency_cache": True,
        "layer_strategy": "top",
        "method": "importance",
        "per_layer": False,
        "uniform": False,
        "round_to_multiple": 1,
        "score_num_examples": 512,
        # how the pruned model recovers
        "recovery_epochs": 1.0,
        "reconstruct": False,
        "reconstruct_method": "least_squares",
        "learning_rate": 5e-5,
        "batch_size": 32,
        "allow_weak_baseline": False,
        "dense_control": True,
        "save_steps": 200,
        "precision": "auto",
        "fsdp": False,
        # what is written and timed
        "dry_run": False,
        "stream": False,
        "overwrite": False,
        "resume": False,
        "bench": True,
        "bench_batch_sizes": (1, 8, 32),
        "bench_repeats": 10,
    }
)
"""The one default of every `prune_for_task` parameter whose default is not None, under its parameter name.

`prune_for_task`'s signature and argument groups (`hfprune.jobs.prune_arguments`), the `hfprune prune` options
and their help text, and the `PruningConfig` fields that hold the same value (`FIELD_OF_SETTING`: `method` is
`pruning_method`, `per_layer` is `per_layer_ranking`, ...) all read it here. A parameter whose default is None
is resolved by the job from the constants below.
"""

FALLBACK_HEAD_SPARSITY = 0.4
"""The share of heads the prune job removes when it is given no target at all (`prune_for_task(head_sparsity=None)`,
`--heads` left out); with a param_budget, target_speedup or max_drop it removes no heads unless told.
`PruningConfig.target_head_sparsity` defaults to 0.0 instead, as every target of `PruningTrainer` does: a trainer
removes only what it is asked to remove."""

RECOVERY_RECIPE = MappingProxyType({"schedule": "one_shot", "steps": 1, "distillation_alpha": 0.0, "distillation_layer_weight": 0.0})
"""How a pruned model recovers unless told otherwise: one pruning step, no distillation. `PruningConfig`'s
defaults, and the prune job's for every target but a speed target."""

SPEED_TARGET_RECIPE = MappingProxyType({"steps": 2, "distillation_alpha": 0.5, "distillation_layer_weight": 1.0})
"""How a speed target (`target_speedup`, `max_drop`) recovers unless told otherwise: two pruning steps (the
iterative schedule), the second corrected by the first one's measurement, distilled from the dense model's logits
and from each of its layers. On MiniLM-L6 / SST-2 at 3x this gave 83.49% where one step without distillation
gave 73.62%, and it matched or beat one step at 1.5x and 2x (benchmarks/README.md, section 0)."""

MAX_DROP_STEPS = 6
"""Steps (candidate models) of a max-drop run when the schedule gives none: 1.14x ... 4x for a 4x ceiling."""
MAX_DROP_CEILING = 4.0
"""The fastest speedup a max-drop run tries when no `target_speedup` is given."""

CLI_BENCH_THREADS = 1
"""`hfprune prune --threads`: the command line times on one CPU thread (steadier on a shared machine), where
`prune_for_task(bench_threads=None)` leaves the caller's thread setting as it is: a library call should not
change it unasked."""

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
    "ALLOCATING_METHODS",
    "CLI_BENCH_THREADS",
    "DATA_FREE_METHODS",
    "FALLBACK_HEAD_SPARSITY",
    "HEADS_IMAGE",
    "IMPORTANCE_IMAGE",
    "L0_GATES_FILE",
    "LAYER_STRATEGIES",
    "METHODS",
    "PER_LAYER_NORMALIZED_METHODS",
    "PRECISIONS",
    "PRUNE_DEFAULTS",
    "PRUNING_METHODS",
    "PRUNING_PHASES",
    "PRUNING_SCHEDULES",
    "PRUNING_STATE_FILE",
    "README_FILE",
    "RECONSTRUCTION_METHODS",
    "RECOVERY_RECIPE",
    "REMOTE_CODE_FILE",
    "RESULTS_FILE",
    "SCORES_FILE",
    "SCORING_METHODS",
    "SPEED_FILE",
    "SPEED_IMAGE",
    "SPEED_TARGET_RECIPE",
    "ScoringMethod",
    "__version__",
    "choices",
]
