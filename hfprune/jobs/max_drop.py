"""`prune_for_task(max_drop=D)`: the fastest model whose metric stays within D points of the dense model.

The run is an iterative speed-target run (`target_speedup`, each step faster than the last) evaluated after
every step on a SELECTION slice carved from the training examples, never on the reported dev split.
`KeepFastestWithinDrop` watches those evaluations: it keeps a copy of the latest step within D points of the
dense model's selection score, and stops the run at the first step that falls further (later steps only
remove more). The kept model is then evaluated on dev like any other, so the dev numbers played no part in
choosing it.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn
from transformers import TrainerCallback

from ..constants import MAX_DROP_CEILING as DEFAULT_CEILING  # the run's defaults, read by the CLI's help too
from ..constants import MAX_DROP_STEPS as DEFAULT_STEPS
from ..errors import PipelineInputError, TargetOutOfReachError, first_line
from .finetune import validation_slice


def selection_split(train, seed: int):
    """`(train, selection)`: the examples recovery trains on, and the held-out slice models are chosen on."""
    return validation_slice(train, seed + 2)


class KeepFastestWithinDrop(TrainerCallback):
    """Keep the latest pruning step whose `eval_{metric}` is within `max_drop` points of step 0 (the dense model).

    Scores are fractions (accuracy 0.83), points are hundredths (1 point = 0.01). `greater_is_better=False`
    for losses. The first step that misses stops `PruningTrainer`'s loop.
    """

    def __init__(self, metric: str, max_drop: float, greater_is_better: bool = True):
        self.key, self.max_drop, self.sign = f"eval_{metric}", max_drop, 1.0 if greater_is_better else -1.0
        self.dense: float | None = None
        self.chosen_step = 0
        self.chosen_model: nn.Module | None = None
        self.steps: list[dict[str, Any]] = []

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if not logs or "pruning_step" not in logs or self.key not in logs:
            return
        step, value = logs["pruning_step"], logs[self.key]
        if step == 0:
            self.dense = value
            return
        drop = self.sign * (self.dense - value) * 100
        within = drop <= self.max_drop + 1e-9  # 2 of 200 examples is 1.0000000000000009 points in floats
        self.steps.append({"step": step, "selection_metric": value, "drop_points": drop, "within": within})
        if within:
            self.chosen_step, self.chosen_model = step, copy.deepcopy(model).cpu()
        else:
            control.should_training_stop = True

    def summary(self, num_examples: int) -> dict[str, Any]:
        return {
            "max_drop_points": self.max_drop,
            "metric": self.key.removeprefix("eval_"),
            "selection_examples": num_examples,
            "dense_selection_metric": self.dense,
            "chosen_step": self.chosen_step,
            "steps": self.steps,
            "protocol": f"the fastest pruning step whose {self.key.removeprefix('eval_')} on {num_examples:,} held-out "
            f"training examples stayed within {self.max_drop:g} point{'' if self.max_drop == 1 else 's'} of the dense "
            "model's; the dev split was not used to choose it",
        }


def ceiling_out_of_reach(error: TargetOutOfReachError, max_drop: float, ceiling: float, steps: int) -> PipelineInputError:
    """A max-drop run whose speed ceiling is out of reach, said in the terms of the run asked for: the search
    prunes towards `ceiling` (the user may never have given a target_speedup), and the drop allowed is not what
    stopped it."""
    reason = first_line(error)
    reason = reason.split(": ", 1)[1] if reason.startswith("target_speedup=") and ": " in reason else reason
    return PipelineInputError(
        f"max_drop={max_drop:g} searches {steps} ever faster pruning steps up to target_speedup={ceiling:g} (its "
        f"ceiling, default {DEFAULT_CEILING:g}), and this model cannot be pruned that far ({reason}); the drop allowed "
        "is not the limit: give a lower target_speedup with max_drop",
        cli_message=f"--max-drop {max_drop:g} searches {steps} ever faster pruning steps up to a {ceiling:g}x speedup "
        f"(--speedup, default {DEFAULT_CEILING:g}), and this model cannot be pruned that far ({reason}); the "
        f"{max_drop:g} points allowed are not the limit: give a lower --speedup with --max-drop",
    )


__all__ = ["DEFAULT_CEILING", "DEFAULT_STEPS", "KeepFastestWithinDrop", "ceiling_out_of_reach", "selection_split"]
