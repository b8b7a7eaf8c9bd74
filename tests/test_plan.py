"""Pruning plans from scores: head rankings, layer-dropping strategies and Michel et al.'s iterative loop."""

import copy

import pytest
import torch
from conftest import tiny_inputs, tiny_model

import hfprune
from hfprune.planning.plan import (
    best_head_per_layer,
    ffn_to_prune,
    head_sparsity,
    heads_to_prune,
    iterative_head_pruning,
    layers_to_drop,
)
from hfprune.scoring.loss import head_importance

NAN = float("nan")
# 3 layers x 4 heads; ranks (low to high): (0,0) (0,1) (0,2) (1,0) (2,3) (0,3) ...
SCORES = torch.tensor(
    [
        [0.01, 0.02, 0.03, 0.30],
        [0.05, 0.60, 0.70, 0.80],
        [0.50, 0.40, 0.35, 0.06],
    ]
)


# ---- heads_to_prune -------------------------------------------------------------------------------------
def test_global_count_and_fraction():
    assert heads_to_prune(SCORES, count=4) == {0: [0, 1, 2], 1: [0]}
    assert heads_to_prune(SCORES, 0.25) == {0: [0, 1, 2]}  # 3 of 12 heads
    assert heads_to_prune(SCORES, 0.0) == {}
    assert heads_to_prune(SCORES, count=0) == {}


def test_keep_at_least_one():
    # Layer 0 holds the 4 lowest... but only 3 of its heads may go; the next lowest elsewhere is taken.
    scores = SCORES.clone()
    scores[0, 3] = 0.04
    assert heads_to_prune(scores, count=5) == {0: [0, 1, 2], 1: [0], 2: [3]}
    assert heads_to_prune(scores, count=5, keep_at_least_one=False) == {0: [0, 1, 2, 3], 1: [0]}
    assert heads_to_prune(SCORES, count=12) == {0: [0, 1, 2], 1: [0, 1, 2], 2: [1, 2, 3]}  # fewer than asked


def test_per_layer():
    assert heads_to_prune(SCORES, count=1, per_layer=True) == {0: [0], 1: [0], 2: [3]}
    assert heads_to_prune(SCORES, 0.5, per_layer=True) == {0: [0, 1], 1: [0, 1], 2: [2, 3]}
    assert heads_to_prune(SCORES, count=4, per_layer=True) == {0: [0, 1, 2], 1: [0, 1, 2], 2: [1, 2, 3]}
    assert heads_to_prune(SCORES, count=4, per_layer=True, keep_at_least_one=False) == {
        layer: [0, 1, 2, 3] for layer in range(3)
    }


def test_gone_heads_are_not_candidates():
    scores = SCORES.clone()
    scores[0, :3] = NAN  # already pruned
    assert heads_to_prune(scores, count=2) == {1: [0], 2: [3]}  # (0,3) is its layer's last head
    assert heads_to_prune(scores, 0.5) == {1: [0, 1], 2: [1, 2, 3]}  # half of the 9 heads left, rounded up
    scores[1] = NAN
    assert heads_to_prune(scores, count=2, per_layer=True) == {2: [2, 3]}


def test_gqa_groups_are_pruned_whole():
    # groups of 2: layer 0 sums (0.03, 0.33), layer 1 (0.65, 1.5), layer 2 (0.9, 0.41)
    assert heads_to_prune(SCORES, count=2, gqa_group_size=2) == {0: [0, 1]}
    assert heads_to_prune(SCORES, count=4, gqa_group_size=2) == {0: [0, 1], 2: [2, 3]}
    assert heads_to_prune(SCORES, count=3, gqa_group_size=2) == {0: [0, 1], 2: [2, 3]}  # 1.5 groups -> 2
    assert heads_to_prune(SCORES, count=12, gqa_group_size=2) == {0: [0, 1], 1: [0, 1], 2: [2, 3]}
    assert heads_to_prune(SCORES, count=2, per_layer=True, gqa_group_size=2) == {0: [0, 1], 1: [0, 1], 2: [2, 3]}


