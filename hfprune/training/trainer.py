"""`PruningTrainer`: score -> prune -> fine-tune loops on top of `transformers.Trainer`.

`PruningTrainer` is a drop-in replacement for `Trainer`. `train()` runs an outer loop over pruning steps; each
step scores the model, removes heads / FFN neurons / layers with `hfprune`'s surgery, and fine-tunes the smaller
model ("recovery") through the normal Trainer loop with a FRESH optimizer and scheduler: surgery replaces
parameters, so an optimizer built before it would silently keep training tensors that are no longer in the model.
With `pruning_method="l0"` the single step instead trains hard-concrete head gates (`hfprune.training.gates.HeadGates`)
with an L0 penalty and removes the heads whose gates closed.

What one step removes, and the surgery, live in `hfprune.training.steps` (`PruningSteps`); where each step is
checkpointed and how a killed run resumes, in `hfprune.training.resume` (`PruningCheckpoints`). This module holds
the loop, the scores, the losses and the card.

Under `torchrun` / `accelerate launch` every rank scores its own shard of the scoring data and the scores are
averaged with `all_reduce`, so all ranks prune the same units (checked with an all-gather of the plans). The
training phases run in DDP, or with `fsdp=True` fully sharded, the teacher too, with the full model gathered back on
every rank between them for scoring and surgery (`hfprune.training.fsdp`).
"""

from __future__ import annotations

import copy
import gc
import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset
from transformers import Trainer
from transformers.trainer_utils import TrainOutput, set_seed
from transformers.utils import logging

from .._validation import offset_seed
from ..constants import (
    DATA_FREE_METHODS,
    L0_GATES_FILE,
    PER_LAYER_NORMALIZED_METHODS,
    PRUNING_METHODS,
    PRUNING_SCHEDULES,
    PRUNING_STATE_FILE,
)
from ..distributed import average_over_processes, check_same_plan, is_distributed
from ..engine.arch import get_adapter
from ..engine.restore import restore_structure  # re-exported: its old import path
from ..errors import PruningError, TargetOutOfReachError
from ..export.card import write_model_card
from ..export.card_source import metrics_from_history
from ..measure.latency import Timer
from ..measure.sparsity import num_parameters
from ..planning.param_target import ParamTarget
from ..planning.plan import check_head_target, check_unpruned, final_targets, sparsities
from ..planning.speed_target import SpeedTarget
from ..pruning_config import PruningArguments, PruningConfig  # PruningArguments: re-exported
from ..reconstruction.sequential import DEFAULT_DAMPING, check_reconstructable, reconstruct
from ..scoring.common import normalize_per_layer
from ..scoring.methods import score_units
from .distill import (
    layer_distillation_loss,
    layer_outputs,
    layer_pairs,
    logit_distillation_loss,
    teacher_inputs,
)
from .fsdp import enable_on_cpu, gathered, is_sharded, meta_twin, release_gathered, shard_like_student
from .gates import HeadGates
from .resume import RESUME_KEYS as _RESUME_KEYS  # noqa: F401  (its old name)
from .resume import PruningCheckpoints
from .steps import PruningSteps

logger = logging.get_logger(__name__)

PRUNING_STATE_NAME, L0_GATES_NAME = PRUNING_STATE_FILE, L0_GATES_FILE  # their first names


# ---- the trainer ---------------------------------------------------------------------------------------
def loss_counts_items(model: nn.Module) -> bool:
    """Whether the model's loss uses the `num_items_in_batch` the Trainer passes to a forward that takes **kwargs
    (transformers' causal-LM loss sums over the tokens and divides by it). A classification head's loss is the mean
    over its own micro-batch: told otherwise, the Trainer neither divides it by the gradient-accumulation steps
    (gradients come out that many times too large, and clipping bites that much earlier) nor leaves it unscaled
    under DDP (it multiplies it by the number of processes). Set `trainer.model_accepts_loss_kwargs` from this."""
    return type(model).__name__.endswith(("ForCausalLM", "LMHeadModel"))


