"""Spend a time budget: which layers, heads and FFN neurons to remove, by importance per saved second.

Every unit that could go (a head, or a KV group of heads; a block of `ffn_multiple` FFN neurons; a whole layer)
has a cost in loss units (the gradient importance of heads and neurons from `hfprune.scoring.loss.importance_scores`,
the measured loss increase of skipping a layer from `layer_ablation_scores`) and a saving (what
the `LatencyModel` says it takes off a forward pass, including the attention or MLP block's own overhead when
its last unit goes). `allocate_for_time` removes, one at a time and across all granularities at once, the unit
with the least importance per second saved until the predicted time reaches the target: a layer goes when
it is cheaper than its parts, an FFN block before a head when it buys more time for less importance. Only
the seconds still needed count as saved, and a unit that would take the model more than `OVERSHOOT` past the
target is taken only when every unit would: a big unit does not overshoot the target when a small one will do,
not even a free one.

The greedy works for any cost that is linear in the kept counts: `LatencyModel`'s seconds for a speed target,
or parameters (`hfprune.planning.param_target.parameter_cost_model`) for a parameter budget. `calibrated_allocation`
puts the kinds' scores on one scale first, by the measured loss of each kind's part of the plan.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..distributed import average_over_processes
from ..engine.masks import (
    apply_masks,
    make_ffn_mask,
    make_head_mask,
    make_layer_mask,
)
from ..engine.record import get_record, gqa_group_size, kept_ffn
from ..errors import PruningError, TargetOutOfReachError
from ..measure.latency import LatencyModel, structure_counts
from ..scoring.common import mean_loss, scoring_mode
from .uniform import uniform_counts


def _score(values: torch.Tensor, index: list[int]) -> float:
    return float(values[index].nan_to_num(0.0).sum())


OVERSHOOT = 0.05
"""How far past the target (a fraction of it) one removal may take the model while a smaller one would not."""


class _Layer:
    """The units one kept layer can still lose, each kind in the order it would lose them (least important first)."""

    def __init__(self, index: int, heads: list[int], neurons: list[int], scores: dict[str, torch.Tensor], group: int, ffn_multiple: int):
        self.index = index
        units: dict[int, list[int]] = {}
        for head in heads:  # grouped-query attention: a KV group's query heads go together
            units.setdefault(head // group, []).append(head)
        self.head_units = sorted(((_score(scores["heads"][index], unit), unit) for unit in units.values()), key=lambda u: u[0])
        ranked = sorted(neurons, key=lambda n: float(scores["ffn"][index, n].nan_to_num(0.0)))
        first = len(ranked) % ffn_multiple or ffn_multiple  # what stays is a multiple of ffn_multiple
        blocks = [ranked[:first]] + [ranked[i : i + ffn_multiple] for i in range(first, len(ranked), ffn_multiple)]
        self.neuron_blocks = [(_score(scores["ffn"][index], block), block) for block in blocks if block]
        self.layer_score = max(float(scores["layers"][index].nan_to_num(0.0)), 0.0) if "layers" in scores else math.inf
        self.heads, self.neurons = len(heads), len(neurons)
        self.removed_heads: list[int] = []
        self.removed_neurons: list[int] = []

    def candidates(self, latency: LatencyModel, can_drop: bool):
        """`(cost, saved seconds, kind)` of each move this layer offers."""
        now = latency.layer_seconds(self.heads, self.neurons)
        if self.head_units:
            score, unit = self.head_units[0]
            yield score, now - latency.layer_seconds(self.heads - len(unit), self.neurons), "heads"
        if self.neuron_blocks:
            score, block = self.neuron_blocks[0]
            yield score, now - latency.layer_seconds(self.heads, self.neurons - len(block)), "ffn"
        if can_drop:
            yield self.layer_score, now, "layer"

    def count(self, kind: str) -> int:
        return self.heads if kind == "heads" else self.neurons

    def preview(self, kind: str, keep: int) -> tuple[float, int, int]:
        """`(importance, units, count left)` of cutting this layer's least important `kind` units down to `keep`."""
        cost, taken, left = 0.0, 0, self.count(kind)
        for score, members in self.head_units if kind == "heads" else self.neuron_blocks:
            if left <= keep:
                break
            cost, taken, left = cost + score, taken + 1, left - len(members)
        return cost, taken, left

    def cut(self, kind: str, keep: int) -> None:
        for _ in range(self.preview(kind, keep)[1]):
            self.remove(kind)

    def remove(self, kind: str) -> None:
        if kind == "heads":
            _, unit = self.head_units.pop(0)
            self.removed_heads += unit
            self.heads -= len(unit)
        else:
            _, block = self.neuron_blocks.pop(0)
            self.removed_neurons += block
            self.neurons -= len(block)


