"""The arguments of `prune_for_task` in four groups, and what the job makes of them before it does any work.

As llm-compressor's `oneshot` parses its flat keyword arguments into argument dataclasses, `prune_for_task`
keeps its flat signature and sorts its keywords with `parse_prune_arguments` into `ModelDataArguments` (the
model and the task data), `TargetArguments` (what to remove and how it is chosen), `RecoveryArguments` (how the
pruned model recovers) and `OutputArguments` (what is timed and written). `hfprune.jobs.prune_job.PruneJob`
then runs on them.

Every default comes from `hfprune.constants` (`PRUNE_DEFAULTS` and the recipes), the table the command line
and `PruningConfig` read too; every bound from `hfprune._validation.SETTING_BOUNDS`. `resolve_defaults` fills in
what the caller left None, `job_settings` checks and records the values, `check_targets` and `check_training`
refuse what cannot work together. None of it imports torch or loads anything.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from .._validation import SETTING_BOUNDS, check_setting
from ..constants import (
    ALLOCATING_METHODS,
    FALLBACK_HEAD_SPARSITY,
    MAX_DROP_CEILING,
    MAX_DROP_STEPS,
    PRECISIONS,
    PRUNE_DEFAULTS,
    RECOVERY_RECIPE,
    SPEED_TARGET_RECIPE,
    choices,
)
from ..errors import PipelineInputError

if TYPE_CHECKING:
    from ..measure.latency import Timer
    from ..progress import Progress

D = PRUNE_DEFAULTS


@dataclass
class ModelDataArguments:
    """The model and the task data.

    model_name_or_path: a model folder or Hub id (`gguf_file`: a GGUF checkpoint in that folder).
    task, data_dir, train_file, validation_file, text_columns, label_column, label_names: the task and where its
        examples are (`hfprune.tasks.task_data.load_task_data`).
    max_train_samples, max_eval_samples: seeded subsets of train and of each eval split.
    max_length: tokens per example, also the sequence length the models are timed at.
    seed: sampling, initialisation and training.
    stream: read the checkpoint one layer at a time from its safetensors files, for models larger than memory:
        a causal LM (`task="lm"`) planned to a `param_budget` from forward-only scores, cut tensor by tensor, with
        no training (`hfprune.jobs.stream`).
    """

    model_name_or_path: str
    task: str
    data_dir: str | os.PathLike | None = None
    train_file: str | os.PathLike | None = None
    validation_file: str | os.PathLike | None = None
    text_columns: Sequence[str] | None = None
    label_column: str = D["label_column"]
    label_names: Sequence[str] | None = None
    gguf_file: str | None = None
    stream: bool = D["stream"]
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    max_length: int = D["max_length"]
    seed: int = D["seed"]

    def data_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `load_task_data` (after the task)."""
        names = ("data_dir", "train_file", "validation_file", "text_columns", "label_column", "label_names")
        names += ("max_train_samples", "max_eval_samples", "seed")
        return {name: getattr(self, name) for name in names}