class PruningTrainer(PruningSteps, PruningCheckpoints, Trainer):
    """A `Trainer` whose `train()` prunes: score -> prune -> recovery fine-tune, once or iteratively.

    Args:
        score_dataset: examples to score heads / neurons / layers on (default: the training set; never the
            evaluation set). At most `args.score_num_examples` are used.
        teacher_model: the distillation teacher (when `args.distills`); default: a copy of the model taken
            before the first pruning step.
        speed_timer: with `args.target_speedup`, how models are timed (`hfprune.measure.latency.Timer`); default
            `hfprune.measure_speed` on `args.device`, e.g. replace it to time in the runtime you deploy to.
        Everything else as in `transformers.Trainer`, except `model_init` and `optimizers` (an optimizer made
        before surgery cannot follow it; use `optimizer_cls_and_kwargs`).

    After `train()`, `pruning_history` holds one dict per pruning step (step 0: the model as given): `step`,
    `head_sparsity`, `ffn_sparsity`, `layer_sparsity`, `num_parameters`, `train_steps` and the eval metrics.
    Each entry is also sent through `self.log` (with `step` renamed `pruning_step`), so `report_to` sees it.
    `pruning_scores[step]` holds the scores (`{"heads" | "ffn": [num_layers, units]}`) that step ranked by, so
    a card or a plot can show them without scoring the model again. With `args.target_speedup`,
    `speedup_report` holds the target, predicted and measured speedups (`SpeedTarget.report`); with an allocated
    `args.target_param_budget`, `param_report` the budget, what was kept and each step's width choice
    (`ParamTarget.report`).

    A callback that sets `control.should_training_stop` when it sees a pruning step's log (the `pruning_step`
    key) ends the loop after that step: `hfprune.jobs.max_drop` stops this way once a step loses too much.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        args: PruningConfig | None = None,
        *trainer_args,
        score_dataset: Dataset | None = None,
        teacher_model: nn.Module | None = None,
        speed_timer: Timer | None = None,
        **kwargs,
    ):
        if args is None:
            args = PruningConfig(output_dir="trainer_output")
        if not isinstance(args, PruningConfig):
            raise PruningError(f"PruningTrainer needs PruningArguments, got {type(args).__name__}")
        if kwargs.get("model_init") is not None:
            raise PruningError("PruningTrainer does not support model_init: pass the model to prune")
        if any(item is not None for item in kwargs.get("optimizers", (None, None))):
            raise PruningError(
                "PruningTrainer builds a fresh optimizer after every pruning step; pass optimizer_cls_and_kwargs"
            )
        if model is None:
            raise PruningError("PruningTrainer needs the model to prune")
        get_adapter(model)  # unsupported families fail here, not after a long setup
        if args.reconstruct:  # as can a model reconstruction cannot refit
            check_reconstructable(model, model, args.reconstruct_method, DEFAULT_DAMPING)
        super().__init__(model, args, *trainer_args, **kwargs)
        self.model_accepts_loss_kwargs = self.model_accepts_loss_kwargs and loss_counts_items(model)
        self.score_dataset = score_dataset
        self.teacher_model = teacher_model
        self.pruning_history: list[dict[str, Any]] = []
        self.pruning_scores: dict[int, dict[str, torch.Tensor]] = {}  # the scores each pruning step ranked by
        self._stage: tuple[int, str] | None = None  # (pruning step, phase) being trained: where checkpoints go
        self._gates: HeadGates | None = None
        self._gates_grad_step: int | None = None  # the optimizer step whose gradient log_alpha.grad holds
        self._log_carry: list[dict[str, Any]] = []
        self._score_weight = 1  # examples this process scored: its weight in the cross-process average
        self.l0_gate_values: torch.Tensor | None = None  # L0 method: z_hat per head when the gates were final
        self.speed_timer = speed_timer
        self._speed: SpeedTarget | None = None
        self.speedup_report: dict[str, Any] | None = None
        self._budget: ParamTarget | None = None
        self.param_report: dict[str, Any] | None = None
        self.reconstruction_reports: list[dict[str, Any]] = []  # `args.reconstruct`: one report per pruning step

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        if self.args.fsdp and enable_on_cpu(self.accelerator, self.args.fsdp_plugin_args):
            self.is_fsdp_enabled = True  # on CPU processes accelerate drops the plugin (`hfprune.training.fsdp`)

    # ---- the outer loop ----------------------------------------------------------------------------------
    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
    ) -> TrainOutput:
        """Run every pruning step (score, prune, recover) and return the summed training output.

        `resume_from_checkpoint`: `True` (the latest complete checkpoint under `output_dir`) or a checkpoint
        path; the model given to the trainer must be the same original model as in the interrupted run.
        """
        if trial is not None:
            raise PruningError("PruningTrainer does not support hyperparameter search trials")
        args = self.args
        checkpoint = self._find_checkpoint(resume_from_checkpoint)
        state = self._read_pruning_state(checkpoint) if checkpoint else None

        targets = self._set_up_targets(state)

        if state is None:
            first_step, resume_phase = 1, None
            self.pruning_history = []
            self._record_step(0, train_steps=0, ignore_keys_for_eval=ignore_keys_for_eval)
        else:
            first_step, resume_phase = self._resume_from(checkpoint, state)

        step, last_step = first_step, max(args.num_pruning_steps, first_step)
        while step <= last_step:
            resuming = checkpoint if step == first_step else None
            set_seed(offset_seed(args.seed, step))  # each step's randomness is independent of how the run got there
            train_steps, losses = 0, 0.0
            if args.pruning_method == "l0":
                if resuming is None or resume_phase == "l0":
                    train_steps, losses = self._train_gates(step, resuming, state, ignore_keys_for_eval)
                    resuming = None
            elif resuming is None:
                try:
                    self._prune_step(step, targets)
                except TargetOutOfReachError as error:
                    if step <= args.num_pruning_steps:
                        raise
                    logger.warning(f"speed target missed: {error}")  # an extra step found nothing left to remove
                    break
            if args.reconstruct and resuming is None:  # a resumed phase's checkpoint holds the refitted weights
                self._reconstruct(step)
            if args.recovery_steps > 0 or args.recovery_epochs > 0:
                phase_steps, phase_losses = self._run_phase(
                    (step, "recovery"), args.recovery_epochs, args.recovery_steps, resuming, state, ignore_keys_for_eval
                )
                train_steps, losses = train_steps + phase_steps, losses + phase_losses
            elif args.save_strategy != "no":
                self._save_step_checkpoint(step)
            if self._speed is not None and self._speed.needs_more(self.model, step, args.num_pruning_steps) and step == last_step:
                last_step += 1  # measured short of the target: one more step, planned with the corrected latency
            self.control.should_training_stop = False  # the phase's own stop; a callback may set it again
            self._record_step(step, train_steps, losses, ignore_keys_for_eval)
            self._rotate_pruning_steps(step)
            if self.control.should_training_stop:
                break
            step += 1

        total_steps = sum(entry["train_steps"] for entry in self.pruning_history)
        total_loss = sum(entry.get("train_loss", 0.0) * entry["train_steps"] for entry in self.pruning_history)
        metrics = {key: value for key, value in self.pruning_history[-1].items() if key != "step"}
        metrics["train_loss"] = total_loss / max(total_steps, 1)
        self._stage = None
        if self._speed is not None:
            self.speedup_report, self._speed = self._speed.report(), None
        if self._budget is not None:
            self.param_report, self._budget = self._budget.report(self.model), None
        return TrainOutput(total_steps, metrics["train_loss"], metrics)

    def _set_up_targets(self, state: dict[str, Any] | None) -> dict[str, float]:
        """The teacher, and what the steps prune towards: the final sparsities (returned), or a parameter budget
        or a speed target (kept on the trainer, restored from a resumed run's `state`)."""
        args = self.args
        own_teacher = args.needs_teacher and self.teacher_model is None
        if own_teacher:
            self.teacher_model = copy.deepcopy(self.model)  # the unpruned model, before any restore or surgery
        if self.teacher_model is not None:
            self.teacher_model.to(args.device).eval().requires_grad_(False)
        if self.is_fsdp_enabled:  # the Trainer leaves placement to FSDP; scoring and surgery run on the whole model
            self.model.to(args.device)
        if args.allocates_param_budget:
            if state is None:
                check_unpruned(self.model, "target_param_budget")
            self._budget = ParamTarget(self.model, args, state and state.get("param_target"))
            targets = {}
        elif args.pruning_method == "l0":  # the gates' own target: checked where they are made
            if args.target_param_budget is not None and state is None:
                check_unpruned(self.model, "target_param_budget")
            check_head_target(self.model, args.target_head_sparsity)
            targets = {}
        else:
            targets = final_targets(args, self.model)
        if args.target_speedup is not None:  # measured on the model as given: the original, also when resuming
            dense = self.teacher_model if own_teacher else None  # a copy of the dense model already: time against it
            saved = state and state.get("speed_target")
            self._speed = SpeedTarget(self.model, args, self.speed_timer, saved, reference=dense)
        return targets

    def _train_gates(
        self, step: int, resuming: str | None, state: dict[str, Any] | None, ignore_keys_for_eval
    ) -> tuple[int, float]:
        """L0 phase: train hard-concrete gates with the penalty, then remove what the closed gates gate.

        Heads only, or, with `target_param_budget`, heads, FFN neurons and whole attention and MLP blocks on
        one parameter scale (CoFi), the Lagrangian pulling the expected parameters to the budget."""
        args = self.args
        budget = args.target_param_budget
        dense_parameters = num_parameters(self.model)
        self._gates = HeadGates(
            self.model,
            init_keep=args.l0_init_keep,
            l0_lambda=args.l0_lambda,
            warmup_steps=args.l0_warmup_steps,
            scale_attention_output=args.l0_scale_attention,
            target_sparsity=None if budget is not None else args.target_head_sparsity or None,
            ffn=budget is not None,
            blocks=budget is not None and not args.uniform,  # uniform shapes never remove a whole block
            param_budget=budget,
            uniform=args.uniform,
        ).attach(self.model)
        if resuming is not None:
            gates_state = torch.load(os.path.join(resuming, L0_GATES_FILE), map_location="cpu", weights_only=True)
            self._gates.load_state_dict(gates_state)
        try:
            output = self._run_phase((step, "l0"), args.l0_epochs, args.l0_steps, resuming, state, ignore_keys_for_eval)
            plan = self._gates.plan()
            self.l0_gate_values = self._gates.gate_values().cpu()
            expected, gated = float(self._gates.expected_sparsity().detach()), self._gates.dense_cost
            check_same_plan(plan)
            self._gates.finalize(self.model)
        finally:
            self._gates.detach()
            self._gates = None
        self._after_surgery()
        if budget is not None:
            parameters = num_parameters(self.model)
            self.param_report = {
                "method": "l0",
                "target_param_budget": budget,
                "dense_parameters": dense_parameters,
                "parameters": parameters,
                "kept_fraction": parameters / dense_parameters,
                "gated_parameters": gated,  # what the gates controlled: heads, FFN neurons and blocks
                "expected_gated_sparsity": expected,  # what the trained gates expected, before the final decision
                "prune_width": False,
                "steps": [],
            }
        return output

    def _run_phase(
        self,
        stage: tuple[int, str],
        epochs: float,
        steps: int,
        resuming: str | None,
        state: dict[str, Any] | None,
        ignore_keys_for_eval,
    ) -> tuple[int, float]:
        """One normal Trainer run (fresh optimizer and scheduler) whose checkpoints go to the stage's folder.

        Returns the phase's optimizer steps and the sum of their losses (a resumed phase adds the losses
        of the steps before the checkpoint, which `Trainer.train` leaves out of its `training_loss`).
        """
        self._stage = stage
        self._phase_loss_offset = state.get("phase_loss_sum", 0.0) if resuming is not None else 0.0
        saved = self.args.num_train_epochs, self.args.max_steps
        self.args.num_train_epochs, self.args.max_steps = epochs, (steps if steps > 0 else -1)
        self._log_carry = list(self.state.log_history)
        if self.accelerator.num_processes > 1 and self.model_wrapped is self.model:
            # `evaluate()` with no prepared model (before the first phase, or after surgery freed them) marks the bare
            # model `_is_accelerate_prepared`, and `prepare` would then train it WITHOUT DDP: ranks silently diverge
            self.model.__dict__.pop("_is_accelerate_prepared", None)
        try:
            with self._whole_between_phases(training=True):
                output = super().train(resume_from_checkpoint=resuming, ignore_keys_for_eval=ignore_keys_for_eval)
        finally:
            self.args.num_train_epochs, self.args.max_steps = saved
        steps_run = output.global_step - self._initial_global_step
        return output.global_step, self._phase_loss_offset + output.training_loss * steps_run

    @contextmanager
    def _whole_between_phases(self, training: bool) -> Iterator[None]:
        """With FSDP: a training phase (`training`: with the teacher sharded too) or an evaluation, in which the
        Trainer shards the student when it prepares it; after it, the student and the teacher are whole again on
        every rank (`hfprune.training.fsdp`), for the next step's scoring and surgery. Without FSDP, nothing."""
        if not self.is_fsdp_enabled:
            yield
            return
        student = meta_twin(self.model)
        teacher, teacher_twin = self.teacher_model if training else None, None
        if teacher is not None:
            teacher_twin = meta_twin(teacher)
            shard_like_student(self.accelerator, teacher)
        yield
        if training or is_sharded(self.model):
            self.model = gathered(self.model, student)
        if teacher is not None:
            self.teacher_model = gathered(teacher, teacher_twin)
            if self._speed is not None and self._speed.reference is teacher:
                self._speed.reference = self.teacher_model  # a speed target times against the trainer's own teacher
        self._after_surgery()

    def _reconstruct(self, step: int) -> None:
        """Refit the kept units layer by layer against the dense teacher, on the scoring examples (never eval).

        Every process fits on all of them (not its shard), so all ranks write the same weights."""
        if self.teacher_model is None:
            raise PruningError("reconstruct needs the dense model: pass teacher_model or let the trainer copy it")
        report = reconstruct(
            self.model, self.teacher_model, self._score_dataloader(shard=False), method=self.args.reconstruct_method
        )
        self.reconstruction_reports.append({"step": step, **report.to_dict()})
        logger.info(
            f"Pruning step {step}: reconstructed {len(report.blocks)} blocks in {report.seconds:.1f} s, mean relative "
            f"block error {report.mean_error_before:.4f} -> {report.mean_error_after:.4f}"
        )

    def _after_surgery(self) -> None:
        """Forget everything built on the old parameters: optimizer, scheduler, DDP wrapper, accelerate's lists."""
        self.optimizer, self.lr_scheduler = None, None
        self.model_wrapped = self.model
        self.accelerator.free_memory()
        for attr in ("model", "optimizer", "lr_scheduler"):
            setattr(self.callback_handler, attr, getattr(self, attr))
        gc.collect()

    def _record_step(
        self, step: int, train_steps: int, losses: float = 0.0, ignore_keys_for_eval: list[str] | None = None
    ) -> None:
        entry: dict[str, Any] = {"step": step, **sparsities(self.model)}
        entry["num_parameters"] = num_parameters(self.model)
        if self._speed is not None:
            entry["predicted_speedup"] = self._speed.latency.speedup(self.model)
            measured = [m for m in self._speed.measurements if m["step"] == step]
            if measured:
                entry["measured_speedup"] = measured[-1]["measured_speedup"]
        entry["train_steps"] = train_steps
        if train_steps:
            entry["train_loss"] = losses / train_steps
        if self.eval_dataset is not None:
            with self._whole_between_phases(training=False):
                metrics = self.evaluate(ignore_keys=ignore_keys_for_eval)
            entry.update({key: value for key, value in metrics.items() if key.startswith("eval_")})
        self.pruning_history.append(entry)
        logs = {("pruning_step" if key == "step" else key): value for key, value in entry.items()}
        self.log(logs)

    # ---- scores (what a pruning step ranks by) ----------------------------------------------------------
    def _unit_scores(self, kinds: list[str], step: int) -> dict[str, torch.Tensor]:
        """Scores of `kinds` ("heads", "ffn") by `pruning_method`, identical on every process."""
        method, model = self.args.pruning_method, self.model
        if method in DATA_FREE_METHODS:  # random is seeded, so every process draws the same numbers
            return score_units(model, method, kinds, seed=offset_seed(self.args.seed, step))
        # gradient scores: each process scores its shard, unnormalised; average first, then normalise
        scores = score_units(model, method, kinds, self._score_dataloader(), normalize=False)
        scores = {kind: average_over_processes(value, self._score_weight, self.args.device) for kind, value in scores.items()}
        # Michel et al. normalise each layer before ranking globally; a speed target compares kinds on one loss scale
        if method in PER_LAYER_NORMALIZED_METHODS and self._speed is None and self._budget is None:
            scores = {kind: normalize_per_layer(value) for kind, value in scores.items()}
        return scores

    def _score_dataloader(self, shard: bool = True) -> DataLoader:
        """Up to `score_num_examples` examples of `score_dataset` (else the train set), this process's share
        (`shard=False`: all of them)."""
        dataset = self.score_dataset if self.score_dataset is not None else self.train_dataset
        if dataset is None:
            raise PruningError(
                f"pruning_method={self.args.pruning_method!r} needs data: pass score_dataset or train_dataset"
            )
        limit = self.args.score_num_examples
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
            dataset = list(itertools.islice(iter(dataset), limit))
        generator = torch.Generator().manual_seed(self.args.seed)
        indices = sorted(torch.randperm(len(dataset), generator=generator)[:limit].tolist())
        world, rank = self.args.world_size, self.args.process_index
        if shard and world > 1 and len(indices) >= world:
            indices = indices[rank::world]
        if shard:
            self._score_weight = len(indices)
        import datasets

        if isinstance(dataset, datasets.Dataset):
            subset = self._remove_unused_columns(dataset.select(indices), description="scoring")
            collator = self.data_collator
        else:
            subset = Subset(dataset, indices)
            collator = self._get_collator_with_removed_columns(self.data_collator, description="scoring")
        return DataLoader(subset, batch_size=self.args.per_device_eval_batch_size, collate_fn=collator)

    # ---- losses ----------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The task loss, mixed with the distillation terms and plus the L0 penalty while training."""
        args = self.args
        distilling = model.training and self.teacher_model is not None
        by_layer = distilling and args.distillation_layer_weight > 0
        with layer_outputs(self.model) if by_layer else nullcontext() as student_states:
            loss, outputs = super().compute_loss(
                model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
            )
        if not model.training:
            return (loss, outputs) if return_outputs else loss
        extra = None
        if distilling and (args.distillation_alpha > 0 or by_layer):
            loss = (1 - args.distillation_alpha) * loss
            extra = self._distillation_terms(inputs, outputs, student_states)
        if self._gates is not None:
            penalty = self._gates.penalty(self.state.global_step)
            extra = penalty if extra is None else extra + penalty
        if extra is not None:
            # the task loss may already be normalised over the whole accumulated batch; these terms are per batch
            scaled = self.loss_is_scaled_for_ga
            if scaled is None:
                scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or (
                    self.compute_loss_func is not None
                )
            if scaled:
                extra = extra / self.current_gradient_accumulation_steps
            loss = loss + extra.to(loss.device)
        return (loss, outputs) if return_outputs else loss

    def _distillation_terms(self, inputs: dict[str, Any], outputs, student_states: dict | None) -> torch.Tensor:
        """alpha * the logit term, plus distillation_layer_weight * the layer-wise term; the teacher runs once."""
        args = self.args
        capture = layer_outputs(self.teacher_model) if student_states is not None else nullcontext()
        with torch.no_grad(), capture as teacher_states:
            teacher_logits = self.teacher_model(**teacher_inputs(inputs)).logits
        if self.is_fsdp_enabled:
            release_gathered(self.teacher_model)
        student_logits = outputs["logits"] if isinstance(outputs, dict) else outputs[1]
        mask = inputs.get("attention_mask")
        terms = torch.zeros((), device=student_logits.device)
        if args.distillation_alpha > 0:  # a decoder's KL spans the vocabulary at every token: skip it when unweighted
            terms = args.distillation_alpha * logit_distillation_loss(
                teacher_logits, student_logits, mask, args.distillation_temperature
            )
        if student_states is not None:
            pairs, channels = layer_pairs(self.model, self.teacher_model)
            layer_term = layer_distillation_loss(student_states, teacher_states, pairs, channels, mask)
            terms = terms + args.distillation_layer_weight * layer_term.to(terms.device)
        return terms

    def training_step(self, model, inputs, num_items_in_batch=None):
        gates = self._gates
        if gates is not None and self._gates_grad_step != self.state.global_step:
            # the Trainer zeroes only the model's gradients: start each optimizer step's gate gradient afresh
            for parameter in (*gates.gate_parameters(), gates.lagrangian):
                parameter.grad = None
            self._gates_grad_step = self.state.global_step
        loss = super().training_step(model, inputs, num_items_in_batch)
        if gates is not None and is_distributed():
            # the gates are not part of the DDP module: average their gradient by hand
            for parameter in gates.gate_parameters():
                if parameter.grad is not None:
                    torch.distributed.all_reduce(parameter.grad)
                    parameter.grad /= torch.distributed.get_world_size()
        return loss

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        gates = self._gates
        held = (p for group in optimizer.param_groups for p in group["params"])
        if gates is not None and not any(p is gates.log_alpha for p in held):
            optimizer.add_param_group({"params": gates.gate_parameters(), "weight_decay": 0.0, "lr": self.args.l0_learning_rate})
            if gates.target_sparsity is not None:  # the Lagrange multipliers climb the loss (CoFi)
                optimizer.add_param_group(
                    {"params": [gates.lagrangian], "weight_decay": 0.0, "lr": self.args.l0_learning_rate, "maximize": True}
                )
        return optimizer

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._gates is not None and "loss" in logs:  # L0 phase: how many heads the gates still expect to keep
            logs["l0_expected_heads"] = float(self._gates.expected_l0().detach())
            if self._gates.param_budget is not None:  # and the expected fraction of the gated parameters removed
                logs["l0_expected_sparsity"] = float(self._gates.expected_sparsity().detach())
        super().log(logs, start_time)

    # ---- model card ------------------------------------------------------------------------------------
    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
    ) -> None:
        """Write hfprune's card (what was removed, surviving heads, before/after metrics, how to load it) to
        `output_dir/README.md` instead of transformers' generic one, so `push_to_hub()` uploads it.

        The base model is `finetuned_from` (a Hub id) or the model's `_name_or_path`; the metrics are those of
        `pruning_history` (step 0 = before pruning); `dataset_args` or `dataset` naming a GLUE task (e.g.
        "sst2") becomes the card's task. `language`, `tasks` and `dataset_tags` are not used.
        """
        if not self.is_world_process_zero():
            return

        def first(value: str | list[str] | None) -> str | None:
            return value[0] if isinstance(value, (list, tuple)) and value else (value or None)

        model = self.accelerator.unwrap_model(self.model)
        args = self.args
        before, after = metrics_from_history(self.pruning_history)
        write_model_card(
            model,
            args.output_dir,
            base_model=getattr(model.config, "_name_or_path", None) or None,
            base_model_id=finetuned_from,
            task=first(dataset_args) or first(dataset),
            metrics_before=before,
            metrics_after=after,
            repo_id=self.hub_model_id or model_name,
            pruning=args.card_settings(),
            base_num_parameters=self.pruning_history[0]["num_parameters"] if self.pruning_history else None,
            license=license,
            tags=[tags] if isinstance(tags, str) else tags,
        )

__all__ = [
    "PRUNING_METHODS",
    "PRUNING_SCHEDULES",
    "PruningArguments",
    "PruningConfig",
    "PruningTrainer",
    "final_targets",
    "loss_counts_items",
    "restore_structure",
]
