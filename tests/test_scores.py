"""Importance scores, checked against finite differences and direct computations on tiny models."""


import inspect
import re

import pytest
import torch
from conftest import DECODERS, FAMILIES, GQA, tiny_inputs, tiny_model

import hfprune
from hfprune.engine.masks import apply_masks
from hfprune.scoring.loss import (
    ffn_importance,
    head_ablation_scores,
    head_importance,
    importance_scores,
    mlp_importance,
    taylor_head_scores,
)
from hfprune.scoring.methods import score_units
from hfprune.scoring.similarity import angular_distance, block_influence, layer_cosine_scores
from hfprune.scoring.weights import magnitude_ffn_scores, magnitude_head_scores, random_ffn_scores, random_head_scores

EPS = 1e-2


def batches(family, count=1, batch=2):
    """`count` batches with labels for the classifiers (the decoders score their own input ids)."""
    out = []
    for seed in range(count):
        inputs = tiny_inputs(batch=batch, seed=seed + 1)
        if family not in DECODERS:
            inputs["labels"] = torch.arange(batch) % 3
        out.append(inputs)
    return out


def lm_labels(batch):
    return batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)


def loss_of(model, batch, **masks):
    with torch.no_grad(), hfprune.apply_masks(model, **masks):
        if "labels" not in batch:
            batch = {**batch, "labels": lm_labels(batch)}
        return model(**batch).loss.item()


def float64_lm_loss(outputs, batch):
    """Next-token loss in the logits' dtype (transformers' own LM loss upcasts, or downcasts, to float32)."""
    logits, labels = outputs.logits[:, :-1], lm_labels(batch)[:, 1:]
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


def derivative(loss):
    """d loss / d offset at 0, fourth-order central differences. Llama runs RMSNorm and eager softmax in
    float32 even in a float64 model, so its loss carries ~1e-8 noise and the step cannot be tiny."""
    return (loss(-2 * EPS) - 8 * loss(-EPS) + 8 * loss(EPS) - loss(2 * EPS)) / (12 * EPS)


def central_difference(model, batch, name, mask, index, loss_fn=None):
    def loss(offset):
        shifted = mask.clone()
        shifted[index] += offset
        if loss_fn is None:
            return loss_of(model, batch, **{name: shifted})
        with torch.no_grad(), hfprune.apply_masks(model, **{name: shifted}):
            return loss_fn(model(**batch), batch).item()

    return derivative(loss)


def assert_close(actual, expected, rtol=1e-4):
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=rtol * scale)


# ---- gradient importance ---------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_head_importance_matches_finite_differences(family, impl):
    model = tiny_model(family, impl).double()
    (batch,) = batches(family)
    loss_fn = float64_lm_loss if family in DECODERS else None
    scores = head_importance(model, [batch], normalize=False, loss_fn=loss_fn)
    mask = hfprune.make_head_mask(model).double()
    expected = torch.tensor(
        [
            [abs(central_difference(model, batch, "head_mask", mask, (layer, head), loss_fn)) for head in range(4)]
            for layer in range(3)
        ],
        dtype=torch.float64,
    )
    assert scores.dtype == torch.float64
    assert_close(scores, expected)


def test_ffn_and_mlp_importance_match_finite_differences():
    model = tiny_model("bert").double()
    (batch,) = batches("bert")
    ffn = ffn_importance(model, [batch], normalize=False)
    mask = hfprune.make_ffn_mask(model).double()
    for index in [(0, 0), (1, 7), (2, 23)]:
        expected = abs(central_difference(model, batch, "ffn_mask", mask, index))
        assert ffn[index].item() == pytest.approx(expected, rel=1e-6)

    def mlp_loss(layer, offset):  # scale one layer's whole MLP output, bias included
        output = model.bert.encoder.layer[layer].output.dense
        hook = output.register_forward_hook(lambda module, args, out: out * (1 + offset))
        try:
            return loss_of(model, batch)
        finally:
            hook.remove()

    expected = torch.tensor([abs(derivative(lambda offset: mlp_loss(layer, offset))) for layer in range(3)])
    assert_close(mlp_importance(model, [batch]), expected)