@pytest.mark.parametrize("seed", range(3))
def test_gqa_plans_are_valid_for_prune_heads(seed):
    model = tiny_model("llama")  # 4 query heads over 2 KV heads
    scores = torch.rand(3, 4, generator=torch.Generator().manual_seed(seed))
    plans = [
        heads_to_prune(scores, 0.5, gqa_group_size=2),
        heads_to_prune(scores, count=7, gqa_group_size=2, keep_at_least_one=False),
        heads_to_prune(scores, count=2, per_layer=True, gqa_group_size=2),
        best_head_per_layer(scores, gqa_group_size=2),
    ]
    for plan in plans:
        pruned = hfprune.prune_heads(copy.deepcopy(model), plan)
        with torch.no_grad():
            assert pruned(**tiny_inputs()).logits.isfinite().all()
    with pytest.raises(hfprune.PruningError, match="uneven"):  # the test would notice an invalid plan
        hfprune.prune_heads(copy.deepcopy(model), heads_to_prune(scores, count=1))


def test_best_head_per_layer():
    assert best_head_per_layer(SCORES) == {0: [0, 1, 2], 1: [0, 1, 2], 2: [1, 2, 3]}
    assert best_head_per_layer(SCORES, gqa_group_size=2) == {0: [0, 1], 1: [0, 1], 2: [2, 3]}
    scores = SCORES.clone()
    scores[2, :3] = NAN
    scores[1, 1] = 0.8  # a tie keeps the lower index
    assert best_head_per_layer(scores) == {0: [0, 1, 2], 1: [0, 2, 3]}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(fraction=1.0), r"fraction must be a number in \[0, 1\)"),
        (dict(fraction=-0.1), "fraction"),
        (dict(fraction=0.5, count=2), "exactly one"),
        (dict(), "exactly one"),
        (dict(count=13), r"count must be an integer in \[0, 12\]"),
        (dict(count=5, per_layer=True), r"\[0, 4\]"),
        (dict(count=1.5), "count"),
        (dict(count=1, gqa_group_size=3), "does not divide"),
    ],
)
def test_heads_to_prune_bad_input(kwargs, message):
    with pytest.raises(hfprune.PruningError, match=message):
        heads_to_prune(SCORES, **kwargs)


def test_scores_must_be_a_matrix():
    with pytest.raises(hfprune.PruningError, match="2-D \\[num_layers"):
        heads_to_prune(SCORES[0], count=1)


# ---- hardware-friendly widths and FFN plans ------------------------------------------------------------------

def test_multiple_of_rounds_kept_heads_per_layer():
    # count=3 takes heads 0-2 of layer 0 (1 left); rounded to 2 kept, so only the two lowest go.
    assert heads_to_prune(SCORES, count=3, multiple_of=2) == {0: [0, 1]}
    # count=5 also leaves 3 in layers 1 and 2: 2 and 4 are equally near, and a tie keeps more.
    assert heads_to_prune(SCORES, count=5, multiple_of=2) == {0: [0, 1]}
    assert heads_to_prune(SCORES, 0.5, per_layer=True, multiple_of=4) == {}
    everything = heads_to_prune(SCORES, 0.75, per_layer=True, multiple_of=4, keep_at_least_one=False)
    assert everything == {layer: [0, 1, 2, 3] for layer in range(3)}
    assert heads_to_prune(SCORES, 0.75, per_layer=True, multiple_of=4) == {}  # 1 head left rounds up to all 4


def test_multiple_of_with_gqa_counts_heads_in_whole_groups():
    assert heads_to_prune(SCORES, count=2, gqa_group_size=2, multiple_of=2) == {0: [0, 1]}
    with pytest.raises(hfprune.PruningError, match="multiple of the KV group size 2"):
        heads_to_prune(SCORES, count=2, gqa_group_size=2, multiple_of=3)
    with pytest.raises(hfprune.PruningError, match="multiple_of must be a positive integer"):
        heads_to_prune(SCORES, count=2, multiple_of=0)