@dataclass
class TargetArguments:
    """What to remove, and how it is chosen.

    One of: sparsities (`head_sparsity`, `FALLBACK_HEAD_SPARSITY` when no other target is given, `ffn_sparsity`,
    `layer_sparsity`); `param_budget`, the fraction of parameters to keep (the sparsities then give the mix;
    without them, with a gradient method (`ALLOCATING_METHODS`), the budget is allocated by importance per parameter across
    layers, heads and FFN neurons, and with `prune_width` the hidden width too, `hfprune.planning.param_target`);
    `target_speedup`, a measured speedup at `speedup_batch_size` x `speedup_seq_len` on the device
    (`PruningConfig.target_speedup`: a latency model, allocation by importance per saved second, measured again at
    the end); or `max_drop`, the fastest model within that many points of the dense model's main metric, chosen on
    a selection slice of train among the steps of an iterative speed-target run (`MAX_DROP_STEPS` steps up to
    `target_speedup`, default `MAX_DROP_CEILING`; `hfprune.jobs.max_drop`), then reported on dev like any other.
    `speed_timer` replaces how a speed target times models (`hfprune.measure.latency.Timer`, e.g. the runtime it
    will be served in); `latency_cache` reuses the latency model measured before on this machine
    (`PruningConfig.latency_cache`).

    method, layer_strategy, per_layer: how heads, FFN neurons and layers are ranked (`PruningConfig`'s
    `pruning_method`, `layer_strategy`, `per_layer_ranking`); score_num_examples: training examples scored.
    uniform: whatever the target, the same heads (KV groups) and FFN width in every kept layer and no layer without
    attention or MLP, so the config alone describes the model (`PruningConfig.uniform`, `hfprune.planning.uniform`).
    round_to_multiple: every kept FFN width a multiple of this (`PruningConfig.round_to_multiple`): 32 keeps
    llama.cpp's q8_0 on every tensor, 256 its K-quants (narrower rows fall back to other types).
    """

    head_sparsity: float | None = None
    ffn_sparsity: float = D["ffn_sparsity"]
    layer_sparsity: float = D["layer_sparsity"]
    param_budget: float | None = None
    prune_width: bool = D["prune_width"]
    target_speedup: float | None = None
    speedup_batch_size: int = D["speedup_batch_size"]
    speedup_seq_len: int = D["speedup_seq_len"]
    latency_cache: bool = D["latency_cache"]
    max_drop: float | None = None
    speed_timer: Timer | None = None
    layer_strategy: str = D["layer_strategy"]
    method: str = D["method"]
    per_layer: bool = D["per_layer"]
    uniform: bool = D["uniform"]
    round_to_multiple: int = D["round_to_multiple"]
    score_num_examples: int = D["score_num_examples"]

    @property
    def chooses_itself(self) -> bool:
        """Whether the target decides what to remove (a budget, a speed target, a max drop), not fixed sparsities."""
        return self.param_budget is not None or self.target_speedup is not None or self.max_drop is not None


@dataclass
class RecoveryArguments:
    """How the model is trained: the task head first when it has none, then recovery after pruning.

    schedule, steps: more than one step means the iterative schedule; distillation_alpha (on the logits) and
        distillation_layer_weight (on every kept layer) distil from the dense model. Left None, a speed target
        uses `SPEED_TARGET_RECIPE`, every other target `RECOVERY_RECIPE` (`recovery_recipe`).
    recovery_epochs: fine-tuning epochs after each pruning step. finetune_epochs: at most this many epochs to train
        a new task head first, with early stopping (None: 10 on sets under 10,000 examples, else 3).
    learning_rate, batch_size: both trainings (evaluation uses twice the batch size).
    allow_weak_baseline: prune a dense model that is not clearly above the trivial baselines (the card says so).
    dense_control: when the pruned model trained, train the dense model on the same examples for the same steps.
    reconstruct: after each pruning step, before recovery, refit the kept units layer by layer to match the dense
        model's blocks on the scoring examples (training data only; `hfprune.reconstruct`). With recovery_epochs=0
        nothing is trained at all: the model must already solve the task (or be a language model).
        reconstruct_method: "least_squares" (every kept column), "scales" (one scale per kept unit) or "bias" (the
            output biases alone: FLAP's bias compensation).
    device: "cpu", "cuda", "cuda:N" or "mps" for training and timing (None: the GPU when there is one).
    precision: what both trainings compute in, `PRECISIONS`: "bf16"/"fp16" mixed precision (fp32 weights), or
        "auto": bf16 on a CUDA GPU that computes it natively, else fp32 (`hfprune.jobs.finetune.resolve_precision`).
    save_steps: checkpoint training every so many steps (what `resume` continues from).
    fsdp: under `torchrun`, train recovery, distillation and the dense control fully sharded (FSDP2 through the
        Trainer and accelerate, the teacher sharded too) instead of DDP; scoring and surgery run on the whole model,
        gathered on every rank between the phases (`hfprune.training.fsdp`). The task head a model without one gets
        first still trains DDP.
    """

    schedule: str | None = None
    steps: int | None = None
    recovery_epochs: float = D["recovery_epochs"]
    finetune_epochs: float | None = None
    learning_rate: float = D["learning_rate"]
    batch_size: int = D["batch_size"]
    distillation_alpha: float | None = None
    distillation_layer_weight: float | None = None
    allow_weak_baseline: bool = D["allow_weak_baseline"]
    dense_control: bool = D["dense_control"]
    reconstruct: bool = D["reconstruct"]
    reconstruct_method: str = D["reconstruct_method"]
    device: str | None = None
    precision: str = D["precision"]
    save_steps: int = D["save_steps"]
    fsdp: bool = D["fsdp"]


