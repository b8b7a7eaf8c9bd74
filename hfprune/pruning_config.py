"""`PruningConfig`, the `TrainingArguments` of `PruningTrainer`.

Kept apart from the trainer (as TRL pairs `X_config.py` with `X_trainer.py`) so the options, their help text
and their checks can be read, parsed (`HfArgumentParser`) and documented without the training loop.
`PruningArguments` is the same class under its first name.

Defaults come from `hfprune.constants` (`PRUNE_DEFAULTS`, `RECOVERY_RECIPE`), the table the prune job and the
command line read too, and every number is checked against `hfprune._validation.SETTING_BOUNDS`. One default
differs from the job's on purpose: `target_head_sparsity` is 0.0, as every target here is (a trainer removes only
what it is asked to), where the job falls back to `FALLBACK_HEAD_SPARSITY` when it is given no target at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from transformers import TrainingArguments

from ._validation import check_finite, check_setting
from .constants import (
    ALLOCATING_METHODS,
    LAYER_STRATEGIES,
    PRUNE_DEFAULTS,
    PRUNING_METHODS,
    PRUNING_SCHEDULES,
    RECONSTRUCTION_METHODS,
    RECOVERY_RECIPE,
    choices,
)
from .errors import PruningError


@dataclass
class PruningConfig(TrainingArguments):
    r"""
    Configuration class for [`PruningTrainer`].

    Only the pruning parameters are listed here; every [`~transformers.TrainingArguments`] field works as usual,
    except `num_train_epochs` and `max_steps`: the length of training is set per pruning step by
    `recovery_epochs` / `recovery_steps` (and `l0_epochs` / `l0_steps` for the gate training). Learning-rate
    warm-up and decay restart with every pruning step, since each one gets a fresh optimizer and scheduler.

    Parameters:
        > What is pruned, and how much

        pruning_method (`str`, defaults to `"importance"`):
            How heads and FFN neurons are ranked: `"importance"` (Michel et al. 2019, |d loss / d gate| per batch,
            per-layer normalised), `"taylor"` (the same per example, not normalised), `"fisher"` (the same squared,
            the gates' diagonal Fisher information, Kwon et al. 2022), `"magnitude"` (weight norms, no data),
            `"random"`, or `"l0"` (trained hard-concrete gates on the heads, see below).
        pruning_schedule (`str`, defaults to `"one_shot"`):
            `"one_shot"` prunes to the targets in one step; `"iterative"` in `pruning_steps` equal steps, scoring
            the pruned model again before each one (Michel et al.'s loop, with recovery in between).
        pruning_steps (`int`, defaults to `1`):
            Number of steps of the iterative schedule (step k reaches k / pruning_steps of every target).
        target_head_sparsity (`float`, defaults to `0.0`):
            Fraction in [0, 1) of the ORIGINAL model's attention heads to remove; heads of dropped layers count
            as removed (as in `hfprune.planning.plan.head_sparsity`). Like every target here it defaults to
            removing nothing; the prune job's `head_sparsity` falls back to 0.4 instead when it has no target.
        target_ffn_sparsity (`float`, defaults to `0.0`):
            Fraction in [0, 1) of the original FFN neurons to remove; neurons of dropped layers count as removed.
        target_layer_sparsity (`float`, defaults to `0.0`):
            Fraction in [0, 1) of the original layers to drop (rounded to whole layers; at least one layer stays).
        target_param_budget (`float` or `None`, defaults to `None`):
            Fraction in (0, 1] of the model's parameter count to keep. The three sparsities then only give the
            MIX: they are all multiplied by one factor, chosen so that the removed heads, neurons and layers
            account for the parameters over budget. With no sparsity given and a gradient `pruning_method`
            ("importance", "taylor" or "fisher"), the budget is allocated instead: the layers, heads (KV groups) and FFN neurons with the
            least importance per parameter go, across kinds on one measured loss scale (`hfprune.planning.param_target`);
            other methods then prune heads and FFN neurons at the same sparsity. Only `prune_width` cuts the
            embeddings, so a small budget may be unreachable (PruningError).
        prune_width (`bool`, defaults to `False`):
            With an allocated `target_param_budget`, also cut the residual-stream width (`hfprune.prune_hidden`):
            each step tries widths of 100% down to 50% of the current one, allocates the rest of its budget for
            each and keeps the one whose plan loses least on the scoring data.
        target_speedup (`float` or `None`, defaults to `None`):
            Prune until the model is this many times faster (> 1) than the dense model, measured where it trains
            (`args.device`) at `speedup_batch_size` x `speedup_seq_len`, instead of fixed sparsities. A latency
            model is measured first (`hfprune.measure.latency`); each step removes the layers, heads and FFN neurons with
            the least gradient importance per second saved, across all three at once (`hfprune.planning.allocation`),
            down to its share of the time; after the last step the result is timed beside the dense model and
            pruned further if it is short (`speedup_extra_steps`). Needs a gradient `pruning_method`, "importance",
            "taylor" or "fisher" (scores are then not normalised per layer, so kinds compare), and leaves the sparsity targets unset.
        speedup_batch_size (`int`, defaults to `32`), speedup_seq_len (`int`, defaults to `128`):
            The input shape the speedup is measured and met at.
        speedup_num_threads (`int` or `None`, defaults to `None`):
            CPU threads while timing (default: the current setting).
        latency_cache (`bool`, defaults to `True`):
            Reuse the latency model measured before for the same model shapes, `speedup_batch_size` x
            `speedup_seq_len`, threads, device and machine (`hfprune.measure.latency_cache`, files under
            `HF_HOME/hfprune/latency`): a fit varies between runs, and so would the plans made on it. The first run
            measures and keeps it; False measures again and keeps nothing. A `speed_timer` of your own is never cached.
        speedup_extra_steps (`int`, defaults to `2`):
            At most this many extra pruning steps when the measured speedup is short of the target (0: trust the
            latency model).
        layer_strategy (`str`, defaults to `"top"`):
            Which layers go: one of `hfprune.planning.plan.LAYER_STRATEGIES` (`"contribution"` scores them with
            `hfprune.layer_cosine_scores` on the scoring data).
        per_layer_ranking (`bool`, defaults to `False`):
            Rank heads and FFN neurons within each layer (every layer loses the same share) instead of over the
            whole model.
        uniform (`bool`, defaults to `False`):
            Stock shapes: every planner (sparsities, `target_param_budget`, `target_speedup`, the L0 gates) keeps
            the same number of heads (KV groups) and the same FFN width in every kept layer, and never removes a
            layer's whole attention or MLP (whole layers may still go), so the config alone describes the model
            (`config.hfprune["stock_loadable"]`) and transformers, vLLM, TGI, SGLang and llama.cpp load it unchanged.
            Llama-family head counts also divide the hidden size, as transformers requires; encoders whose head size
            is `hidden_size / heads` (BERT...) cannot state fewer heads, so only their FFN widths and layers are stock.
            Rounding (`round_to_multiple`, `round_heads_to_multiple`) applies alike to every layer; ranking is
            per layer (`per_layer_ranking` changes nothing); L0 gates then leave the blocks ungated
            (`hfprune.planning.uniform`).
        round_to_multiple (`int`, defaults to `1`):
            Round every layer's kept FFN width to a multiple of this (e.g. 64) for faster dense kernels.
        round_heads_to_multiple (`int`, defaults to `1`):
            Round every layer's kept number of heads to a multiple of this (a multiple of the KV group size).

        > Scoring and recovery

        score_num_examples (`int`, defaults to `512`):
            Examples used to score, drawn (seeded) from `score_dataset`, else from the TRAINING set: scoring on the
            evaluation split would leak it into the pruning decisions.
        recovery_epochs (`float`, defaults to `1.0`):
            Fine-tuning epochs after each pruning step (0: none).
        recovery_steps (`int`, defaults to `0`):
            If > 0, fine-tuning optimizer steps after each pruning step, instead of `recovery_epochs`.
        reconstruct (`bool`, defaults to `False`):
            After each pruning step, before any recovery training, refit the kept units of every layer so that each
            block's output matches the dense model's on the scoring examples (`hfprune.reconstruct`, layer by
            layer, fitted to the dense model's residual stream). The dense copy is the teacher: it is kept even
            without distillation.
        reconstruct_method (`str`, defaults to `"least_squares"`):
            How `reconstruct` refits each output projection: `"least_squares"` (every kept column and the bias),
            `"scales"` (one scale per kept head and FFN neuron, Kwon et al. 2022's mask tuning) or `"bias"` (the
            bias alone, FLAP's compensation; a Llama model gets zero biases first, `attention_bias`/`mlp_bias` on).
        distillation_alpha (`float`, defaults to `0.0`):
            Weight of a KL distillation term from the unpruned teacher: loss = (1 - alpha) * task +
            alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)). The teacher is `teacher_model`, or a
            copy of the model taken before the first pruning step.
        distillation_temperature (`float`, defaults to `2.0`):
            The temperature T of the distillation term.
        distillation_layer_weight (`float`, defaults to `0.0`):
            Weight of a layer-wise term added to the loss (CoFi, Xia et al. 2022): each kept layer's output is pulled
            towards the teacher's output of the same original layer, on the hidden channels kept, as
            ||student - teacher||^2 / ||teacher||^2 averaged over layers. Uses the same teacher as
            `distillation_alpha`; it must have the student's original shape.

        > L0 gates (`pruning_method="l0"`, one-shot)

        On the heads alone, or, with `target_param_budget`, on the heads, every FFN neuron and every whole attention
        and MLP block together, on one parameter scale (CoFi, Xia et al. 2022; `hfprune.training.gates.HeadGates`).

        l0_lambda (`float`, defaults to `1.0`):
            Coefficient of the L0 penalty, `l0_lambda` times the expected fraction of heads kept: larger closes
            more heads. The number of heads removed follows from it, unless `target_head_sparsity` or
            `target_param_budget` is set: then CoFi's Lagrangian (multipliers trained by gradient ascent at
            `l0_learning_rate`) pulls the expected sparsity (of the heads, or of the gated parameters) to the
            target, and the least open gates close until the target is met: exactly that fraction of the heads,
            or the budget to within one unit's parameters.
        l0_warmup_steps (`int`, defaults to `0`):
            Steps over which the penalty coefficient ramps up linearly from 0 (Shim et al. 2021).
        l0_init_keep (`float`, defaults to `0.95`):
            Initial probability that a gate is open.
        l0_scale_attention (`bool`, defaults to `True`):
            Scale each layer's gated attention output by n / (expected open heads) (Shim et al. 2021).
        l0_learning_rate (`float`, defaults to `0.2`):
            Learning rate of the gates' log-alpha and of the Lagrange multipliers (Adam moves each about this much
            per step; log-alpha starts near +1.35 at `l0_init_keep=0.95` and a gate closes below 0). Too low and
            the gates cannot move in a short run; too high closes every gate the task does not defend. 0.2 was
            chosen on held-out training examples over 0.05 to 1.0 with 63 gate steps (benchmarks/l0_learning_rate.py).
        l0_epochs (`float`, defaults to `1.0`):
            Epochs of gate training before what the closed gates gate is removed.
        l0_steps (`int`, defaults to `0`):
            If > 0, optimizer steps of gate training, instead of `l0_epochs`.
    """

    pruning_method: str = field(
        default=PRUNE_DEFAULTS["method"],
        metadata={"help": "How heads and FFN neurons are ranked.", "choices": list(PRUNING_METHODS)},
    )
    pruning_schedule: str = field(
        default=RECOVERY_RECIPE["schedule"],
        metadata={"help": "Prune in one step, or in `pruning_steps` steps.", "choices": list(PRUNING_SCHEDULES)},
    )
    pruning_steps: int = field(
        default=RECOVERY_RECIPE["steps"], metadata={"help": "Iterative schedule: number of steps to reach the targets."}
    )
    target_head_sparsity: float = field(
        default=0.0, metadata={"help": "Fraction of the original attention heads to remove, in [0, 1)."}
    )
    target_ffn_sparsity: float = field(
        default=PRUNE_DEFAULTS["ffn_sparsity"], metadata={"help": "Fraction of the original FFN neurons to remove, in [0, 1)."}
    )
    target_layer_sparsity: float = field(
        default=PRUNE_DEFAULTS["layer_sparsity"], metadata={"help": "Fraction of the original layers to drop, in [0, 1)."}
    )
    target_param_budget: float | None = field(
        default=None,
        metadata={
            "help": "Fraction (0, 1] of the parameters to keep; the sparsities are scaled by one factor to meet it."
        },
    )
    prune_width: bool = field(
        default=PRUNE_DEFAULTS["prune_width"], metadata={"help": "With an allocated target_param_budget, also prune the hidden width."}
    )
    target_speedup: float | None = field(
        default=None, metadata={"help": "Prune until the measured speedup over the dense model reaches this (> 1)."}
    )
    speedup_batch_size: int = field(default=PRUNE_DEFAULTS["speedup_batch_size"], metadata={"help": "Batch size the speedup is measured at."})
    speedup_seq_len: int = field(default=PRUNE_DEFAULTS["speedup_seq_len"], metadata={"help": "Sequence length the speedup is measured at."})
    speedup_num_threads: int | None = field(default=None, metadata={"help": "CPU threads while timing."})
    latency_cache: bool = field(
        default=PRUNE_DEFAULTS["latency_cache"],
        metadata={"help": "Reuse the latency model measured before for the same shapes, timing setup and machine."},
    )
    speedup_extra_steps: int = field(
        default=2, metadata={"help": "Extra pruning steps at most when the measured speedup is short (0: none)."}
    )
    layer_strategy: str = field(
        default=PRUNE_DEFAULTS["layer_strategy"], metadata={"help": "Which layers to drop.", "choices": list(LAYER_STRATEGIES)}
    )
    per_layer_ranking: bool = field(
        default=PRUNE_DEFAULTS["per_layer"], metadata={"help": "Rank heads and FFN neurons within each layer instead of globally."}
    )
    uniform: bool = field(
        default=PRUNE_DEFAULTS["uniform"],
        metadata={"help": "The same heads (KV groups) and FFN width in every kept layer: stock shapes any runtime loads."},
    )
    round_to_multiple: int = field(
        default=PRUNE_DEFAULTS["round_to_multiple"],
        metadata={"help": "Round every layer's kept FFN width to a multiple of this (e.g. 64; 32 for llama.cpp's q8_0, 256 for its K-quants)."},
    )
    round_heads_to_multiple: int = field(
        default=1, metadata={"help": "Round every layer's kept number of heads to a multiple of this."}
    )
    score_num_examples: int = field(
        default=PRUNE_DEFAULTS["score_num_examples"], metadata={"help": "Examples for scoring, from score_dataset or the train set (not eval)."}
    )
    recovery_epochs: float = field(
        default=PRUNE_DEFAULTS["recovery_epochs"], metadata={"help": "Fine-tuning epochs after each pruning step (0: none)."}
    )
    recovery_steps: int = field(
        default=0, metadata={"help": "If > 0, fine-tuning steps after each pruning step (overrides recovery_epochs)."}
    )
    reconstruct: bool = field(
        default=PRUNE_DEFAULTS["reconstruct"],
        metadata={"help": "After each pruning step, refit the kept units layer by layer to match the dense model's blocks."},
    )
    reconstruct_method: str = field(
        default=PRUNE_DEFAULTS["reconstruct_method"],
        metadata={"help": "How reconstruct refits each output projection.", "choices": list(RECONSTRUCTION_METHODS)},
    )
    distillation_alpha: float = field(
        default=RECOVERY_RECIPE["distillation_alpha"], metadata={"help": "Weight in [0, 1] of the KL term from the unpruned teacher's logits."}
    )
    distillation_temperature: float = field(default=2.0, metadata={"help": "Distillation temperature (> 0)."})
    distillation_layer_weight: float = field(
        default=RECOVERY_RECIPE["distillation_layer_weight"], metadata={"help": "Weight (>= 0) of the layer-wise term: each layer's output vs the teacher's."}
    )
    l0_lambda: float = field(
        default=1.0, metadata={"help": "L0 method: penalty coefficient (times the expected fraction of heads kept)."}
    )
    l0_warmup_steps: int = field(default=0, metadata={"help": "L0 method: steps to ramp the penalty up from 0."})
    l0_init_keep: float = field(default=0.95, metadata={"help": "L0 method: initial probability a gate is open."})
    l0_scale_attention: bool = field(
        default=True, metadata={"help": "L0 method: rescale attention output by n / expected open heads."}
    )
    l0_learning_rate: float = field(default=0.2, metadata={"help": "L0 method: learning rate of the gates."})
    l0_epochs: float = field(default=1.0, metadata={"help": "L0 method: epochs of gate training."})
    l0_steps: int = field(default=0, metadata={"help": "L0 method: if > 0, steps of gate training."})

    def __post_init__(self):
        self._check_pruning_arguments()
        super().__post_init__()

    def _check_pruning_arguments(self) -> None:
        """One-line PruningErrors for bad values, before TrainingArguments does any setup."""
        checks = [
            (self.pruning_method in PRUNING_METHODS, f"pruning_method must be one of {list(PRUNING_METHODS)}"),
            (self.pruning_schedule in PRUNING_SCHEDULES, f"pruning_schedule must be one of {list(PRUNING_SCHEDULES)}"),
            (self.layer_strategy in LAYER_STRATEGIES, f"layer_strategy must be one of {list(LAYER_STRATEGIES)}"),
            (self.reconstruct_method in RECONSTRUCTION_METHODS, f"reconstruct_method must be one of {list(RECONSTRUCTION_METHODS)}"),
        ]
        for ok, message in checks:
            if not ok:
                value = message.split(" must")[0]
                raise PruningError(f"{message}, got {getattr(self, value)!r}")
        for item in fields(self):  # no float setting is NaN or infinite, TrainingArguments' own included
            check_finite(item.name, getattr(self, item.name, None))
        for name in _BOUNDED_FIELDS:  # the rules the prune job and the command line check these values by
            if getattr(self, name) is not None or name in _REQUIRED_FIELDS:
                check_setting(_RULE_OF_FIELD.get(name, name), getattr(self, name), name=name, plain=False)
        if self.target_speedup is not None:
            self._check_speed_target()
        if self.prune_width and not self.allocates_param_budget:
            raise PruningError(
                "prune_width needs a target_param_budget without sparsity targets, with pruning_method 'importance' "
                f"or 'taylor' (got method {self.pruning_method!r}, budget {self.target_param_budget})"
            )
        if self.distillation_layer_weight > 0 and self.gradient_checkpointing:
            raise PruningError(
                "distillation_layer_weight reads each layer's output, which gradient checkpointing recomputes "
                "without it: turn one of them off"
            )
        if self.pruning_schedule == "one_shot" and self.pruning_steps != 1:
            raise PruningError(
                f"pruning_steps={self.pruning_steps} needs pruning_schedule='iterative' (one_shot is one step)"
            )
        if self.pruning_method == "l0":
            if self.pruning_schedule != "one_shot":
                raise PruningError("pruning_method='l0' trains its gates once: use pruning_schedule='one_shot'")
            if self.target_ffn_sparsity or self.target_layer_sparsity:
                raise PruningError(
                    "pruning_method='l0' gates heads (target_head_sparsity), or heads, FFN neurons and blocks together "
                    "(target_param_budget): leave the FFN and layer targets unset"
                )
            if self.target_param_budget is not None and self.target_head_sparsity:
                raise PruningError("pruning_method='l0' takes target_head_sparsity or target_param_budget, not both")
            if self.l0_steps == 0 and self.l0_epochs == 0:
                raise PruningError("pruning_method='l0' needs gate training: set l0_epochs > 0 or l0_steps > 0")
            if self.fsdp:
                raise PruningError(
                    "pruning_method='l0' trains gates outside the model, which FSDP does not shard: train it without fsdp"
                )
        if self.max_steps != -1:
            raise PruningError("PruningArguments ignores max_steps: set recovery_steps (per pruning step) instead")
        if self.num_train_epochs != 3.0:  # TrainingArguments' default
            raise PruningError(
                "PruningArguments ignores num_train_epochs: set recovery_epochs (per pruning step) instead"
            )

    def _check_speed_target(self) -> None:
        if self.pruning_method not in ALLOCATING_METHODS:
            raise PruningError(
                "target_speedup ranks layers, heads and FFN neurons on one scale: use pruning_method "
                f"{choices(ALLOCATING_METHODS)}, not {self.pruning_method!r}"
            )
        if self.target_head_sparsity or self.target_ffn_sparsity or self.target_layer_sparsity or self.target_param_budget is not None:
            raise PruningError("target_speedup chooses what to remove: leave the sparsity and budget targets unset")
        if self.speedup_num_threads is not None:
            check_setting("bench_threads", self.speedup_num_threads, name="speedup_num_threads", plain=False)

    def card_settings(self) -> dict[str, Any]:
        """What the model card's pruning table shows of these arguments."""
        return {
            "method": self.pruning_method,
            "schedule": self.pruning_schedule,
            "steps": self.pruning_steps,
            "target_head_sparsity": self.target_head_sparsity,
            "target_ffn_sparsity": self.target_ffn_sparsity,
            "target_layer_sparsity": self.target_layer_sparsity,
            **({"target_speedup": self.target_speedup} if self.target_speedup is not None else {}),
            **({"target_param_budget": self.target_param_budget} if self.target_param_budget is not None else {}),
            **({"prune_width": True} if self.prune_width else {}),
            **({"uniform": True} if self.uniform else {}),
            "recovery_epochs": self.recovery_epochs,
            "recovery_steps": self.recovery_steps,
            **({"reconstruct": True, "reconstruct_method": self.reconstruct_method} if self.reconstruct else {}),
            "distillation_alpha": self.distillation_alpha,
            **({"distillation_layer_weight": self.distillation_layer_weight} if self.distillation_layer_weight else {}),
            "learning_rate": self.learning_rate,
        }

    @property
    def needs_teacher(self) -> bool:
        """Whether a dense copy must be kept: to distil from, or to reconstruct against."""
        return self.distills or self.reconstruct

    @property
    def distills(self) -> bool:
        """Whether recovery learns from a teacher (on the logits, the layers, or both)."""
        return self.distillation_alpha > 0 or self.distillation_layer_weight > 0

    @property
    def allocates_param_budget(self) -> bool:
        """Whether `target_param_budget` is spent by allocation (no sparsity mix, a gradient method)."""
        mix = self.target_head_sparsity or self.target_ffn_sparsity or self.target_layer_sparsity
        return self.target_param_budget is not None and not mix and self.pruning_method in ALLOCATING_METHODS

    @property
    def num_pruning_steps(self) -> int:
        return self.pruning_steps if self.pruning_schedule == "iterative" else 1