def test_unnormalized_importance_is_mean_of_batch_gradients_and_rows_normalize():
    model = tiny_model("bert")
    data = batches("bert", count=2)
    mask = hfprune.make_head_mask(model).requires_grad_()
    manual = torch.zeros_like(mask)
    with hfprune.apply_masks(model, head_mask=mask):
        for batch in data:
            (grad,) = torch.autograd.grad(model(**batch).loss, mask)
            manual += grad.abs() / len(data)
    model.zero_grad(set_to_none=True)
    torch.testing.assert_close(head_importance(model, data, normalize=False), manual)

    normalized = head_importance(model, data)
    torch.testing.assert_close(normalized, manual / manual.norm(dim=1, keepdim=True))
    torch.testing.assert_close(normalized.norm(dim=1), torch.ones(3))


def test_one_pass_computes_every_gate_kind():
    model = tiny_model("llama")
    data = batches("llama")
    together = importance_scores(model, data, kinds=("heads", "ffn", "mlp"))
    torch.testing.assert_close(together["heads"], head_importance(model, data))
    torch.testing.assert_close(together["ffn"], ffn_importance(model, data))
    torch.testing.assert_close(together["mlp"], mlp_importance(model, data))


def test_causal_lm_without_labels_scores_its_input():
    model = tiny_model("gpt2")
    (batch,) = batches("gpt2")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    torch.testing.assert_close(head_importance(model, [batch]), head_importance(model, [{**batch, "labels": labels}]))


def test_custom_loss_fn():
    model = tiny_model("bert")
    (batch,) = batches("bert")
    doubled = head_importance(model, [batch], normalize=False, loss_fn=lambda outputs, batch: 2 * outputs.loss)
    torch.testing.assert_close(doubled, 2 * head_importance(model, [batch], normalize=False))


def test_scores_of_a_pruned_model_keep_original_indices():
    model = tiny_model("bert")
    data = batches("bert")
    masked = hfprune.make_head_mask(model, {0: [1, 3]}).requires_grad_()
    masks = dict(
        head_mask=masked,
        layer_mask=hfprune.make_layer_mask(model, [1]),
        ffn_mask=hfprune.make_ffn_mask(model, {0: [0, 5], 2: list(range(24))}),
    )
    with hfprune.apply_masks(model, **masks):
        (expected,) = torch.autograd.grad(model(**data[0]).loss, masked)
    model.zero_grad(set_to_none=True)

    hfprune.prune_heads(model, {0: [1, 3]})
    hfprune.drop_layers(model, [1])
    hfprune.prune_ffn(model, {0: [0, 5], 2: list(range(24))})
    scores = head_importance(model, data, normalize=False)
    gone = torch.zeros(3, 4, dtype=torch.bool)
    gone[0, [1, 3]] = gone[1] = True
    assert scores.isnan().equal(gone)
    torch.testing.assert_close(scores[~gone], expected.abs()[~gone])
    assert head_importance(model, data)[0].nan_to_num().norm().item() == pytest.approx(1.0)

    ffn = ffn_importance(model, data)
    assert ffn.isnan().nonzero().tolist()[:2] == [[0, 0], [0, 5]]
    assert ffn[1].isnan().all() and ffn[2].isnan().all() and not ffn[0, 1].isnan()
    assert mlp_importance(model, data).isnan().tolist() == [False, True, True]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_scores_with_nan_for_gone_heads(family):
    model = tiny_model(family)
    hfprune.prune_heads(model, {0: [2, 3]} if family in GQA else {0: [1]})
    scores = importance_scores(model, batches(family), kinds=("heads", "ffn", "mlp"))
    assert scores["heads"].isnan().sum().item() == (2 if family in GQA else 1)
    assert not scores["ffn"].isnan().any() and not scores["mlp"].isnan().any()
    assert (scores["mlp"] > 0).all()


