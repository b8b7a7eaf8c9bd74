"""What one pruning step of `PruningTrainer` removes, and the surgery that removes it.

A step goes to its share of the targets (`hfprune.planning.plan.step_targets`): layers first (by
`layer_strategy`), then heads and FFN neurons ranked by `pruning_method`. A speed target (`SpeedTarget`) or an
allocated parameter budget (`ParamTarget`) instead removes, across layers, heads, FFN neurons (and hidden
channels) at once, what costs least importance per second or per parameter saved. Every process plans the same
units (`check_same_plan`) before any weight is sliced.

`PruningSteps` is a mixin of `PruningTrainer`: it reads the trainer's arguments, model, scores
(`_unit_scores`, `_score_dataloader`) and targets (`_speed`, `_budget`), and resets the optimizer after surgery
(`_after_surgery`).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.utils import logging

from ..distributed import average_over_processes, check_same_plan
from ..engine.apply_plan import apply_plan
from ..engine.record import get_record, gqa_group_size, kept_ffn
from ..engine.surgery import drop_layers, prune_ffn, prune_heads
from ..measure.sparsity import num_parameters
from ..planning.plan import (
    ffn_to_prune,
    heads_to_prune,
    layers_to_drop,
    plan_to_goal,
    round_half_up,
    sparsities,
    step_targets,
)
from ..planning.uniform import uniform_counts
from ..scoring.activations import hidden_importance
from ..scoring.loss import layer_ablation_scores
from ..scoring.similarity import layer_cosine_scores

logger = logging.get_logger(__name__)


class PruningSteps:
    """`PruningTrainer`'s pruning steps: plan what goes, check every process agrees, slice it out."""

    def _prune_step(self, step: int, targets: dict[str, float]) -> dict[str, Any]:
        """Drop layers, then score and prune heads and FFN neurons, up to this step's share of the targets."""
        args, model = self.args, self.model
        if self._speed is not None:
            return self._prune_for_time(step)
        if self._budget is not None:
            return self._prune_for_params(step)
        targets = step_targets(targets, step, args.num_pruning_steps)
        original = get_record(model)["original"]
        num_layers, num_heads = original["num_layers"], original["num_heads"]
        plan: dict[str, Any] = {"layers": [], "heads": {}, "ffn": {}}

        to_drop = min(round_half_up(targets["layers"] * num_layers), num_layers - 1)
        dropped = num_layers - len(get_record(model)["kept_layers"])
        if to_drop > dropped:
            plan["layers"] = self._plan_layers(to_drop, dropped, step)
            check_same_plan(plan["layers"])
            drop_layers(model, plan["layers"])

        record = get_record(model)
        kinds = []
        heads_goal = round_half_up(targets["heads"] * num_layers * num_heads)
        if heads_goal > num_layers * num_heads - sum(len(heads) for heads in record["kept_heads"]):
            kinds.append("heads")
        ffn_total = num_layers * original["intermediate_size"]
        ffn_goal = round_half_up(targets["ffn"] * ffn_total)
        ffn_kept = sum(len(kept_ffn(record, position)) for position in range(len(record["kept_layers"])))
        if ffn_goal > ffn_total - ffn_kept:
            kinds.append("ffn")
        if kinds:
            scores = self.pruning_scores[step] = self._unit_scores(kinds, step)
            group_size = gqa_group_size(record)
            multiples = {"heads": args.round_heads_to_multiple, "ffn": args.round_to_multiple}
            # uniform: the per-layer counts this model may keep (whole KV groups, multiples, heads dividing the width)
            counts = {kind: uniform_counts(model, kind, multiples[kind]) if args.uniform else None for kind in kinds}
            planners = {
                "heads": lambda s, **kw: heads_to_prune(s, gqa_group_size=group_size, multiple_of=multiples["heads"], counts=counts["heads"], **kw),
                "ffn": lambda s, **kw: ffn_to_prune(s, multiple_of=multiples["ffn"], counts=counts["ffn"], **kw),
            }  # fmt: skip
            kept = {"heads": record["kept_heads"], "ffn": [kept_ffn(record, i) for i in range(len(record["kept_layers"]))]}
            goals = {"heads": num_layers * num_heads - heads_goal, "ffn": ffn_total - ffn_goal}
            for kind, unit_scores in scores.items():
                plan[kind] = plan_to_goal(
                    unit_scores, goals[kind], planners[kind], kept[kind], record["kept_layers"],
                    per_layer=args.per_layer_ranking, uniform=args.uniform,
                )  # fmt: skip
            check_same_plan({"heads": plan["heads"], "ffn": plan["ffn"]})
            prune_heads(model, plan["heads"])
            prune_ffn(model, plan["ffn"])
        self._after_surgery()
        logger.info(f"Pruning step {step}: {sparsities(model)}")
        return plan

    def _prune_for_time(self, step: int) -> dict[str, Any]:
        """Remove what costs least importance per second saved, down to this step's share of the time."""
        seconds = self._speed.step_seconds(step, self.args.num_pruning_steps)
        scores = self._allocation_scores(step)
        plan = self._speed.plan(self.model, scores, seconds, self._score_dataloader(), self._score_weight)
        self._apply_plan(plan)
        logger.info(f"Pruning step {step}: predicted {self._speed.latency.speedup(self.model):.2f}x, {sparsities(self.model)}")
        return plan

    def _prune_for_params(self, step: int) -> dict[str, Any]:
        """Remove what costs least importance per parameter, down to this step's share of the budget."""
        parameters = self._budget.step_parameters(step, self.args.num_pruning_steps)
        scores = self._allocation_scores(step, hidden=self._budget.prune_width)
        plan = self._budget.plan(self.model, scores, parameters, self._score_dataloader(), self._score_weight)
        self._apply_plan(plan)
        logger.info(f"Pruning step {step}: {num_parameters(self.model):,} parameters, {sparsities(self.model)}")
        return plan

    def _allocation_scores(self, step: int, hidden: bool = False) -> dict[str, torch.Tensor]:
        """Heads and FFN neurons by first-order importance (a good estimate for small units), layers by their
        measured loss increase (whole layers are big steps), channels by `hidden_importance`: one loss scale."""
        scores = self._unit_scores(["heads", "ffn"], step)
        layers = layer_ablation_scores(self.model, self._score_dataloader())
        scores["layers"] = average_over_processes(layers, self._score_weight, self.args.device)
        if hidden:
            channels = hidden_importance(self.model, self._score_dataloader())
            scores["hidden"] = average_over_processes(channels, self._score_weight, self.args.device)
        self.pruning_scores[step] = scores
        return scores

    def _apply_plan(self, plan: dict[str, Any]) -> None:
        """An allocation's surgery, the same on every process: channels, heads, FFN neurons, then layers."""
        check_same_plan({key: plan[key] for key in ("layers", "heads", "ffn")} | {"hidden": plan.get("hidden", [])})
        apply_plan(self.model, plan)
        self._after_surgery()

    def _plan_layers(self, to_drop: int, dropped: int, step: int) -> list[int]:
        """Original indices of the layers this step drops (`to_drop` in total, `dropped` already gone)."""
        strategy, num_layers = self.args.layer_strategy, get_record(self.model)["original"]["num_layers"]
        kept = get_record(self.model)["kept_layers"]
        if strategy == "contribution":
            loader = self._score_dataloader()
            scores = average_over_processes(layer_cosine_scores(self.model, loader), self._score_weight, self.args.device)
            return layers_to_drop(num_layers, to_drop - dropped, strategy, scores)
        candidates = [layer for layer in layers_to_drop(num_layers, to_drop, strategy) if layer in kept]
        return candidates[: to_drop - dropped]


__all__ = ["PruningSteps"]