def test_ffn_to_prune_per_layer_global_and_rounded():
    scores = torch.stack([torch.arange(8.0), torch.arange(8.0).flip(0) + 0.5])
    assert ffn_to_prune(scores, 0.5) == {0: [0, 1, 2, 3], 1: [4, 5, 6, 7]}
    assert ffn_to_prune(scores, count=3, per_layer=False) == {0: [0, 1], 1: [7]}
    assert ffn_to_prune(scores, 0.3, multiple_of=4) == {}  # 6 kept: 4 and 8 tie, the wider wins
    assert ffn_to_prune(scores, 0.4, multiple_of=4) == {0: [0, 1, 2, 3], 1: [4, 5, 6, 7]}  # 5 kept -> 4
    assert ffn_to_prune(scores, 0.9, multiple_of=4) == {0: list(range(8)), 1: list(range(8))}  # whole MLPs
    assert ffn_to_prune(scores, 0.9, multiple_of=4, keep_at_least_one=True) == {0: [0, 1, 2, 3], 1: [4, 5, 6, 7]}
    scores[0, :2] = NAN  # already gone: not candidates, and the 6 left round to a multiple of 4 of them
    assert ffn_to_prune(scores, 0.5, multiple_of=4) == {0: [2, 3], 1: [4, 5, 6, 7]}


def test_ffn_plan_with_multiple_of_gives_rounded_widths():
    model = tiny_model("bert")  # intermediate_size 24
    scores = hfprune.magnitude_ffn_scores(model)
    hfprune.prune_ffn(model, ffn_to_prune(scores, 0.3, multiple_of=8))
    widths = [layer.intermediate.dense.out_features for layer in model.bert.encoder.layer]
    assert widths == [16, 16, 16]
    masked = ffn_to_prune(hfprune.magnitude_ffn_scores(model), 0.5, multiple_of=8)
    hfprune.prune_ffn(model, masked)
    assert [layer.intermediate.dense.out_features for layer in model.bert.encoder.layer] == [8, 8, 8]


# ---- layers_to_drop ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "strategy, expected",
    [
        ("top", [8, 9, 10, 11]),
        ("bottom", [0, 1, 2, 3]),
        ("even", [4, 6, 8, 10]),
        ("odd", [5, 7, 9, 11]),
        ("symmetric", [4, 5, 6, 7]),
    ],
)
def test_sajjad_strategies_on_12_layers(strategy, expected):
    assert layers_to_drop(12, 4, strategy) == expected


def test_layer_strategies_edge_cases():
    assert layers_to_drop(12, 0, "top") == []
    assert layers_to_drop(12, 6, "even") == [0, 2, 4, 6, 8, 10]
    assert layers_to_drop(12, 3, "symmetric") == [4, 5, 6]
    assert layers_to_drop(6, 2, "symmetric") == [2, 3]
    cosine = torch.tensor([0.5, 0.9, NAN, 0.95, 0.9, 0.1])
    assert layers_to_drop(6, 2, "contribution", scores=cosine) == [1, 3]  # tie 0.9: lower index first
    assert layers_to_drop(6, 3, "contribution", scores=cosine) == [1, 3, 4]


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((12, 12), {}, r"k must be an integer in \[0, 11\]"),
        ((12, -1), {}, "k must be"),
        ((12, 2), dict(strategy="middle"), "unknown layer-dropping strategy 'middle'"),
        ((3, 2), dict(strategy="odd"), "only 1 odd layers"),
        ((12, 2), dict(strategy="contribution"), r"needs scores of shape \[12\]"),
        ((12, 2), dict(strategy="top", scores=torch.zeros(12)), "takes no scores"),
        ((3, 2), dict(strategy="contribution", scores=torch.tensor([NAN, NAN, 1.0])), "only 1 layers have scores"),
        ((0, 0), {}, "num_layers"),
    ],
)
def test_layers_to_drop_bad_input(args, kwargs, message):
    with pytest.raises(hfprune.PruningError, match=message):
        layers_to_drop(*args, **kwargs)


# ---- iterative_head_pruning -----------------------------------------------------------------------------
def scoring_data():
    inputs = tiny_inputs()
    inputs["labels"] = torch.tensor([0, 2])
    return [inputs]


def kept_heads(model):
    record = hfprune.get_record(model)
    return {layer: record["kept_heads"][i] for i, layer in enumerate(record["kept_layers"])}


