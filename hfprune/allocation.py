"""Spend a time budget: which layers, heads and FFN neurons to remove, by importance per saved second.

Every unit that could go (a head, or a KV group of heads; a block of `ffn_multiple` FFN neurons; a whole layer)
has a cost in loss units (the gradient importance of heads and neurons from `hfprune.scores.importance_scores`,
the measured loss increase of skipping a layer from `layer_ablation_scores`) and a saving (what
the `LatencyModel` says it takes off a forward pass, including the attention or MLP block's own overhead when
its last unit goes). `allocate_for_time` removes, one at a time and across all granularities at once, the unit
with the least importance per second saved until the predicted time reaches the target: a layer goes when
it is cheaper than its parts, an FFN block before a head when it buys more time for less importance. Only
the seconds still needed count as saved, so a big unit does not overshoot the target when a small one will do.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .errors import PruningError, TargetOutOfReachError
from .latency import LatencyModel, structure_counts
from .record import get_record, gqa_group_size, kept_ffn


def _score(values: torch.Tensor, index: list[int]) -> float:
    return float(values[index].nan_to_num(0.0).sum())


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
) -> dict[str, Any]:
    """The plan (original indices) that brings `model`'s predicted forward time down to `target_seconds`.

    Args:
        scores: `{"heads": [L, H], "ffn": [L, I]}` and optionally `"layers": [L]`, in ORIGINAL indices, higher
            = more important, on one scale across kinds (loss units: unnormalised gradient importance of heads
            and neurons, `layer_ablation_scores` of layers); without "layers", no layer is dropped whole.
        ffn_multiple: FFN neurons go in blocks of this many, so every kept width stays a multiple of it.
        min_layers: layers that always stay.
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
    alive = list(layers)
    seconds = latency.predict_counts(structure_counts(model))
    while seconds > target_seconds:
        best = None
        for layer in alive:
            for cost, saved, kind in layer.candidates(latency, can_drop=len(alive) > min_layers):
                if saved <= 0:
                    continue
                ratio = cost / min(saved, seconds - target_seconds)  # time saved beyond the target buys nothing
                if best is None or ratio < best[0]:
                    best = (ratio, saved, kind, layer)
        if best is None:
            raise TargetOutOfReachError(
                f"cannot reach {target_seconds * 1e3:.2f} ms per forward (predicted {seconds * 1e3:.2f} ms with "
                "nothing left to remove): lower the speedup target"
            )
        _, saved, kind, layer = best
        seconds -= saved
        if kind == "layer":
            alive.remove(layer)
        else:
            layer.remove(kind)
    return {
        "layers": sorted(layer.index for layer in layers if layer not in alive),
        "heads": {layer.index: sorted(layer.removed_heads) for layer in alive if layer.removed_heads},
        "ffn": {layer.index: sorted(layer.removed_neurons) for layer in alive if layer.removed_neurons},
        "predicted_seconds": seconds,
    }


__all__ = ["allocate_for_time"]