PruningArguments = PruningConfig  # the first name, kept for existing code

# The jobs' setting names (`prune_for_task(head_sparsity=...)`, the card's pruning table) and the fields they set.
FIELD_OF_SETTING = {
    "method": "pruning_method",
    "schedule": "pruning_schedule",
    "steps": "pruning_steps",
    "head_sparsity": "target_head_sparsity",
    "ffn_sparsity": "target_ffn_sparsity",
    "round_to_multiple": "round_to_multiple",
    "layer_sparsity": "target_layer_sparsity",
    "param_budget": "target_param_budget",
    "prune_width": "prune_width",
    "target_speedup": "target_speedup",
    "speedup_batch_size": "speedup_batch_size",
    "speedup_seq_len": "speedup_seq_len",
    "layer_strategy": "layer_strategy",
    "per_layer": "per_layer_ranking",
    "uniform": "uniform",
    "score_num_examples": "score_num_examples",
    "recovery_epochs": "recovery_epochs",
    "reconstruct": "reconstruct",
    "reconstruct_method": "reconstruct_method",
    "distillation_alpha": "distillation_alpha",
    "distillation_layer_weight": "distillation_layer_weight",
}


SETTING_OF_FIELD = {name: setting for setting, name in FIELD_OF_SETTING.items()}