def test_model_state_is_restored():
    model = tiny_model("bert").train()
    model.bert.embeddings.requires_grad_(False)
    model.classifier.eval()  # a mixed mode must come back as it was
    flags = [p.requires_grad for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    data = batches("bert")
    for score in (head_importance, taylor_head_scores, head_ablation_scores, layer_cosine_scores):
        score(model, data)
    importance_scores(model, data, kinds=("ffn", "mlp"))
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert [m.training for m in model.modules()] == modes


def test_bad_input():
    model = tiny_model("bert")
    data = batches("bert")
    with pytest.raises(hfprune.PruningError, match="unknown gate kinds"):
        importance_scores(model, data, kinds=("neurons",))
    with pytest.raises(hfprune.PruningError, match="no batches"):
        head_importance(model, [])
    with pytest.raises(hfprune.PruningError, match="no loss"):
        head_importance(model, [tiny_inputs()])
    with pytest.raises(hfprune.PruningError, match="metric"):
        head_ablation_scores(model, data, metric="accuracy")
    with pytest.raises(hfprune.PruningError, match=r"n must be in \[1, 3\]"):
        angular_distance(model, data, n=4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_scores_on_gpu_with_cpu_batches():
    model = tiny_model("llama")
    data = batches("llama")
    expected = head_importance(model, data), layer_cosine_scores(model, data)
    model.cuda()
    actual = head_importance(model, data), layer_cosine_scores(model, data)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a.cpu(), e, rtol=1e-3, atol=1e-4)


# ---- Taylor, ablation, data-free baselines ----------------------------------------------------------------
def test_taylor_is_per_example_activation_times_gradient():
    model = tiny_model("bert")
    (batch,) = batches("bert", batch=3)
    contexts = []

    def keep_context(module, args):  # the per-head context entering the output projection
        args[0].retain_grad()
        contexts.append(args[0])

    hooks = [layer.attention.output.dense.register_forward_pre_hook(keep_context) for layer in model.bert.encoder.layer]
    expected = torch.zeros(3, 4)
    for index in range(3):
        contexts.clear()
        example = {key: value[index : index + 1] for key, value in batch.items()}
        model(**example).loss.backward()
        for layer, context in enumerate(contexts):  # [1, tokens, heads * head_dim]
            expected[layer] += (context * context.grad).reshape(-1, 4, 8).sum(dim=(0, 2)).abs() / 3
    for hook in hooks:
        hook.remove()
    model.zero_grad(set_to_none=True)
    torch.testing.assert_close(taylor_head_scores(model, [batch]), expected)
    # the same as gradient importance when every batch holds one example
    singles = [{key: value[i : i + 1] for key, value in batch.items()} for i in range(3)]
    torch.testing.assert_close(taylor_head_scores(model, [batch]), head_importance(model, singles, normalize=False))


def test_fisher_is_the_mean_squared_per_example_gate_gradient():
    """The diagonal empirical Fisher information of the head and FFN gates (Kwon et al. 2022), from autograd on
    each example alone."""
    model = tiny_model("bert").double()
    (batch,) = batches("bert", batch=3)
    expected = {"heads": torch.zeros(3, 4, dtype=torch.float64), "ffn": torch.zeros(3, 24, dtype=torch.float64)}
    for index in range(3):
        example = {key: value[index : index + 1] for key, value in batch.items()}
        gates = {kind: torch.ones_like(value, requires_grad=True) for kind, value in expected.items()}
        with apply_masks(model, head_mask=gates["heads"], ffn_mask=gates["ffn"]):
            loss = model(**example).loss
        for kind, grad in zip(gates, torch.autograd.grad(loss, list(gates.values()))):
            expected[kind] += grad.square() / 3
    scores = score_units(model, "fisher", ("heads", "ffn"), [batch])
    for kind, value in expected.items():
        torch.testing.assert_close(scores[kind], value)


def test_ablation_is_the_loss_change_of_masking_one_head():
    model = tiny_model("llama")
    data = batches("llama", count=2)
    hfprune.prune_heads(model, {2: [0, 1]})
    scores = head_ablation_scores(model, data)
    base = sum(loss_of(model, batch) for batch in data) / 2
    for layer, head in [(0, 0), (1, 3), (2, 2)]:
        mask = hfprune.make_head_mask(model, {layer: [head]})
        masked = sum(loss_of(model, batch, head_mask=mask) for batch in data) / 2
        assert scores[layer, head].item() == pytest.approx(masked - base, abs=1e-6)
    assert scores.isnan().nonzero().tolist() == [[2, 0], [2, 1]]

    metric = head_ablation_scores(model, data, metric=lambda model, data: float(model(**data[0]).logits.sum()))
    assert metric.shape == (3, 4) and metric[0, 0] != 0


def test_magnitude_equals_weight_slices():
    bert, gpt2, llama = tiny_model("bert"), tiny_model("gpt2"), tiny_model("llama")
    attention = bert.bert.encoder.layer[1].attention
    q, k, v = (getattr(attention.self, name).weight.reshape(4, 8, 32) for name in ("query", "key", "value"))
    o = attention.output.dense.weight.T.reshape(4, 8, 32)
    expected = sum(w.pow(2).sum(dim=(1, 2)) for w in (q, k, v, o)).sqrt()
    torch.testing.assert_close(magnitude_head_scores(bert)[1].float(), expected.detach())

    attn = gpt2.transformer.h[0].attn  # Conv1D: c_attn weight [in, q | k | v], c_proj weight [heads, out]
    fused = attn.c_attn.weight.T.reshape(3, 4, 8, 32)
    expected = (fused.pow(2).sum(dim=(0, 2, 3)) + attn.c_proj.weight.reshape(4, 8, 32).pow(2).sum(dim=(1, 2))).sqrt()
    torch.testing.assert_close(magnitude_head_scores(gpt2)[0].float(), expected.detach())

    attn = llama.model.layers[2].self_attn  # 4 query heads over 2 KV heads
    kv = (attn.k_proj.weight.reshape(2, -1).pow(2).sum(1) + attn.v_proj.weight.reshape(2, -1).pow(2).sum(1))
    own = attn.q_proj.weight.reshape(4, -1).pow(2).sum(1) + attn.o_proj.weight.T.reshape(4, -1).pow(2).sum(1)
    torch.testing.assert_close(magnitude_head_scores(llama)[2].float(), (own + kv.repeat_interleave(2)).sqrt().detach())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_magnitude_survives_surgery(family):
    model = tiny_model(family)
    before = magnitude_head_scores(model)
    hfprune.prune_heads(model, {0: [0, 1], 1: [0, 1, 2, 3]} if family in GQA else {0: [1, 3], 1: [0, 1, 2, 3]})
    after = magnitude_head_scores(model)
    assert after.isnan().sum().item() == 6
    torch.testing.assert_close(after[~after.isnan()], before[~after.isnan()])


def test_random_scores():
    model = tiny_model("llama")
    assert random_head_scores(model, seed=3).equal(random_head_scores(model, seed=3))
    assert not random_head_scores(model, seed=3).equal(random_head_scores(model, seed=4))
    hfprune.drop_layers(model, [0])
    assert random_head_scores(model).isnan().sum(dim=1).tolist() == [4, 0, 0]


# ---- layer similarity ---------------------------------------------------------------------------------------
def manual_cosines(model, batch, span=1, last_token=False):
    """From output_hidden_states (no final norm in BERT and XLNet: entry l + 1 is layer l's output)."""
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True).hidden_states
    mask = batch["attention_mask"].bool()
    if last_token:
        last = mask.sum(dim=1) - 1  # right padding
        mask = torch.nn.functional.one_hot(last, mask.shape[1]).bool()
    return torch.stack(
        [torch.cosine_similarity(hidden[l], hidden[l + span], dim=-1)[mask] for l in range(len(hidden) - span)]
    ).double()