@dataclass
class OutputArguments:
    """What is timed and written, and how the run reports.

    output_dir: the checkpoint folder, written atomically (`overwrite`: replace a non-empty one once the new one is
        complete); `resume`: continue an interrupted run from its work directory; `dry_run`: plan only.
    bench, bench_batch_sizes, bench_threads, bench_repeats: time dense vs pruned (None threads: the current setting).
    gguf_dtype: Llama-family `lm` jobs: also write `model-<gguf_dtype>.gguf` for llama.cpp into the checkpoint
        (`export_gguf`, checked in llama.cpp) and, with `bench`, time it beside the dense model in llama.cpp.
    repo_id, base_model_id, command: the card's Hub ids and the command that made it.
    progress, log: `progress(stage, done, total)` and one-line messages (default: the logger).
    """

    output_dir: str | os.PathLike
    dry_run: bool = D["dry_run"]
    overwrite: bool = D["overwrite"]
    resume: bool = D["resume"]
    bench: bool = D["bench"]
    bench_batch_sizes: Sequence[int] = D["bench_batch_sizes"]
    bench_threads: int | None = None
    bench_repeats: int = D["bench_repeats"]
    gguf_dtype: str | None = None
    repo_id: str | None = None
    base_model_id: str | None = None
    command: str | None = None
    progress: Progress | None = None
    log: Callable[[str], None] | None = None


ARGUMENT_GROUPS = (ModelDataArguments, TargetArguments, RecoveryArguments, OutputArguments)


def parse_prune_arguments(
    values: Mapping[str, Any],
) -> tuple[ModelDataArguments, TargetArguments, RecoveryArguments, OutputArguments]:
    """`prune_for_task`'s flat keyword arguments sorted into the four groups (as `HfArgumentParser.parse_dict`)."""
    left = dict(values)
    groups = [group(**{f.name: left.pop(f.name) for f in fields(group) if f.name in left}) for group in ARGUMENT_GROUPS]
    if left:
        raise TypeError(f"prune_for_task() got unexpected keyword arguments: {', '.join(sorted(left))}")
    return tuple(groups)


def recovery_recipe(
    speed_target: bool,
    schedule: str | None,
    steps: int | None,
    distillation_alpha: float | None,
    distillation_layer_weight: float | None,
    trains: bool = True,
) -> tuple[str, int, float, float]:
    """Fill in what the caller left None: `SPEED_TARGET_RECIPE` for a speed target, else `RECOVERY_RECIPE`.

    More than one step means the iterative schedule; an explicit `schedule="one_shot"` keeps one step. A speed
    target without recovery training (`trains=False`) plans one step: a second would only score the same untrained
    model again (and double the job's time), and the extra steps still correct the plan by measurement.
    """
    if schedule is None:
        iterative = (steps or 0) > 1 or (steps is None and speed_target and trains)
        schedule = "iterative" if iterative else RECOVERY_RECIPE["schedule"]
    if steps is None:
        steps = SPEED_TARGET_RECIPE["steps"] if speed_target and schedule == "iterative" else RECOVERY_RECIPE["steps"]
    recipe = SPEED_TARGET_RECIPE if speed_target else RECOVERY_RECIPE
    if distillation_alpha is None:
        distillation_alpha = recipe["distillation_alpha"]
    if distillation_layer_weight is None:
        distillation_layer_weight = recipe["distillation_layer_weight"]
    return schedule, steps, distillation_alpha, distillation_layer_weight