def allocate_for_time(
    model: nn.Module,
    scores: dict[str, torch.Tensor],
    latency: LatencyModel,
    target_seconds: float,
    *,
    ffn_multiple: int = 1,
    min_layers: int = 1,
    uniform: bool = False,
) -> dict[str, Any]:
    """The plan (original indices) that brings `model`'s predicted forward time down to `target_seconds`.

    Args:
        scores: `{"heads": [L, H], "ffn": [L, I]}` and optionally `"layers": [L]`, in ORIGINAL indices, higher
            = more important, on one scale across kinds (loss units: unnormalised gradient importance of heads
            and neurons, `layer_ablation_scores` of layers); without "layers", no layer is dropped whole.
        ffn_multiple: FFN neurons go in blocks of this many, so every kept width stays a multiple of it.
        min_layers: layers that always stay.
        uniform: every kept layer keeps the same heads (KV groups) and FFN width, never none
            (`hfprune.planning.uniform`): a move takes one step down the allowed counts in every layer at once (each
            losing its least important units; the step's importance is the sum over layers), or drops a layer.
    Returns:
        `{"layers": [...], "heads": {layer: [...]}, "ffn": {layer: [...]}, "predicted_seconds": float}`; heads
        and neurons of dropped layers are not listed (the layer goes whole). Apply with `prune_heads`,
        `prune_ffn`, then `drop_layers`. Raises `TargetOutOfReachError` (a `PruningError`) when the target cannot be
        reached.
    """
    if "heads" not in scores or "ffn" not in scores:
        raise PruningError("allocate_for_time needs 'heads' and 'ffn' scores (and 'layers' to drop whole layers)")
    record = get_record(model)
    group = gqa_group_size(record)
    layers = [
        _Layer(index, record["kept_heads"][position], kept_ffn(record, position), scores, group, ffn_multiple)
        for position, index in enumerate(record["kept_layers"])
    ]
    if uniform:
        counts = {kind: uniform_counts(model, kind, ffn_multiple if kind == "ffn" else 1) for kind in ("heads", "ffn")}
        alive, seconds = _allocate_uniform(layers, latency, target_seconds, counts, min_layers)
        return _allocation(layers, alive, seconds)
    alive = list(layers)
    seconds = latency.predict_counts(structure_counts(model))
    while seconds > target_seconds:
        best = None
        need = seconds - target_seconds
        for layer in alive:
            for cost, saved, kind in layer.candidates(latency, can_drop=len(alive) > min_layers):
                if saved <= 0:
                    continue
                # time saved beyond the target buys nothing, and a unit that goes further past it than
                # OVERSHOOT is taken only when every unit would
                key = (saved - need > OVERSHOOT * target_seconds, cost / min(saved, need))
                if best is None or key < best[0]:
                    best = (key, saved, kind, layer)
        if best is None:
            raise _out_of_reach(target_seconds, seconds)
        _, saved, kind, layer = best
        seconds -= saved
        if kind == "layer":
            alive.remove(layer)
        else:
            layer.remove(kind)
    return _allocation(layers, alive, seconds)


def _out_of_reach(target_seconds: float, seconds: float) -> TargetOutOfReachError:
    return TargetOutOfReachError(
        f"cannot reach {target_seconds * 1e3:.2f} ms per forward (predicted {seconds * 1e3:.2f} ms with "
        "nothing left to remove): lower the speedup target"
    )


def _allocation(layers: list[_Layer], alive: list[_Layer], seconds: float) -> dict[str, Any]:
    return {
        "layers": sorted(layer.index for layer in layers if layer not in alive),
        "heads": {layer.index: sorted(layer.removed_heads) for layer in alive if layer.removed_heads},
        "ffn": {layer.index: sorted(layer.removed_neurons) for layer in alive if layer.removed_neurons},
        "predicted_seconds": seconds,
    }


def _allocate_uniform(
    layers: list[_Layer], latency: LatencyModel, target_seconds: float, counts: dict[str, list[int]], min_layers: int
) -> tuple[list[_Layer], float]:
    """`allocate_for_time(uniform=True)`: `(layers kept, predicted seconds)`. Layers that differ are first cut to the
    largest count every layer may keep; then each move is one step down the allowed counts of `counts` in every
    kept layer, or one layer dropped, chosen as `allocate_for_time` chooses a unit."""
    alive = list(layers)
    for layer in alive:
        for kind, allowed in counts.items():
            layer.cut(kind, max(allowed))

    def seconds_of(kept: list[_Layer]) -> float:
        return latency.fixed + sum(latency.layer_seconds(layer.heads, layer.neurons) for layer in kept)

    seconds = seconds_of(alive)
    while seconds > target_seconds:
        need, best = seconds - target_seconds, None
        moves = _uniform_moves(alive, latency, counts, can_drop=len(alive) > min_layers)
        for cost, saved, move in moves:
            if saved <= 0:
                continue
            key = (saved - need > OVERSHOOT * target_seconds, cost / min(saved, need))
            if best is None or key < best[0]:
                best = (key, move)
        if best is None:
            raise _out_of_reach(target_seconds, seconds)
        kind, value = best[1]
        if kind == "layer":
            alive.remove(value)
        else:
            for layer in alive:
                layer.cut(kind, value)
        seconds = seconds_of(alive)
    return alive, seconds