@pytest.mark.parametrize("family", ["bert", "xlnet"])
def test_layer_cosine_equals_hidden_state_cosines(family):
    model = tiny_model(family)
    data = batches(family, count=2)
    expected = torch.cat([manual_cosines(model, batch) for batch in data], dim=1).mean(dim=1)
    torch.testing.assert_close(layer_cosine_scores(model, data), expected)
    torch.testing.assert_close(block_influence(model, data), 1 - expected)

    angles = torch.cat([manual_cosines(model, batch, 2, last_token=True) for batch in data], dim=1)
    expected = torch.arccos(angles.clamp(-1, 1)).mean(dim=1) / torch.pi
    torch.testing.assert_close(angular_distance(model, data, n=2)[:2], expected)
    assert angular_distance(model, data, n=2)[2].isnan()


@pytest.mark.parametrize("family", ["bert", "llama", "xlnet"])
def test_identity_layer_has_cosine_one(family):
    model = tiny_model(family).double()
    data = batches(family)
    with hfprune.skip_layers(model, [1]):
        cosine, influence = layer_cosine_scores(model, data), block_influence(model, data)
        angle = angular_distance(model, data, last_token=False)
    assert cosine[1].item() == pytest.approx(1.0, abs=1e-12)
    assert influence[1].item() == pytest.approx(0.0, abs=1e-12)
    assert angle[1].item() == pytest.approx(0.0, abs=1e-6)
    assert (cosine[[0, 2]] < 1 - 1e-3).all()

    hfprune.drop_layers(model, [1])  # a dropped layer is NaN; the others see the same hidden states
    dropped = layer_cosine_scores(model, data)
    assert dropped[1].isnan()
    torch.testing.assert_close(dropped[[0, 2]], cosine[[0, 2]])