def resolve_defaults(
    targets: TargetArguments, recovery: RecoveryArguments, *, resume: bool
) -> tuple[TargetArguments, RecoveryArguments]:
    """The groups with what the caller left None filled in: the head sparsity, a max-drop run's schedule and
    ceiling, and the recovery recipe."""
    head_sparsity = targets.head_sparsity
    if head_sparsity is None:
        head_sparsity = 0.0 if targets.chooses_itself else FALLBACK_HEAD_SPARSITY
    schedule, steps, target_speedup = recovery.schedule, recovery.steps, targets.target_speedup
    if targets.max_drop is not None:
        check_setting("max_drop", targets.max_drop, error=PipelineInputError)
        if resume:  # the candidate models of the steps before a kill are not in the checkpoints
            raise PipelineInputError("a max_drop run cannot resume yet: start it again without resume")
        schedule, steps = "iterative", (steps if steps is not None and steps > 1 else MAX_DROP_STEPS)
        target_speedup = MAX_DROP_CEILING if target_speedup is None else target_speedup
    schedule, steps, alpha, layer_weight = recovery_recipe(
        target_speedup is not None, schedule, steps, recovery.distillation_alpha, recovery.distillation_layer_weight,
        trains=recovery.recovery_epochs > 0,
    )
    targets = replace(targets, head_sparsity=head_sparsity, target_speedup=target_speedup)
    recovery = replace(recovery, schedule=schedule, steps=steps, distillation_alpha=alpha, distillation_layer_weight=layer_weight)
    return targets, recovery


def job_settings(model_data: ModelDataArguments, targets: TargetArguments, recovery: RecoveryArguments) -> dict[str, Any]:
    """The run's resolved settings, each number checked: what `hfprune_results.json` records, what a resumed run
    must match, and what its `PruningConfig` is built from (`config_from_settings`)."""
    speed_target = targets.target_speedup is not None
    settings = {
        "method": targets.method,
        "schedule": recovery.schedule,
        "steps": recovery.steps,
        "head_sparsity": targets.head_sparsity,
        "ffn_sparsity": targets.ffn_sparsity,
        "layer_sparsity": targets.layer_sparsity,
        "param_budget": targets.param_budget,
        "prune_width": True if targets.prune_width else None,
        "target_speedup": targets.target_speedup,
        "speedup_batch_size": targets.speedup_batch_size if speed_target else None,
        "speedup_seq_len": targets.speedup_seq_len if speed_target else None,
        "max_drop": targets.max_drop,
        "layer_strategy": targets.layer_strategy,
        "per_layer": targets.per_layer,
        "uniform": True if targets.uniform else None,
        "round_to_multiple": targets.round_to_multiple if targets.round_to_multiple != 1 else None,
        "recovery_epochs": recovery.recovery_epochs,
        "reconstruct": True if recovery.reconstruct else None,
        "reconstruct_method": recovery.reconstruct_method if recovery.reconstruct else None,
        "learning_rate": recovery.learning_rate,
        "batch_size": recovery.batch_size,
        "precision": recovery.precision,  # as asked; the job records the one "auto" resolves to on its device
        "fsdp": True if recovery.fsdp else None,
        "distillation_alpha": recovery.distillation_alpha,
        "distillation_layer_weight": recovery.distillation_layer_weight,
        "score_num_examples": targets.score_num_examples,
        "max_train_samples": model_data.max_train_samples,
        "max_eval_samples": model_data.max_eval_samples,
        "max_length": model_data.max_length,
        "seed": model_data.seed,
    }
    # every number by its rule in SETTING_BOUNDS (finite, within bounds), before anything loads; None: not set
    return {
        key: check_setting(key, value, error=PipelineInputError) if key in SETTING_BOUNDS and value is not None else value
        for key, value in settings.items()
    }


