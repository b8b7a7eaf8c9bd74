"""Where `PruningTrainer` checkpoints each pruning step, and how a killed run resumes from them.

Checkpoints of step `k` live in `output_dir/pruning-step-{k}/checkpoint-*` (`pruning-step-1-l0/` for the gate
training) with a `pruning_state.json` next to the Trainer's files: the step and phase, the pruning history so
far, the loss of the phase so far, the arguments that define what the run prunes (`RESUME_KEYS`) and the state
of a speed target or a parameter budget. Resuming rebuilds the pruned structure recorded in the checkpoint's
`config.json` on the original model BEFORE the weights load, then lets the Trainer restore weights, optimizer,
scheduler and RNG states, so a killed run continues exactly where it stopped.

`PruningCheckpoints` is a mixin of `PruningTrainer` (it reads the trainer's `_stage`, `_speed`, `_budget`,
`_gates` and `pruning_history`), kept apart from the pruning loop as the Trainer keeps its own checkpointing apart
from its training loop.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from ..constants import L0_GATES_FILE, PRUNING_PHASES, PRUNING_STATE_FILE
from ..engine.restore import restore_structure
from ..errors import PruningError
from ..io.rundir import latest_pruning_checkpoint

logger = logging.get_logger(__name__)

# Arguments that define what a run prunes: a checkpoint made with other values cannot be resumed.
RESUME_KEYS = (
    "pruning_method", "pruning_schedule", "pruning_steps", "target_head_sparsity", "target_ffn_sparsity",
    "target_layer_sparsity", "target_param_budget", "layer_strategy", "per_layer_ranking", "round_to_multiple",
    "round_heads_to_multiple", "target_speedup", "speedup_batch_size", "speedup_seq_len", "prune_width",
)  # fmt: skip


class PruningCheckpoints:
    """`PruningTrainer`'s checkpoints: one folder per pruning step and phase, each with its `pruning_state.json`."""

    def _resume_from(self, checkpoint: str, state: dict[str, Any]) -> tuple[int, str]:
        """Rebuild the checkpoint's structure, load its weights and Trainer state; the step and phase it was in."""
        self.pruning_history = state["history"]
        with open(os.path.join(checkpoint, "config.json")) as handle:
            record = json.load(handle).get("hfprune")
        if record:
            restore_structure(self.model, record)  # the structure first: then the weights fit
        self._load_from_checkpoint(checkpoint)  # also when no training phase resumes (e.g. no recovery)
        self._after_surgery()
        self.state = TrainerState.load_from_json(os.path.join(checkpoint, "trainer_state.json"))
        logger.info(f"Resuming pruning step {state['pruning_step']} ({state['phase']}) from {checkpoint}")
        return state["pruning_step"], state["phase"]

    def _get_output_dir(self, trial) -> str:
        run_dir = super()._get_output_dir(trial)
        if self._stage is None:
            return run_dir
        step, phase = self._stage
        return os.path.join(run_dir, f"pruning-step-{step}" + ("-l0" if phase == "l0" else ""))

    def _init_training_state(
        self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
    ):
        result = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
        )
        if resume_from_checkpoint is None:  # a resumed state already holds the earlier steps' logs
            self.state.log_history = self._log_carry + self.state.log_history
        return result

    def _pruning_state(self) -> dict[str, Any]:
        step, phase = self._stage
        return {
            "pruning_step": step,
            "phase": phase,
            "history": self.pruning_history,
            # losses of this phase so far (steps before a resume included), for the step's train_loss
            "phase_loss_sum": getattr(self, "_phase_loss_offset", 0.0)
            + getattr(self, "_total_loss_scalar", 0.0)
            + float(getattr(self, "_tr_loss", 0.0)),
            "arguments": {key: getattr(self.args, key) for key in RESUME_KEYS},
            **({"speed_target": self._speed.state()} if self._speed is not None else {}),
            **({"param_target": self._budget.state()} if self._budget is not None else {}),
        }

    def _save_checkpoint(self, model, trial) -> None:
        # pruning_state.json goes first: the Trainer writes trainer_state.json last, which marks a complete checkpoint
        folder = os.path.join(self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save:
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, PRUNING_STATE_FILE), "w") as handle:
                json.dump(self._pruning_state(), handle, indent=2)
            if self._gates is not None:
                torch.save(self._gates.state_dict(), os.path.join(folder, L0_GATES_FILE))
        super()._save_checkpoint(model, trial)

    def _save_step_checkpoint(self, step: int) -> None:
        """Without recovery training the Trainer saves nothing: checkpoint the pruned model so a resume finds it."""
        self._stage = (step, "recovery")
        folder = os.path.join(self._get_output_dir(None), f"{PREFIX_CHECKPOINT_DIR}-0")
        if self.args.should_save:
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, PRUNING_STATE_FILE), "w") as handle:
                json.dump(self._pruning_state(), handle, indent=2)
            self.save_model(folder, _internal_call=True)
            state = TrainerState(log_history=list(self.state.log_history))
            state.save_to_json(os.path.join(folder, "trainer_state.json"))  # last: marks the checkpoint complete
        self.accelerator.wait_for_everyone()

    def _rotate_pruning_steps(self, step: int) -> None:
        """With `save_total_limit`, a finished step's checkpoints make the earlier steps' ones useless."""
        if not self.args.save_total_limit or not self.args.should_save:
            return
        current = Path(self._get_output_dir_for(step, "recovery"))
        if not any((path / "trainer_state.json").is_file() for path in current.glob(f"{PREFIX_CHECKPOINT_DIR}-*")):
            return
        for earlier in range(1, step + 1):
            for phase in PRUNING_PHASES:
                if (earlier, phase) != (step, "recovery"):
                    shutil.rmtree(self._get_output_dir_for(earlier, phase), ignore_errors=True)

    def _get_output_dir_for(self, step: int, phase: str) -> str:
        saved, self._stage = self._stage, (step, phase)
        try:
            return self._get_output_dir(None)
        finally:
            self._stage = saved

    def _find_checkpoint(self, resume_from_checkpoint: str | bool | None) -> str | None:
        """The checkpoint to resume: the given path, or (True) the latest complete one under output_dir."""
        if resume_from_checkpoint is None or resume_from_checkpoint is False:
            return None
        if resume_from_checkpoint is not True:
            path = str(resume_from_checkpoint)
            if not os.path.isfile(os.path.join(path, PRUNING_STATE_FILE)):
                raise PruningError(f"{path} is not a PruningTrainer checkpoint (no {PRUNING_STATE_FILE})")
            return path
        found = latest_pruning_checkpoint(self.args.output_dir)
        if found is None:
            raise PruningError(f"no complete PruningTrainer checkpoint found in {self.args.output_dir}")
        return found

    def _read_pruning_state(self, checkpoint: str) -> dict[str, Any]:
        with open(os.path.join(checkpoint, PRUNING_STATE_FILE)) as handle:
            state = json.load(handle)
        mine = {key: getattr(self.args, key) for key in RESUME_KEYS}
        differ = [key for key in RESUME_KEYS if state["arguments"].get(key) != mine[key]]
        if differ:
            raise PruningError(
                f"{checkpoint} was made with other pruning arguments ({', '.join(differ)}); cannot resume"
            )
        return state


__all__ = ["RESUME_KEYS", "PruningCheckpoints"]
