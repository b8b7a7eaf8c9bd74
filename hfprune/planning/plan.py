"""Turn importance scores into pruning plans: `{layer: [heads]}` for `prune_heads`, `{layer: [neurons]}` for
`prune_ffn`, layer lists for `drop_layers`.

Plans use ORIGINAL indices, like the scores (`hfprune.scoring.loss`) and the surgery functions. NaN scores mark
heads that are already gone: they are never planned again and do not count as candidates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .._validation import check_count, check_fraction, check_number
from ..constants import LAYER_STRATEGIES  # re-exported: its first home
from ..engine.arch import get_adapter
from ..engine.arch.base import resolve
from ..engine.masks import apply_masks, make_head_mask
from ..engine.record import get_record, gqa_group_size, kept_ffn
from ..engine.surgery import prune_heads
from ..errors import PruningError
from ..measure.sparsity import num_parameters
from ..scoring.loss import head_importance
from .uniform import allowed_counts, nearest_count, uniform_plan

if TYPE_CHECKING:  # pruning_config imports this module
    from ..pruning_config import PruningConfig


def round_half_up(value: float) -> int:
    """Round half up (Python's `round` rounds 0.5 to even, so 2.5 heads would become 2)."""
    return math.floor(value + 0.5)


def _check_scores(scores: torch.Tensor, gqa_group_size: int) -> torch.Tensor:
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
        raise PruningError("scores must be a 2-D [num_layers, units per layer] tensor (see hfprune.scoring.loss)")
    num_heads = scores.shape[1]
    check_count("gqa_group_size", gqa_group_size, 1, expected="a positive integer")
    if num_heads % gqa_group_size:
        raise PruningError(f"gqa_group_size {gqa_group_size} does not divide the {num_heads} heads per layer")
    return scores.detach().double().cpu()


def _units(scores: torch.Tensor, group_size: int) -> list[list[tuple[float, int, list[int]]]]:
    """Per layer, the prunable units that still exist: (summed score, unit index, its existing heads).

    A unit is one head, or under grouped-query attention one KV group of `group_size` query heads, pruned
    together so that every plan is a valid `prune_heads` call.
    """
    num_layers, num_heads = scores.shape
    units = []
    for layer in range(num_layers):
        row = []
        for unit in range(num_heads // group_size):
            heads = [h for h in range(unit * group_size, (unit + 1) * group_size) if not scores[layer, h].isnan()]
            if heads:
                row.append((float(scores[layer, heads].sum()), unit, heads))
        units.append(row)
    return units


def _check_multiple(multiple_of: int, unit_size: int) -> int:
    """`multiple_of` in heads (or neurons), as a number of units; it must be made of whole units (1: no rounding)."""
    check_count("multiple_of", multiple_of, 1, expected="a positive integer")
    if multiple_of == 1:
        return 1
    if multiple_of % unit_size:
        raise PruningError(f"multiple_of={multiple_of} must be a multiple of the KV group size {unit_size}")
    return multiple_of // unit_size


def _rounded_kept(kept: int, available: int, multiple: int, at_least_one: bool) -> int:
    """The kept count a layer gets with hardware-friendly widths: the nearest multiple of `multiple` that is at
    most `available`, or `available` itself (a layer is never made wider); ties keep more."""
    candidates = [count for count in range(0, available + 1, multiple)] + [available]
    if at_least_one and available:
        candidates = [count for count in candidates if count > 0]
    return min(candidates, key=lambda count: (abs(count - kept), -count))


def _round_layers(
    units: list[list[tuple[float, int, list[int]]]],
    chosen: list[tuple[int, list[int]]],
    multiple: int,
    at_least_one: bool,
) -> list[tuple[int, list[int]]]:
    """Re-plan every layer so that its number of kept units is a multiple of `multiple` (see `_rounded_kept`),
    taking the lowest-scoring units, so a layer may lose a few more or a few fewer than first planned."""
    if multiple == 1:
        return chosen
    planned = [0] * len(units)
    for layer, _ in chosen:
        planned[layer] += 1
    rounded = []
    for layer, row in enumerate(units):
        kept = _rounded_kept(len(row) - planned[layer], len(row), multiple, at_least_one)
        rounded += [(layer, heads) for _, _, heads in sorted(row)[: len(row) - kept]]
    return rounded


def _uniform_heads(
    scores: torch.Tensor,
    units: list[list[tuple[float, int, list[int]]]],
    fraction: float | None,
    count: int | None,
    group_size: int,
    multiple_of: int,
    counts: Sequence[int] | None,
) -> dict[int, list[int]]:
    """`heads_to_prune(uniform=True)`: the heads the fraction or count leaves, spread evenly over the layers that
    have heads and rounded to the nearest allowed count; every layer keeps its best."""
    sizes = [sum(len(heads) for _, _, heads in row) for row in units if row]
    if not sizes:
        return {}
    existing = sum(sizes)
    if count is None:
        removed = round_half_up(check_fraction("fraction", fraction) * existing)
    else:
        removed = check_count("count", count, 0, scores.numel())
    removed = min(round_half_up(removed / group_size) * group_size, existing)  # whole KV groups, as without uniform
    if counts is None:
        counts = allowed_counts(min(sizes), multiple_of=multiple_of, unit=group_size)
    keep = nearest_count((existing - removed) / len(sizes), [c for c in counts if 0 < c <= min(sizes)] or [min(sizes)])
    return uniform_plan(scores, keep, group_size)


def _plan(chosen: Iterable[tuple[int, list[int]]]) -> dict[int, list[int]]:
    plan: dict[int, list[int]] = {}
    for layer, heads in chosen:
        plan.setdefault(layer, []).extend(heads)
    return {layer: sorted(plan[layer]) for layer in sorted(plan)}


def heads_to_prune(
    scores: torch.Tensor,
    fraction: float | None = None,
    *,
    count: int | None = None,
    per_layer: bool = False,
    keep_at_least_one: bool = True,
    gqa_group_size: int = 1,
    multiple_of: int = 1,
    uniform: bool = False,
    counts: Sequence[int] | None = None,
) -> dict[int, list[int]]:
    """The lowest-scoring heads, as a `{layer: [heads]}` plan for `prune_heads`.

    Give exactly one of `fraction` (of the heads that still exist, rounded half up) or `count` (heads).
    Both are per layer with `per_layer=True`, else over the whole model (Michel et al., 2019 rank heads
    globally on layer-normalised scores). With `gqa_group_size > 1`, whole KV groups are ranked by the sum of
    their heads' scores and pruned together; the number of heads is then rounded to whole groups.
    `keep_at_least_one` never takes a layer's last head (group): fewer heads are planned if it must.
    `multiple_of > 1` then rounds every layer's number of kept heads to the nearest multiple of it (or keeps the
    layer whole), for hardware-friendly shapes; the total may then differ from the target by a few heads.

    `uniform=True` gives every layer that still has heads the same number of them, its best ones, and never none
    (so ranking is per layer, and `per_layer` and `keep_at_least_one` change nothing): the total the fraction or
    count leaves, spread evenly, rounded to the nearest of `counts`, the allowed per-layer head counts
    (`hfprune.planning.uniform.uniform_counts(model, "heads")`; default: whole KV groups, at least one, at most
    what every layer has, multiples of `multiple_of`).
    """
    scores = _check_scores(scores, gqa_group_size)
    if (fraction is None) == (count is None):
        raise PruningError("give exactly one of fraction and count")
    multiple = _check_multiple(multiple_of, gqa_group_size)
    units = _units(scores, gqa_group_size)
    if uniform:
        return _uniform_heads(scores, units, fraction, count, gqa_group_size, multiple_of, counts)

    def unit_budget(available_heads: int, limit: int) -> int:
        heads = (
            round_half_up(check_fraction("fraction", fraction) * available_heads)
            if count is None
            else check_count("count", count, 0, limit)
        )
        return round_half_up(heads / gqa_group_size)

    if per_layer:
        chosen = []
        for layer, row in enumerate(units):
            budget = unit_budget(sum(len(heads) for _, _, heads in row), scores.shape[1])
            budget = min(budget, len(row) - 1 if keep_at_least_one else len(row))
            chosen += [(layer, heads) for _, _, heads in sorted(row)[: max(budget, 0)]]
        return _plan(_round_layers(units, chosen, multiple, keep_at_least_one))

    budget = unit_budget(sum(len(heads) for row in units for _, _, heads in row), scores.numel())
    left = [len(row) for row in units]
    ranked = sorted((score, layer, unit, heads) for layer, row in enumerate(units) for score, unit, heads in row)
    chosen = []
    for _, layer, _, heads in ranked:
        if len(chosen) == budget:
            break
        if keep_at_least_one and left[layer] == 1:
            continue
        left[layer] -= 1
        chosen.append((layer, heads))
    return _plan(_round_layers(units, chosen, multiple, keep_at_least_one))


def ffn_to_prune(
    scores: torch.Tensor,
    fraction: float | None = None,
    *,
    count: int | None = None,
    per_layer: bool = True,
    keep_at_least_one: bool = False,
    multiple_of: int = 1,
    uniform: bool = False,
    counts: Sequence[int] | None = None,
) -> dict[int, list[int]]:
    """The lowest-scoring FFN neurons, as a `{layer: [neurons]}` plan for `prune_ffn`.

    `scores` is `[num_layers, intermediate_size]` (`hfprune.ffn_importance`, `magnitude_ffn_scores`; NaN for
    neurons already gone). Give exactly one of `fraction` (of the neurons that still exist) or `count`, per layer
    by default or over the whole model with `per_layer=False` (the same rules as `heads_to_prune`). A layer may
    lose its whole MLP unless `keep_at_least_one`. `multiple_of` (e.g. 64) rounds every layer's kept width to
    the nearest multiple, which dense kernels run faster than odd widths. `uniform=True` gives every layer the
    same width, never 0 (`counts`: the allowed widths, as in `heads_to_prune`).
    """
    return heads_to_prune(
        scores,
        fraction,
        count=count,
        per_layer=per_layer,
        keep_at_least_one=keep_at_least_one,
        multiple_of=multiple_of,
        uniform=uniform,
        counts=counts,
    )


def best_head_per_layer(scores: torch.Tensor, gqa_group_size: int = 1) -> dict[int, list[int]]:
    """A plan keeping only each layer's best head (best KV group under grouped-query attention): the
    single-head layers of Michel et al. (2019). Ties keep the lower index."""
    scores = _check_scores(scores, gqa_group_size)
    chosen = []
    for layer, row in enumerate(_units(scores, gqa_group_size)):
        if row:
            best = max(row, key=lambda entry: (entry[0], -entry[1]))
            chosen += [(layer, heads) for _, unit, heads in row if unit != best[1]]
    return _plan(chosen)


def layers_to_drop(
    num_layers: int, k: int, strategy: str = "top", scores: torch.Tensor | None = None
) -> list[int]:
    """The `k` layers (0-based, sorted) that a strategy of Sajjad et al. (2020), "On the Effect of Dropping
    Layers of Pre-trained Transformer Models", drops from a model of `num_layers` layers.

    - "top": the last k layers, `num_layers - k ... num_layers - 1` (the paper's best strategy).
    - "bottom": the first k layers, `0 ... k - 1`.
    - "even" / "odd": every other layer from the top, among the even / odd 0-based indices
      (12 layers, k=4: even drops 10, 8, 6, 4 and odd drops 11, 9, 7, 5).
    - "symmetric": keeps top and bottom and drops the k middle layers, `(num_layers - k) // 2` onwards
      (12 layers, k=4: 4, 5, 6, 7; with an odd remainder one more layer is kept at the top).
    - "contribution": the k layers with the highest input/output cosine similarity (`scores`, from
      `hfprune.scoring.similarity.layer_cosine_scores`); ties drop the lower index first, NaN layers are never picked.
    """
    check_count("num_layers", num_layers, 1, expected="a positive integer")
    k = check_count("k", k, 0, num_layers - 1)
    if strategy not in LAYER_STRATEGIES:
        raise PruningError(f"unknown layer-dropping strategy {strategy!r}; choose from {list(LAYER_STRATEGIES)}")
    if strategy == "contribution":
        return _most_similar_layers(num_layers, k, scores)
    if scores is not None:
        raise PruningError(f"strategy {strategy!r} takes no scores; only 'contribution' does")
    if strategy in ("even", "odd"):
        candidates = [layer for layer in range(num_layers - 1, -1, -1) if layer % 2 == (strategy == "odd")]
        if k > len(candidates):
            raise PruningError(f"a {num_layers}-layer model has only {len(candidates)} {strategy} layers, asked {k}")
        return sorted(candidates[:k])
    start = {"top": num_layers - k, "bottom": 0, "symmetric": (num_layers - k) // 2}[strategy]
    return list(range(start, start + k))


def _most_similar_layers(num_layers: int, k: int, scores: torch.Tensor | None) -> list[int]:
    if not isinstance(scores, torch.Tensor) or scores.shape != (num_layers,):
        raise PruningError(f"strategy 'contribution' needs scores of shape [{num_layers}] (layer_cosine_scores)")
    values = scores.detach().double().cpu().tolist()
    candidates = [layer for layer in range(num_layers) if not math.isnan(values[layer])]
    if k > len(candidates):
        raise PruningError(f"only {len(candidates)} layers have scores, cannot drop {k}")
    return sorted(sorted(candidates, key=lambda layer: -values[layer])[:k])


def _pruned_heads(model: nn.Module) -> tuple[int, int]:
    """(heads gone, heads of the original model); heads of dropped layers count as gone."""
    record = get_record(model)
    total = record["original"]["num_layers"] * record["original"]["num_heads"]
    return total - sum(len(heads) for heads in record["kept_heads"]), total


def heads_left(model_or_config: Any) -> int:
    """How many attention heads a model (or its config) still has, over all its layers."""
    return sum(len(heads) for heads in get_record(model_or_config)["kept_heads"])


def check_head_target(model: nn.Module, target: float | None) -> None:
    """Refuse a head sparsity above 0 for a model whose every head was already removed (a legal hfprune output):
    there is no head to score or remove, and the target would silently change nothing."""
    if target and not heads_left(model):
        raise PruningError(
            f"target_head_sparsity={target:g} has nothing to remove: the model has no attention heads left "
            "(every head was removed); prune FFN neurons or layers instead"
        )


def head_sparsity(model: nn.Module) -> float:
    """The fraction of the original model's attention heads that are gone (dropped layers included)."""
    pruned, total = _pruned_heads(model)
    return pruned / total


def iterative_head_pruning(
    model: nn.Module,
    score_dataloader: Iterable[Any],
    target_sparsity: float,
    step: float = 0.1,
    eval_fn: Callable[[nn.Module], float] | None = None,
    min_metric_fraction: float | None = None,
    scorer: Callable[[nn.Module, Iterable[Any]], torch.Tensor] = head_importance,
    keep_at_least_one: bool = True,
) -> list[dict[str, Any]]:
    """Michel et al. (2019)'s iterative loop: prune `step` of the original heads, re-score, repeat.

    Each step scores the (already pruned) model with `scorer(model, score_dataloader)`, plans the lowest
    heads globally (whole KV groups under grouped-query attention, so the last step may overshoot the
    target by part of a group) and removes them with `prune_heads`. It stops at `target_sparsity`, when no
    head can be pruned, or when `eval_fn(model)` (higher is better, positive) of the next step would fall below
    `min_metric_fraction` times its value before pruning. A step is evaluated with head masks first (the
    same function as the pruned model), so a rejected step never touches the weights.

    Returns:
        One entry per step, starting with step 0 (the model as given): `step`, `sparsity` (of the original
        heads), `metric` (None without `eval_fn`), `heads_pruned` (that step's plan) and `applied` (False
        only for a last step rejected by `min_metric_fraction`).
    """
    target_sparsity = check_fraction("target_sparsity", target_sparsity)
    check_number("step", step, 0, 1, open_low=True)
    if min_metric_fraction is not None:
        check_number("min_metric_fraction", min_metric_fraction, 0, 1, open_low=True)
        if eval_fn is None:
            raise PruningError("min_metric_fraction needs an eval_fn to measure the metric")
    group_size = gqa_group_size(get_record(model))
    pruned, total = _pruned_heads(model)
    target, per_step = round_half_up(target_sparsity * total), max(1, round_half_up(step * total))

    baseline = eval_fn(model) if eval_fn is not None else None
    history = [dict(step=0, sparsity=pruned / total, metric=baseline, heads_pruned={}, applied=True)]
    while (pruned := _pruned_heads(model)[0]) < target:
        plan = heads_to_prune(
            scorer(model, score_dataloader),
            count=min(per_step, target - pruned),
            keep_at_least_one=keep_at_least_one,
            gqa_group_size=group_size,
        )
        if not plan:
            break
        metric = None
        if eval_fn is not None:
            with apply_masks(model, head_mask=make_head_mask(model, plan)):
                metric = eval_fn(model)
        applied = min_metric_fraction is None or metric >= min_metric_fraction * baseline
        sparsity = (pruned + sum(len(heads) for heads in plan.values())) / total
        history.append(dict(step=len(history), sparsity=sparsity, metric=metric, heads_pruned=plan, applied=applied))
        if not applied:
            break
        prune_heads(model, plan)
    return history


# ---- the trainer's targets: sparsities reached, parameter budget -------------------------------------
def sparsities(model: nn.Module) -> dict[str, float]:
    """Fractions of the original heads, FFN neurons and layers that are gone (dropped layers count as gone)."""
    record = get_record(model)
    original = record["original"]
    neurons = sum(len(kept_ffn(record, position)) for position in range(len(record["kept_layers"])))
    return {
        "head_sparsity": head_sparsity(model),
        "ffn_sparsity": 1 - neurons / (original["num_layers"] * original["intermediate_size"]),
        "layer_sparsity": 1 - len(record["kept_layers"]) / original["num_layers"],
    }


def _numel(obj) -> int:
    if isinstance(obj, nn.Parameter):
        return obj.numel()
    return sum(parameter.numel() for parameter in obj.parameters())


def _parameter_split(model: nn.Module) -> dict[str, int]:
    """The parameters of an unpruned model, split into what head, FFN and layer pruning can remove.

    `heads`: the q/k/v/o projections of every layer; `ffn`: the FFN projections; `layers`: the rest of the
    layers (norms...); `total`: everything. Removing a fraction f of the heads removes about f of `heads`.
    """
    adapter = get_adapter(model)
    split = {"heads": 0, "ffn": 0, "layers": 0, "total": num_parameters(model)}
    for layer in adapter.get_layers(model):
        paths = {adapter.query, adapter.key, adapter.value, adapter.output}  # GPT-2: q, k, v share one module
        attention = sum(_numel(resolve(layer, path)) for path in paths)
        ffn = sum(_numel(layer.get_submodule(path)) for path in (*adapter.ffn_inputs, adapter.ffn_output))
        split["heads"] += attention
        split["ffn"] += ffn
        split["layers"] += _numel(layer) - attention - ffn
    return split


def check_unpruned(model: nn.Module, setting: str) -> None:
    """Refuse a budget (`setting`) on a model something was already removed from: it is measured against the dense one."""
    record = get_record(model)
    if any(heads != list(range(record["original"]["num_heads"])) for heads in record["kept_heads"]) or any(
        kept is not None for kept in record["kept_ffn"]
    ) or len(record["kept_layers"]) != record["original"]["num_layers"] or record.get("kept_hidden") is not None:
        raise PruningError(f"{setting} needs an unpruned model to measure the budget against")


def final_targets(args: PruningConfig, model: nn.Module) -> dict[str, float]:
    """The sparsities the last pruning step reaches, after `target_param_budget` scaled them.

    With a budget b, the mix (h, f, l) of the given sparsities (or (1, 1, 0)) is scaled by s so that the
    removed parameters, s * (max(h, l) * heads + max(f, l) * ffn + l * rest of layers), equal (1 - b) * total.
    """
    targets = {
        "heads": args.target_head_sparsity,
        "ffn": args.target_ffn_sparsity,
        "layers": args.target_layer_sparsity,
    }
    check_head_target(model, targets["heads"])
    if args.target_param_budget is None:
        return targets
    check_unpruned(model, "target_param_budget")
    if not any(targets.values()):
        targets = {"heads": 1.0, "ffn": 1.0, "layers": 0.0}
    split = _parameter_split(model)
    removable = (
        max(targets["heads"], targets["layers"]) * split["heads"]
        + max(targets["ffn"], targets["layers"]) * split["ffn"]
        + targets["layers"] * split["layers"]
    )
    scale = (1 - args.target_param_budget) * split["total"] / removable
    scaled = {kind: value * scale for kind, value in targets.items()}
    if max(scaled.values()) >= 1:
        raise PruningError(
            f"target_param_budget={args.target_param_budget} is out of reach with this mix of sparsities "
            f"(it would need {', '.join(f'{k} {v:.2f}' for k, v in scaled.items())}); "
            "raise the budget or change the mix"
        )
    return scaled


def step_targets(targets: dict[str, float], step: int, num_steps: int) -> dict[str, float]:
    """The sparsities pruning step `step` of `num_steps` reaches: an equal share of every final target per step."""
    return {kind: value * step / num_steps for kind, value in targets.items()}


def plan_to_goal(
    scores: torch.Tensor,
    kept_goal: int,
    planner: Callable[..., dict[int, list[int]]],
    kept: list[list[int]],
    kept_layers: list[int],
    *,
    per_layer: bool,
    uniform: bool = False,
) -> dict[int, list[int]]:
    """Plan heads or neurons (`planner`: `heads_to_prune` or `ffn_to_prune`) so that `kept_goal` remain in all.

    `kept[i]` are the units current layer `i` (original id `kept_layers[i]`) still has. Globally: one call for
    the difference. Per layer: every remaining layer keeps kept_goal / layers of them, planned layer by layer
    (a layer already below that loses nothing). Uniform: every remaining layer keeps the same number, the allowed
    count nearest kept_goal / layers (`heads_to_prune(uniform=True)`; `per_layer` is then implied).
    """
    current = sum(len(units) for units in kept)
    if uniform:
        return planner(scores, count=max(current - kept_goal, 0), uniform=True)
    if not per_layer:
        return planner(scores, count=max(current - kept_goal, 0), per_layer=False)
    per_layer_goal = round_half_up(kept_goal / len(kept_layers))
    plan = {}
    for position, layer in enumerate(kept_layers):
        count = len(kept[position]) - per_layer_goal
        if count <= 0:
            continue
        row = torch.full_like(scores, float("nan"))
        row[layer] = scores[layer]
        plan.update(planner(row, count=count, per_layer=True))
    return plan


def resolve_layers_to_drop(
    kept_layers: list[int],
    *,
    k: int | None = None,
    layers: Iterable[int] | None = None,
    strategy: str = "top",
    scores: torch.Tensor | None = None,
) -> list[int] | None:
    """Original ids of the layers a drop request removes from a model that keeps `kept_layers` (original ids).

    The request is `layers` (original ids) or `k` layers chosen by `strategy`. "contribution" ranks by the layer
    `scores` (`hfprune.scoring.similarity.layer_cosine_scores`); without them the request is only checked and None returned,
    so that a bad one fails before the model is loaded to score it.
    """
    if layers is not None:
        layers = list(layers)
        if set(layers) - set(kept_layers) or len(set(layers)) >= len(kept_layers):
            raise PruningError(f"layers {sorted(set(layers))} cannot be dropped: the model has layers {kept_layers}")
        return layers
    if strategy == "contribution":
        count = len(kept_layers)
        check_count("k", k, 1, count - 1, expected=f"an integer in [1, {count - 1}] for a model with {count} layers")
        if scores is None:
            return None
        scores = scores[kept_layers] if scores.shape[0] != count else scores
    return [kept_layers[i] for i in layers_to_drop(len(kept_layers), k, strategy, scores)]


__all__ = [
    "LAYER_STRATEGIES",
    "best_head_per_layer",
    "check_head_target",
    "check_unpruned",
    "ffn_to_prune",
    "final_targets",
    "head_sparsity",
    "heads_left",
    "heads_to_prune",
    "iterative_head_pruning",
    "layers_to_drop",
    "plan_to_goal",
    "resolve_layers_to_drop",
    "step_targets",
]