def check_targets(targets: TargetArguments, settings: Mapping[str, Any]) -> None:
    """Something to prune, and a `prune_width` that has the allocated budget it needs."""
    mix = any(settings[f"{kind}_sparsity"] for kind in ("head", "ffn", "layer"))
    if not targets.chooses_itself and not mix:
        raise PipelineInputError(
            "nothing to prune: give a head, FFN or layer sparsity above 0, a param_budget, a target_speedup or a max_drop"
        )
    if targets.prune_width and (targets.param_budget is None or mix or targets.method not in ALLOCATING_METHODS):
        methods = choices(ALLOCATING_METHODS)
        raise PipelineInputError(
            f"prune_width needs a param_budget without head, FFN or layer sparsities, with method {methods}",
            cli_message=f"--prune-width needs --params without --heads, --ffn or --layers, with --method {methods}",
        )


def fit_head_target(
    given_head_sparsity: float | None, targets: TargetArguments, settings: dict[str, Any], heads_left: int, model: str
) -> TargetArguments:
    """The targets for a model that has `heads_left` attention heads. One whose every head was already removed
    (a legal hfprune output) has none to score or remove: a head sparsity the caller gave is refused, the
    fallback one (`FALLBACK_HEAD_SPARSITY`, when no target was given) becomes 0, in `settings` too, and what is
    left must still prune something."""
    if heads_left:
        return targets
    if given_head_sparsity:
        raise PipelineInputError(
            f"{model} has no attention heads left (every head was removed): head_sparsity={given_head_sparsity:g} "
            "has nothing to remove; prune FFN neurons or layers instead (ffn_sparsity, layer_sparsity, target_speedup)",
            cli_message=f"{model} has no attention heads left (every head was removed): --heads {given_head_sparsity:g} "
            "has nothing to remove; prune FFN neurons or layers instead (--ffn, --layers, --speedup)",
        )
    targets = replace(targets, head_sparsity=0.0)
    settings["head_sparsity"] = 0.0
    if not targets.chooses_itself and not any(settings[f"{kind}_sparsity"] for kind in ("ffn", "layer")):
        raise PipelineInputError(
            f"nothing to prune: {model} has no attention heads left (every head was removed); give an FFN or layer "
            "sparsity above 0 or a target_speedup",
            cli_message=f"nothing to prune: {model} has no attention heads left (every head was removed); give --ffn, "
            "--layers or --speedup",
        )
    return targets


def check_training(recovery: RecoveryArguments, processes: int = 1) -> None:
    """The numbers of the training that `job_settings` does not record, the precision's name (its device is
    checked with the device: `hfprune.jobs.finetune.resolve_precision`), and `fsdp` among `processes` processes."""
    if recovery.fsdp and processes < 2:
        raise PipelineInputError(
            "fsdp shards training across processes: launch the job with torchrun --nproc_per_node N (N >= 2)",
            cli_message="--fsdp shards training across processes: launch hfprune prune with torchrun --nproc_per_node N (N >= 2)",
        )
    if recovery.precision not in PRECISIONS:
        raise PipelineInputError(
            f"precision must be {choices(PRECISIONS)}, got {recovery.precision!r}",
            cli_message=f"--precision must be {choices(PRECISIONS)}, got {recovery.precision!r}",
        )
    if recovery.finetune_epochs is not None:
        check_setting("finetune_epochs", recovery.finetune_epochs, error=PipelineInputError)
    check_setting("save_steps", recovery.save_steps, error=PipelineInputError)


__all__ = [
    "ARGUMENT_GROUPS",
    "ModelDataArguments",
    "OutputArguments",
    "RecoveryArguments",
    "TargetArguments",
    "check_targets",
    "check_training",
    "fit_head_target",
    "job_settings",
    "parse_prune_arguments",
    "recovery_recipe",
    "resolve_defaults",
]