def _uniform_moves(alive: list[_Layer], latency: LatencyModel, counts: dict[str, list[int]], can_drop: bool):
    """`(importance, saved seconds, move)` of each uniform move: `("layer", layer)`, or `(kind, count)`: every kept
    layer down to the next allowed count of that kind, each losing its least important units."""
    moves = []
    if can_drop:
        moves += [(layer.layer_score, latency.layer_seconds(layer.heads, layer.neurons), ("layer", layer)) for layer in alive]
    for kind, allowed in counts.items():
        lower = [count for count in allowed if count < max(layer.count(kind) for layer in alive)]
        if not lower:
            continue
        keep, cost, saved = max(lower), 0.0, 0.0
        for layer in alive:
            score, _, left = layer.preview(kind, keep)
            heads, neurons = (left, layer.neurons) if kind == "heads" else (layer.heads, left)
            cost += score
            saved += latency.layer_seconds(layer.heads, layer.neurons) - latency.layer_seconds(heads, neurons)
        moves.append((cost, saved, (kind, keep)))
    return moves


CALIBRATION_ROUNDS = 3
"""How many times a plan is remade on scores rescaled by the measured loss of the previous plan."""
MAX_FACTOR = 5.0
"""The most one calibration round rescales a kind, either way: removals interact, so a big correction makes a
different plan, which the next round measures again."""


def calibrated_allocation(
    model: nn.Module,
    scores: dict[str, torch.Tensor],
    costs: LatencyModel,
    target: float,
    dataloader=None,
    *,
    ffn_multiple: int = 1,
    weight: int = 1,
    uniform: bool = False,
) -> dict[str, Any]:
    """`allocate_for_time` down to `target` (in `costs`' unit); with a `dataloader`, on calibrated scores.

    Gradient scores of heads and neurons are sensitivities (mean |d loss / d gate|), layer scores measured loss
    increases: the kinds agree on units, not on scale. So the plan is made, then each kind's part of it is
    applied alone as a mask and its measured loss increase divided by the scores it was planned with gives
    that kind's factor; the plan is made again on the rescaled scores (`CALIBRATION_ROUNDS` times), and its
    `"calibration"` entry holds the last factors. `weight`: this process's examples, for averaging the losses
    over processes; `uniform`: see `allocate_for_time`.
    """
    plan = allocate_for_time(model, scores, costs, target, ffn_multiple=ffn_multiple, uniform=uniform)
    if dataloader is None:
        return plan
    scores = dict(scores)
    for _ in range(CALIBRATION_ROUNDS):
        factors = calibration_factors(model, scores, plan, dataloader, weight)
        scores = {kind: value * factors.get(kind, 1.0) for kind, value in scores.items()}
        plan = allocate_for_time(model, scores, costs, target, ffn_multiple=ffn_multiple, uniform=uniform)
        plan["calibration"] = factors
    return plan


def calibration_factors(model: nn.Module, scores, plan, dataloader, weight: int = 1) -> dict[str, float]:
    """Measured / estimated loss increase of each kind's part of `plan` (kinds the plan does not touch: absent)."""
    parts = {
        "heads": (lambda: apply_masks(model, head_mask=make_head_mask(model, plan["heads"])), plan["heads"]),
        "ffn": (lambda: apply_masks(model, ffn_mask=make_ffn_mask(model, plan["ffn"])), plan["ffn"]),
        "layers": (lambda: apply_masks(model, layer_mask=make_layer_mask(model, plan["layers"])), plan["layers"]),
    }
    estimated = {
        "heads": sum(float(scores["heads"][layer, heads].nansum()) for layer, heads in plan["heads"].items()),
        "ffn": sum(float(scores["ffn"][layer, neurons].nansum()) for layer, neurons in plan["ffn"].items()),
        "layers": float(scores["layers"][plan["layers"]].clamp(min=0).nansum()) if "layers" in scores else 0.0,
    }
    kinds = [kind for kind, (_, units) in parts.items() if units and estimated[kind] > 0]
    losses = []
    with scoring_mode(model):
        base = mean_loss(model, dataloader)
        for kind in kinds:
            with parts[kind][0]():
                losses.append(mean_loss(model, dataloader) - base)
    device = next(model.parameters()).device
    losses = average_over_processes(torch.tensor(losses, dtype=torch.float64), weight, device).tolist()
    # one round moves a kind's scale at most MAX_FACTOR either way: removals interact, so a plan made on a big
    # correction is a different plan, measured again in the next round (a free part only halves its scale)
    return {kind: min(max(loss / estimated[kind], 1 / MAX_FACTOR), MAX_FACTOR) for kind, loss in zip(kinds, losses)}


__all__ = ["CALIBRATION_ROUNDS", "MAX_FACTOR", "OVERSHOOT", "allocate_for_time", "calibrated_allocation", "calibration_factors"]
