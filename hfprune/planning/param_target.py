"""`PruningArguments(target_param_budget=b)` without a sparsity mix: the most important model with b of the parameters.

`ParamTarget` is what `PruningTrainer` keeps for such a budget. Parameters are linear in the kept heads (or KV
groups), FFN neurons and layers at a fixed width, so the allocation that spends a time budget spends a
parameter budget too: `parameter_cost_model` is a `LatencyModel` whose unit is parameters, measured exactly by
counting them in the same pruned copies a latency model is timed on, and `calibrated_allocation` removes the
units with the least importance per parameter, across kinds on one measured loss scale.

The residual-stream width is not linear with the rest (a channel costs less once heads and neurons are gone),
so with `prune_width` it is searched, as Minitron searches its candidate architectures: each width in
`WIDTH_FRACTIONS` of the current one (the least important channels by `hidden_importance` go) gets its own
calibrated allocation of the rest of the budget, and the candidate whose whole plan, applied to a copy, loses
least on the scoring data is kept. The candidates and their losses go into `report()`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..engine.masks import (
    apply_masks,
    make_ffn_mask,
    make_head_mask,
    make_layer_mask,
)
from ..engine.record import get_record, kept_hidden
from ..errors import PruningError, TargetOutOfReachError
from ..measure.latency import LatencyModel, measure_latency_model
from ..scoring.common import _mean_loss, _scoring_mode
from .allocation import calibrated_allocation
from .plan import _num_parameters as num_parameters

WIDTH_FRACTIONS = (1.0, 0.875, 0.75, 0.625, 0.5)
"""The residual-stream widths tried at each step, as fractions of the width the model has then."""


def _count(models) -> dict[str, float]:
    return {name: float(num_parameters(model)) for name, model in models.items()}


def parameter_cost_model(model: nn.Module) -> LatencyModel:
    """A `LatencyModel` of `model` in parameters instead of seconds: exact, since parameters are linear in the counts."""
    return measure_latency_model(model, batch_size=0, seq_len=0, timer=_count)


def _channels_to_remove(model: nn.Module, hidden_scores: torch.Tensor, keep: int) -> list[int]:
    """The least important of the current channels (original indices), all but `keep` of them."""
    current = kept_hidden(get_record(model), model.config)
    ranked = sorted(current, key=lambda channel: float(hidden_scores[channel].nan_to_num(0.0)))
    return sorted(ranked[: len(current) - keep])


def _masked_loss(model: nn.Module, plan: dict[str, Any], dataloader) -> float:
    """The loss on `dataloader` of `model` with `plan`'s heads, neurons and layers masked out."""
    masks = {
        "head_mask": make_head_mask(model, plan["heads"]),
        "ffn_mask": make_ffn_mask(model, plan["ffn"]),
        "layer_mask": make_layer_mask(model, plan["layers"]),
    }
    with _scoring_mode(model), apply_masks(model, **masks):
        return float(_mean_loss(model, dataloader))


class ParamTarget:
    """The step budgets, plans and width choices of one `target_param_budget` run without a sparsity mix."""

    def __init__(self, model: nn.Module, args, state: dict[str, Any] | None = None):
        self.budget = float(args.target_param_budget)
        self.prune_width = bool(args.prune_width)
        self.multiple = args.round_to_multiple
        self.dense_parameters = state["dense_parameters"] if state else num_parameters(model)
        self.steps: list[dict[str, Any]] = list(state["steps"]) if state else []

    def step_parameters(self, step: int, num_steps: int) -> int:
        """The parameters pruning step `step` brings the model down to: an equal share of the cut per step."""
        return round(self.dense_parameters * (1 - (1 - self.budget) * min(step / num_steps, 1.0)))

    def _widths(self, model: nn.Module, parameters: int) -> list[int | None]:
        """Kept channel counts to try (None: the width as it is); a width alone below the budget is not tried."""
        if not self.prune_width:
            return [None]
        width = len(kept_hidden(get_record(model), model.config))
        widths = []
        for fraction in WIDTH_FRACTIONS:
            keep = max(self.multiple, round(width * fraction / self.multiple) * self.multiple)
            if keep not in widths and keep <= width:
                widths.append(keep)
        return [None if keep == width else keep for keep in widths]

    def plan(
        self, model: nn.Module, scores: dict[str, torch.Tensor], parameters: int, dataloader=None, weight: int = 1
    ) -> dict[str, Any]:
        """The plan that brings `model` to `parameters`: `"hidden"` (channels, original indices) and the usual
        `"layers"`, `"heads"`, `"ffn"`; with `prune_width`, `scores` needs `"hidden"` and `dataloader`."""
        if self.prune_width and ("hidden" not in scores or dataloader is None):
            raise PruningError("prune_width needs 'hidden' scores and scoring data to choose a width")
        widths = self._widths(model, parameters)
        candidates = []
        for keep in widths:
            candidate, channels = model, []
            if keep is not None:
                channels = _channels_to_remove(model, scores["hidden"], keep)
                candidate = copy.deepcopy(model)
                try:
                    from ..engine.hidden import prune_hidden

                    prune_hidden(candidate, channels)
                except PruningError:  # a width this family cannot express (e.g. heads tied to the width)
                    continue
                if num_parameters(candidate) < parameters:
                    continue  # the width alone would overshoot the budget
            try:
                plan = calibrated_allocation(
                    candidate, scores, parameter_cost_model(candidate), parameters, dataloader,
                    ffn_multiple=self.multiple, weight=weight,
                )  # fmt: skip
            except TargetOutOfReachError:
                continue
            plan["hidden"] = channels
            plan["hidden_size"] = len(kept_hidden(get_record(candidate), candidate.config))
            if len(widths) > 1:
                plan["loss"] = _masked_loss(candidate, plan, dataloader)
            candidates.append(plan)
            del candidate
        if not candidates:
            raise TargetOutOfReachError(
                f"target_param_budget={self.budget:g} is out of reach: no structure of this model keeps only "
                f"{parameters:,} of its {self.dense_parameters:,} parameters"
            )
        best = min(candidates, key=lambda plan: plan.get("loss", 0.0))
        self.steps.append(
            {
                "target_parameters": parameters,
                "predicted_parameters": round(best["predicted_seconds"]),
                "hidden_size": best["hidden_size"],
                "candidates": [{"hidden_size": plan["hidden_size"], "loss": plan.get("loss")} for plan in candidates],
                "calibration": best.get("calibration"),
            }
        )
        return best

    def state(self) -> dict[str, Any]:
        return {"dense_parameters": self.dense_parameters, "steps": self.steps}

    def report(self, model: nn.Module) -> dict[str, Any]:
        """The budget, what the final `model` keeps, and how each step chose its width."""
        parameters = num_parameters(model)
        return {
            "target_param_budget": self.budget,
            "dense_parameters": self.dense_parameters,
            "parameters": parameters,
            "kept_fraction": parameters / self.dense_parameters,
            "hidden_size": len(kept_hidden(get_record(model), model.config)),
            "prune_width": self.prune_width,
            "steps": list(self.steps),
        }


__all__ = ["WIDTH_FRACTIONS", "ParamTarget", "parameter_cost_model"]
