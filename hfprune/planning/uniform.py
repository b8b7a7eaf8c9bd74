"""Uniform plans (`uniform=True`): the same heads (KV groups) and FFN width in every kept layer, none emptied.

A model pruned this way is described by its config alone (`config.hfprune["stock_loadable"]`, written by
`hfprune.engine.record.save_record`), so transformers, vLLM, TGI, SGLang and llama.cpp's `llama` architecture load
it unchanged. Every planner goes through this module when asked for uniform shapes:

- `uniform_counts` (`allowed_counts` for a model) lists the kept counts every layer may take: at least one unit,
  so no layer loses its whole attention or MLP; at most what every layer still has; `multiple_of` rounding alike in
  every layer; and, for families whose config states the head count (Llama: explicit `head_dim`), only counts of
  query heads that divide the hidden size, which transformers requires of such a config;
- sparsities (`heads_to_prune(uniform=True)`, `plan_to_goal`) turn the total into the nearest allowed per-layer
  count and keep every layer's best units (`uniform_plan`);
- the allocators (`hfprune.planning.allocation.allocate_for_time`: speed targets and parameter budgets) step every
  layer down the allowed counts together, or drop a layer whole;
- L0 gates (`hfprune.training.gates.HeadGates(uniform=True)`) keep every layer's most open units, as many in each
  (`uniform_keep`).

Whole layers may still go; the hidden width is uniform anyway. Encoders whose head size is `hidden_size / heads`
(BERT, RoBERTa, ELECTRA, DistilBERT, GPT-2) get uniform heads too, but their config cannot state fewer heads of the
same size, so only their FFN widths and layers are stock (`stock_loadable` says which).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .._validation import check_count
from ..engine.arch import get_adapter
from ..engine.record import get_record, gqa_group_size, kept_ffn, kept_hidden
from ..errors import PruningError


def allowed_counts(available: int, *, multiple_of: int = 1, unit: int = 1, divides: int | None = None) -> list[int]:
    """The kept counts (heads or neurons, ascending) a uniform plan may give every layer when each has at least
    `available`: whole units of `unit` heads (a KV group), at least one, multiples of `multiple_of` and divisors of
    `divides` (None: any), or `available` itself (every layer as it is)."""
    check_count("multiple_of", multiple_of, 1, expected="a positive integer")
    if multiple_of != 1 and multiple_of % unit:
        raise PruningError(f"multiple_of={multiple_of} must be a multiple of the KV group size {unit}")
    counts = {
        count
        for count in range(unit, available + 1, unit)
        if count % multiple_of == 0 and (divides is None or divides % count == 0)
    }
    return sorted(counts | {available})


def uniform_counts(model: nn.Module, kind: str, multiple_of: int = 1) -> list[int]:
    """`allowed_counts` of `model`'s query heads (`kind="heads"`, whole KV groups) or FFN neurons (`"ffn"`).

    Refuses a model one of whose kept layers has no attention or MLP left: no plan can give every layer the same
    non-empty block again."""
    record = get_record(model)
    if kind == "heads":
        kept = [len(heads) for heads in record["kept_heads"]]
        unit = gqa_group_size(record)
        divides = len(kept_hidden(record, model.config)) if get_adapter(model).uniform_heads_in_config else None
    elif kind == "ffn":
        kept = [len(kept_ffn(record, position)) for position in range(len(record["kept_layers"]))]
        unit, divides = 1, None
    else:
        raise PruningError(f"uniform counts are for 'heads' or 'ffn', not {kind!r}")
    if not min(kept):
        block = "attention" if kind == "heads" else "MLP"
        layer = record["kept_layers"][kept.index(0)]
        raise PruningError(
            f"uniform shapes keep a {block} in every layer, and layer {layer} of this model has none left: "
            "prune it without uniform"
        )
    return allowed_counts(min(kept), multiple_of=multiple_of, unit=unit, divides=divides)


def nearest_count(kept: float, counts: Sequence[int]) -> int:
    """The count of `counts` nearest to `kept`; ties keep more."""
    return min(counts, key=lambda count: (abs(count - kept), -count))


def uniform_plan(scores: torch.Tensor, keep: int, unit: int = 1) -> dict[int, list[int]]:
    """A `{layer: [indices]}` plan in which every layer (row of `scores`) that still has units keeps its `keep` best
    heads or neurons and loses the rest. Units are KV groups of `unit` heads, ranked by their summed scores (ties
    keep the lower index); NaN marks what is already gone."""
    rows = scores.detach().double().cpu().tolist()
    plan = {}
    for layer, row in enumerate(rows):
        units = []
        for index in range(len(row) // unit):
            members = [i for i in range(index * unit, (index + 1) * unit) if not math.isnan(row[i])]
            if members:
                units.append((-sum(row[i] for i in members), index, members))
        kept, removed = 0, []
        for _, _, members in sorted(units):  # best first
            if kept >= keep:
                removed += members
            else:
                kept += len(members)
        if removed:
            plan[layer] = sorted(removed)
    return plan


def lowest_units(row: Mapping[int, float], keep: int) -> set[int]:
    """The units of one layer outside its `keep` highest-scoring ones (ties keep the lower id)."""
    return set(sorted(row, key=lambda unit: (-row[unit], unit))[keep:])


def uniform_keep(
    rows: Mapping[str, Mapping[int, Mapping[int, float]]],
    counts: Mapping[str, Sequence[int]],
    *,
    unit_costs: Mapping[str, float] | None = None,
    goal: float | None = None,
) -> dict[str, int]:
    """How many units every layer keeps, per kind, from each unit's score (`rows[kind][layer][unit]`, higher stays
    longer: an L0 gate's log_alpha) and the allowed counts in units (`counts[kind]`).

    Without a `goal`: the units scoring above 0 (the open gates) of all layers together, spread evenly (the nearest
    allowed count). With a `goal` (the cost to remove; one unit of a kind costs `unit_costs[kind]` in each layer):
    the kinds step down their allowed counts, each step closing the lowest-scoring units of every layer, the step
    whose units score least on average first; a step that would remove more than the goal plus half the smallest
    first step is not taken, so the cost removed ends within about one step of the goal."""
    keep = {kind: max(counts[kind]) for kind in rows}
    if goal is None:
        for kind, layers in rows.items():
            above = sum(score > 0 for row in layers.values() for score in row.values())
            keep[kind] = nearest_count(above / max(len(layers), 1), counts[kind])
        return keep
    ranked = {kind: [sorted(row.values()) for row in layers.values()] for kind, layers in rows.items()}  # ascending

    def step(kind: str) -> tuple[float, str, int, float] | None:
        """(mean score, kind, count after, cost) of the kind's next step down, None at its last allowed count."""
        lower = [count for count in counts[kind] if count < keep[kind]]
        if not lower:
            return None
        after = max(lower)
        closing = [score for row in ranked[kind] for score in row[max(len(row) - keep[kind], 0) : len(row) - after]]
        return sum(closing) / max(len(closing), 1), kind, after, unit_costs[kind] * len(closing)

    removed = sum(unit_costs[kind] * max(len(row) - keep[kind], 0) for kind in ranked for row in ranked[kind])
    first = [move for move in map(step, ranked) if move is not None]
    slack = min(move[3] for move in first) / 2 if first else 0.0
    while True:
        moves = [move for move in map(step, ranked) if move is not None and removed + move[3] <= goal + slack]
        if not moves:
            return keep
        _, kind, after, cost = min(moves)
        keep[kind], removed = after, removed + cost


def uniform_closed(
    rows: Mapping[str, Mapping[int, Mapping[int, float]]],
    counts: Mapping[str, Sequence[int]],
    unit_costs: Mapping[str, float],
    goal: float | None = None,
) -> dict[str, dict[int, set[int]]]:
    """The units each layer closes, per kind (`rows[kind][layer]`): all but its `uniform_keep` best."""
    keep = uniform_keep(rows, counts, unit_costs=unit_costs, goal=goal)
    return {kind: {layer: lowest_units(row, keep[kind]) for layer, row in layers.items()} for kind, layers in rows.items()}


__all__ = [
    "allowed_counts",
    "lowest_units",
    "nearest_count",
    "uniform_closed",
    "uniform_counts",
    "uniform_keep",
    "uniform_plan",
]