def pruned_by_history(history, num_layers=3, num_heads=4):
    gone = {layer: set() for layer in range(num_layers)}
    for entry in history:
        if entry["applied"]:
            for layer, heads in entry["heads_pruned"].items():
                gone[layer] |= set(heads)
    return {layer: [h for h in range(num_heads) if h not in gone[layer]] for layer in gone}


def test_iterative_pruning_reaches_target_and_rescoring_each_step():
    model, data = tiny_model("bert"), scoring_data()
    seen = []

    def scorer(model, dataloader):
        seen.append(head_importance(model, dataloader))
        return seen[-1]

    history = iterative_head_pruning(model, data, target_sparsity=0.5, step=0.25, scorer=scorer)
    assert [entry["step"] for entry in history] == [0, 1, 2]
    assert [entry["sparsity"] for entry in history] == [0.0, 0.25, 0.5]
    assert all(entry["applied"] and entry["metric"] is None for entry in history)
    assert head_sparsity(model) == 0.5
    assert kept_heads(model) == pruned_by_history(history)
    for scores, entry in zip(seen, history[1:]):  # each step ranks the scores of the model as it then was
        assert entry["heads_pruned"] == heads_to_prune(scores, count=3)
    assert seen[1].isnan().sum() == 3  # step 2 scored the pruned model


def test_iterative_pruning_last_step_stops_at_target():
    model, data = tiny_model("bert"), scoring_data()
    history = iterative_head_pruning(model, data, target_sparsity=0.5, step=0.4)  # 5 heads, then 1
    assert [sum(map(len, entry["heads_pruned"].values())) for entry in history] == [0, 5, 1]
    assert head_sparsity(model) == 0.5 and kept_heads(model) == pruned_by_history(history)


def test_iterative_pruning_gqa_prunes_whole_groups():
    model, data = tiny_model("llama"), [tiny_inputs()]
    history = iterative_head_pruning(model, data, target_sparsity=0.5, step=0.2)  # 2 heads = 1 group a step
    assert len(history) == 4 and head_sparsity(model) == 0.5
    assert all(heads in ([0, 1], [2, 3]) for entry in history for heads in entry["heads_pruned"].values())
    assert kept_heads(model) == pruned_by_history(history)


def test_iterative_pruning_stops_below_threshold_without_applying_the_step():
    model, data = tiny_model("bert"), scoring_data()
    metrics, logits = iter([1.0, 0.95, 0.9, 0.5]), []

    def eval_fn(model):
        with torch.no_grad():
            logits.append(model(**data[0]).logits)
        return next(metrics)

    history = iterative_head_pruning(
        model, data, target_sparsity=0.9, step=0.1, eval_fn=eval_fn, min_metric_fraction=0.8
    )
    assert [entry["metric"] for entry in history] == [1.0, 0.95, 0.9, 0.5]
    assert [entry["applied"] for entry in history] == [True, True, True, False]
    assert head_sparsity(model) == pytest.approx(2 / 12)
    assert kept_heads(model) == pruned_by_history(history)
    with torch.no_grad():
        final = model(**data[0]).logits
    torch.testing.assert_close(final, logits[2], rtol=1e-5, atol=1e-5)  # evaluated with masks == pruned
    assert not torch.allclose(final, logits[3], atol=1e-5)


def test_iterative_pruning_records_metric_without_threshold():
    model, data = tiny_model("bert"), scoring_data()
    history = iterative_head_pruning(model, data, 0.25, step=0.25, eval_fn=lambda model: 1.0)
    assert [entry["metric"] for entry in history] == [1.0, 1.0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(target_sparsity=1.0), "target_sparsity"),
        (dict(target_sparsity=0.5, step=0), r"step must be a number in \(0, 1\]"),
        (dict(target_sparsity=0.5, min_metric_fraction=0.9), "needs an eval_fn"),
        (dict(target_sparsity=0.5, min_metric_fraction=1.5, eval_fn=len), r"min_metric_fraction must be .* \(0, 1\]"),
    ],
)
def test_iterative_pruning_bad_input(kwargs, message):
    with pytest.raises(hfprune.PruningError, match=message):
        iterative_head_pruning(tiny_model("bert"), scoring_data(), **kwargs)
