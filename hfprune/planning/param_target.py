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
least on the scoring data is kept. When no such width can reach the budget (embeddings that outweigh every layer:
one fraction too wide for the rest to make up, the next narrower than the budget alone), the width that alone
meets it is found and tried. The candidates and their losses go into `report()`.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from ..engine.hidden import prune_hidden
from ..engine.masks import (
    apply_masks,
    make_ffn_mask,
    make_head_mask,
    make_layer_mask,
)
from ..engine.record import get_record, kept_hidden
from ..errors import PruningError, TargetOutOfReachError
from ..measure.latency import LatencyModel, measure_latency_model
from ..measure.sparsity import num_parameters
from ..scoring.common import mean_loss, scoring_mode
from .allocation import calibrated_allocation

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
    with scoring_mode(model), apply_masks(model, **masks):
        return float(mean_loss(model, dataloader))


class ParamTarget:
    """The step budgets, plans and width choices of one `target_param_budget` run without a sparsity mix."""

    def __init__(self, model: nn.Module, args, state: dict[str, Any] | None = None):
        self.budget = float(args.target_param_budget)
        self.prune_width = bool(args.prune_width)
        self.multiple = args.round_to_multiple
        self.uniform = bool(args.uniform)  # the same heads and FFN width in every kept layer
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

    def _narrowed(self, model: nn.Module, hidden_scores: torch.Tensor, keep: int | None) -> tuple[nn.Module, list[int]] | None:
        """`(model cut to keep channels, the channels removed)`; `model` itself for None; None where this family
        cannot express the width (e.g. heads tied to it)."""
        if keep is None:
            return model, []
        channels = _channels_to_remove(model, hidden_scores, keep)
        candidate = copy.deepcopy(model)
        try:
            prune_hidden(candidate, channels)
        except PruningError:
            return None
        return candidate, channels

    def _width_alone(self, model: nn.Module, hidden_scores: torch.Tensor, parameters: int, counts: dict[int, int]) -> int | None:
        """The narrowest width (a multiple of `round_to_multiple`) whose model still has at least `parameters`
        before anything else goes: the width that alone spends the cut. A budget that only the width can reach
        (embeddings that outweigh every layer) falls between the fixed `WIDTH_FRACTIONS`: one is too wide for the
        layers, heads and neurons to make up the rest, the next narrower than the budget. Found by interpolating
        the parameter counts (near linear in the width; `counts`: width -> count, those known), each guess
        counted on a pruned copy. None when it is the current width or the family cannot cut its width."""
        multiple = self.multiple
        above = [keep for keep, count in counts.items() if count >= parameters]
        if not above:  # the model is already within the budget
            return None
        hi = min(above)
        below = [keep for keep, count in counts.items() if count < parameters]
        lo = max(below) if below else 0  # 0: an estimate of no parameters at no width, never counted
        while True:
            low, high = (lo // multiple + 1) * multiple, ((hi - 1) // multiple) * multiple  # the grid strictly between
            if low > high:
                break
            count_lo = counts[lo] if lo else 0
            guess = lo + (parameters - count_lo) * (hi - lo) / max(counts[hi] - count_lo, 1)
            keep = min(max(math.ceil(guess / multiple) * multiple, low), high)
            narrowed = self._narrowed(model, hidden_scores, keep)
            if narrowed is None:
                return None
            counts[keep] = num_parameters(narrowed[0])
            del narrowed
            if counts[keep] >= parameters:
                hi = keep
            else:
                lo = keep
        return None if hi == max(counts) else hi

    def _candidate(
        self, model: nn.Module, scores: dict[str, torch.Tensor], keep: int | None, parameters: int, dataloader,
        weight: int, counts: dict[int, int], rank: bool,
    ) -> dict[str, Any] | None:
        """The plan at width `keep`: the channels, and the allocation of the rest of the budget (with its masked loss
        when `rank`); None where the width cannot be cut, overshoots the budget alone, or leaves it out of reach."""
        narrowed = self._narrowed(model, scores.get("hidden"), keep)
        if narrowed is None:
            return None
        candidate, channels = narrowed
        width = len(kept_hidden(get_record(candidate), candidate.config))
        counts[width] = num_parameters(candidate)
        if counts[width] < parameters:
            return None  # the width alone would overshoot the budget
        try:
            plan = calibrated_allocation(
                candidate, scores, parameter_cost_model(candidate), parameters, dataloader,
                ffn_multiple=self.multiple, weight=weight, uniform=self.uniform,
            )  # fmt: skip
        except TargetOutOfReachError:
            return None
        plan["hidden"] = channels
        plan["hidden_size"] = width
        if rank:
            plan["loss"] = _masked_loss(candidate, plan, dataloader)
        return plan

    def plan(
        self, model: nn.Module, scores: dict[str, torch.Tensor], parameters: int, dataloader=None, weight: int = 1
    ) -> dict[str, Any]:
        """The plan that brings `model` to `parameters`: `"hidden"` (channels, original indices) and the usual
        `"layers"`, `"heads"`, `"ffn"`; with `prune_width`, `scores` needs `"hidden"` and `dataloader`.

        With `prune_width` the candidates are the widths of `WIDTH_FRACTIONS`, the least masked loss winning; when
        none of them can reach the budget, the width that alone meets it (`_width_alone`) is tried, so a budget
        that some width reaches is reached."""
        if self.prune_width and ("hidden" not in scores or dataloader is None):
            raise PruningError("prune_width needs 'hidden' scores and scoring data to choose a width")
        widths = self._widths(model, parameters)
        counts: dict[int, int] = {}  # width -> parameters of the model cut to it
        candidates = []
        for keep in widths:
            plan = self._candidate(model, scores, keep, parameters, dataloader, weight, counts, rank=self.prune_width)
            if plan is not None:
                candidates.append(plan)
        if self.prune_width and counts and not candidates:  # the budget falls between two of the fixed widths
            keep = self._width_alone(model, scores["hidden"], parameters, counts)
            if keep is not None and keep not in {plan["hidden_size"] for plan in candidates}:
                plan = self._candidate(model, scores, keep, parameters, dataloader, weight, counts, rank=True)
                if plan is not None:
                    candidates.append(plan)
        if not candidates:
            raise TargetOutOfReachError(
                f"target_param_budget={self.budget:g} is out of reach: no structure of this model keeps only "
                f"{parameters:,} of its {self.dense_parameters:,} parameters"
                + (f" (widths tried: {', '.join(map(str, sorted(counts, reverse=True)))})" if self.prune_width and counts else "")
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
