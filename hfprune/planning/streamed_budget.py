"""A parameter budget planned from forward-only scores alone: what a streamed job (`hfprune.streaming`) can plan,
since it never holds the whole model to try a plan on it.

The layers and KV groups asked for go first (the layers that change their input least, by cosine similarity, the
KV groups whose heads put out least in every layer alike), then every kept layer's FFN is cut to the same width
(its neurons with the least mean |activation| go) so that the model lands at the budget. The FFN takes the rest
because it holds most of a decoder's layer parameters and, measured without retraining, cutting it alone keeps a
model best: SmolLM2-135M at 85% of its parameters, WikiText-2 perplexity 71.9 with 25% of every FFN removed,
against 75.1 for a Wanda-style mix and 105.6 for hfprune's loss-calibrated mix of heads, neurons and layers
(benchmarks/README.md, "Pruning without retraining").

Parameters are counted exactly on the model's meta-device skeleton pruned by the engine itself in a dry run
(`tracing_slices`): no weight is read.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .._validation import check_fraction
from ..engine.apply_plan import apply_plan
from ..engine.record import get_record, gqa_group_size, kept_ffn
from ..engine.transaction import tracing_slices
from ..errors import PruningError, TargetOutOfReachError
from ..measure.sparsity import num_parameters
from .plan import heads_to_prune, layers_to_drop, round_half_up
from .uniform import uniform_counts


def apply_plan_dry(model: nn.Module, plan: dict[str, Any]) -> nn.Module:
    """A copy of the meta-device `model` with `plan` applied by the engine's own surgery (a dry run: only
    shapes, the record and the config change)."""
    copied = copy.deepcopy(model)
    with tracing_slices():
        apply_plan(copied, plan)
    return copied


def plan_parameter_budget(
    model: nn.Module,
    scores: dict[str, torch.Tensor],
    param_budget: float,
    *,
    head_sparsity: float = 0.0,
    layer_sparsity: float = 0.0,
    round_to_multiple: int = 1,
) -> dict[str, Any]:
    """The plan that brings the meta-device `model` to `param_budget` (a fraction of its parameters now) with the
    same FFN width in every kept layer, after `layer_sparsity` of its layers and `head_sparsity` of every layer's
    KV groups (`scores`: "layer_cosine" `[L]`, "heads" `[L, H]`, "ffn" `[L, I]`, higher = more important).

    Returns `{"layers", "heads", "ffn", "ffn_width", "parameters", "dense_parameters"}`, original indices, for
    `hfprune.streaming.prune_checkpoint`. Raises `TargetOutOfReachError` when even the narrowest FFN leaves the
    model above the budget (ask for more heads or layers then).
    """
    check_fraction("param_budget", param_budget)
    record = get_record(model)
    dense = num_parameters(model)
    target = param_budget * dense
    plan: dict[str, Any] = {"layers": [], "heads": {}, "ffn": {}}
    if layer_sparsity:
        if "layer_cosine" not in scores:
            raise PruningError("dropping layers needs 'layer_cosine' scores")
        count = round_half_up(check_fraction("layer_sparsity", layer_sparsity) * len(record["kept_layers"]))
        num_layers = record["original"]["num_layers"]
        plan["layers"] = layers_to_drop(num_layers, count, "contribution", scores["layer_cosine"]) if count else []
    if head_sparsity:
        if "heads" not in scores:
            raise PruningError("pruning heads needs 'heads' scores")
        plan["heads"] = heads_to_prune(
            scores["heads"], check_fraction("head_sparsity", head_sparsity), gqa_group_size=gqa_group_size(record),
            uniform=True, counts=uniform_counts(model, "heads"),
        )  # fmt: skip
    if "ffn" not in scores:
        raise PruningError("a parameter budget without training needs 'ffn' scores")
    widths = uniform_counts(model, "ffn", round_to_multiple)
    ranked = _ranked_neurons(model, plan, scores["ffn"])
    narrowest = _parameters(model, plan, ranked, widths[0])
    if narrowest > target:
        raise TargetOutOfReachError(
            f"param_budget={param_budget:g} is out of reach by cutting the FFN: at its narrowest ({widths[0]} neurons "
            f"a layer) the model keeps {narrowest / dense:.1%} of its parameters; remove heads or layers too"
        )
    low, high = 0, len(widths) - 1  # parameters grow with the width: the widest that fits, by bisection
    while low < high:
        middle = (low + high + 1) // 2
        if _parameters(model, plan, ranked, widths[middle]) <= target:
            low = middle
        else:
            high = middle - 1
    width = widths[low]
    plan["ffn"] = _ffn_cut(ranked, width)
    plan.update(ffn_width=width, parameters=_parameters(model, plan, ranked, width), dense_parameters=dense)
    return plan


def _ffn_cut(ranked: dict[int, list[int]], width: int) -> dict[int, list[int]]:
    """Every kept layer's FFN down to `width`: its lowest-scoring current neurons go (`ranked`: `_ranked_neurons`)."""
    return {layer: sorted(order[: len(order) - width]) for layer, order in ranked.items() if len(order) > width}


def _ranked_neurons(model: nn.Module, plan: dict[str, Any], scores: torch.Tensor) -> dict[int, list[int]]:
    """Per kept layer (original index) not dropped by `plan`, its current neurons from least to most important
    (ties: the lower index first; a missing score counts as 0)."""
    record = get_record(model)
    dropped = set(plan["layers"])
    ranked = {}
    for position, layer in enumerate(record["kept_layers"]):
        if layer in dropped:
            continue
        neurons = torch.tensor(kept_ffn(record, position))
        values = scores[layer, neurons].nan_to_num(0.0)
        order = torch.sort(values, stable=True).indices  # stable: equal scores keep ascending neuron order
        ranked[layer] = neurons[order].tolist()
    return ranked


def _parameters(model: nn.Module, plan: dict[str, Any], ranked: dict[int, list[int]], width: int) -> int:
    """Parameters of `model` with `plan` and every layer's FFN at `width`, counted on a dry-run copy."""
    return num_parameters(apply_plan_dry(model, {**plan, "ffn": _ffn_cut(ranked, width)}))


__all__ = ["apply_plan_dry", "plan_parameter_budget"]