def test_magnitude_ffn_scores_match_weights_and_survive_surgery():
    model = tiny_model("llama")
    scores = hfprune.magnitude_ffn_scores(model)
    mlp = model.model.layers[1].mlp
    neuron = 5
    expected = (
        mlp.gate_proj.weight[neuron].double().pow(2).sum()
        + mlp.up_proj.weight[neuron].double().pow(2).sum()
        + mlp.down_proj.weight[:, neuron].double().pow(2).sum()
    ).sqrt()
    assert torch.isclose(scores[1, neuron], expected)
    hfprune.prune_ffn(model, {1: [0, 1, 2]})
    after = hfprune.magnitude_ffn_scores(model)
    assert torch.isnan(after[1, :3]).all()
    assert torch.allclose(after[1, 3:], scores[1, 3:]) and torch.allclose(after[0], scores[0])


# ---- the method registry -----------------------------------------------------------------------------
def same(a, b):
    """Bit-identical, NaN where the other is NaN."""
    assert a.dtype == b.dtype and a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_score_units_returns_what_the_direct_calls_do(family):
    model = tiny_model(family).double()
    hfprune.prune_heads(model, {0: [0, 1]} if family in GQA else {0: [1, 3]})  # NaN patterns must match too
    hfprune.prune_ffn(model, {1: [0, 5]})
    data = batches(family, count=2)
    both = ("heads", "ffn")
    same(score_units(model, "importance", dataloader=data)["heads"], head_importance(model, data))
    direct = importance_scores(model, data, both, normalize=False)
    for kind, value in score_units(model, "importance", both, data, normalize=False).items():
        same(value, direct[kind])
    same(score_units(model, "importance", "mlp", data)["mlp"], mlp_importance(model, data))
    same(score_units(model, "taylor", dataloader=data)["heads"], taylor_head_scores(model, data))
    direct = importance_scores(model, data, both, normalize=False, per_example=True)
    for kind, value in score_units(model, "taylor", both, data).items():
        same(value, direct[kind])
    direct = importance_scores(model, data, both, normalize=False, per_example=True, squared=True)
    for kind, value in score_units(model, "fisher", both, data).items():
        same(value, direct[kind])
    same(score_units(model, "ablation", dataloader=data)["heads"], head_ablation_scores(model, data))
    magnitude = score_units(model, "magnitude", both)
    same(magnitude["heads"], magnitude_head_scores(model))
    same(magnitude["ffn"], magnitude_ffn_scores(model))
    random = score_units(model, "random", both, seed=7)
    same(random["heads"], random_head_scores(model, seed=7))
    # what PruningTrainer built inline before random_ffn_scores existed
    present = magnitude_ffn_scores(model)
    noise = torch.rand(present.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    same(random["ffn"], noise.masked_fill(present.isnan(), float("nan")))
    same(random["ffn"], random_ffn_scores(model, seed=7))
    assert random["ffn"].isnan().sum().item() == 2 and not random_ffn_scores(model, seed=8).equal(random["ffn"])
    assert list(score_units(model, "magnitude", ["ffn", "heads", "ffn"])) == ["ffn", "heads"]


def test_score_units_rejects_what_it_cannot_score():
    model, data = tiny_model("bert"), batches("bert")
    for call, message in (
        (lambda: score_units(model, "l0"), "unknown scoring method 'l0'; choose importance, taylor, fisher, ablation"),
        (lambda: score_units(model, "ablation", "ffn", data), "'ablation' cannot score the unit kinds ['ffn']"),
        (lambda: score_units(model, "magnitude", "mlp"), "cannot score the unit kinds ['mlp']"),
        (lambda: score_units(model, "random", ()), "cannot score"),
        (lambda: score_units(model, "importance"), "need data"),
    ):
        with pytest.raises(hfprune.PruningError, match=re.escape(message)):
            call()


def test_method_names_have_one_source(tmp_path):
    from hfprune.cli import measure, prune

    from hfprune.constants import DATA_FREE_METHODS, METHODS, PRUNING_METHODS, PRUNING_SCHEDULES, SCORING_METHODS
    from hfprune.jobs.score import score_heads
    from hfprune.pruning_config import PruningArguments
    from hfprune.scoring.methods import SCORERS

    assert tuple(METHODS) == SCORING_METHODS and set(SCORERS) == set(SCORING_METHODS)  # one scorer per entry
    assert DATA_FREE_METHODS == tuple(name for name, method in METHODS.items() if not method.needs_data)
    assert set(PRUNING_METHODS) == set(SCORING_METHODS) - {"ablation"} | {"l0"}
    assert hfprune.training.trainer.PRUNING_METHODS is PRUNING_METHODS
    assert hfprune.training.trainer.PRUNING_SCHEDULES is PRUNING_SCHEDULES

    def help_of(command, option):
        return inspect.signature(command).parameters[option].default.help

    listed = lambda text, names: sorted({name for name in re.findall(r"[a-z_0-9]+", text) if name in names})
    assert listed(help_of(prune.prune, "method"), PRUNING_METHODS + SCORING_METHODS) == sorted(PRUNING_METHODS)
    assert listed(help_of(prune.prune, "schedule"), PRUNING_SCHEDULES) == sorted(PRUNING_SCHEDULES)
    assert listed(help_of(measure.score, "method"), PRUNING_METHODS + SCORING_METHODS) == sorted(SCORING_METHODS)

    def accepted(method):
        try:
            PruningArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, pruning_method=method)
        except hfprune.PruningError as error:
            assert "pruning_method must be one of" in str(error)
            return False
        return True

    assert [m for m in (*SCORING_METHODS, "l0", "obd") if accepted(m)] == list(PRUNING_METHODS)
    with pytest.raises(hfprune.PipelineInputError, match="unknown scoring method 'l0'"):
        score_heads(tiny_model("bert"), None, None, method="l0")  # refused before any data is touched