# The numeric fields, checked in this order against `SETTING_BOUNDS` (under the job's name where it has one).
_BOUNDED_FIELDS = (
    "target_head_sparsity", "target_ffn_sparsity", "target_layer_sparsity", "target_param_budget", "target_speedup",
    "pruning_steps", "speedup_batch_size", "speedup_seq_len", "speedup_extra_steps", "round_to_multiple",
    "round_heads_to_multiple", "score_num_examples", "recovery_steps", "l0_warmup_steps", "l0_steps",
    "recovery_epochs", "l0_epochs", "l0_lambda", "distillation_alpha", "distillation_layer_weight",
    "distillation_temperature", "l0_learning_rate", "l0_init_keep", "learning_rate", "seed", "data_seed",
)  # fmt: skip
_REQUIRED_FIELDS = frozenset(_BOUNDED_FIELDS) - {"target_param_budget", "target_speedup", "data_seed"}  # the rest: None is unset
_RULE_OF_FIELD = {**SETTING_OF_FIELD, "data_seed": "seed"}  # the SETTING_BOUNDS key each field is checked by


def config_from_settings(settings: dict[str, Any], **training_arguments: Any) -> PruningConfig:
    """The `PruningConfig` of a job's `settings` (keys of `FIELD_OF_SETTING`; others, and None values, are ignored)."""
    fields = {FIELD_OF_SETTING[key]: value for key, value in settings.items() if key in FIELD_OF_SETTING and value is not None}
    return PruningConfig(**fields, **training_arguments)


__all__ = ["FIELD_OF_SETTING", "SETTING_OF_FIELD", "PruningArguments", "PruningConfig", "config_from_settings"]
