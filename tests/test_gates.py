"""L0 hard-concrete head gates: the distribution, the penalty, training, and `finalize` == the gated model."""

import math

import pytest
import torch
from conftest import FAMILIES, GQA, tiny_inputs, tiny_model

import hfprune
from hfprune.engine.record import kept_ffn
from hfprune.errors import PruningError, TargetOutOfReachError
from hfprune.training.gates import GAMMA, ZETA, HeadGates

FINALIZE_FAMILIES = ["bert", "distilbert", "xlnet", "gpt2", "llama", "qwen3"]


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def with_labels(family, inputs):
    """Labels for a real loss: classes for the classifiers, the input ids for the language models."""
    labels = inputs["input_ids"] if family in {"gpt2", *GQA} else torch.arange(len(inputs["input_ids"])) % 3
    return {**inputs, "labels": labels}


def set_log_alpha(gates, pattern):
    """log_alpha = +10 (z_hat exactly 1) where `pattern` is true, -10 (z_hat exactly 0) elsewhere."""
    with torch.no_grad():
        gates.log_alpha.copy_(torch.where(torch.as_tensor(pattern), 10.0, -10.0))


def head_hook_count(model):
    adapter = hfprune.get_adapter(model)
    count = len(model._forward_pre_hooks)
    for layer in adapter.get_layers(model):
        try:
            count += len(layer.get_submodule(adapter.output)._forward_pre_hooks)
        except AttributeError:  # XLNet wraps post_attention instead, or the attention block is gone
            count += "post_attention" in getattr(layer, "rel_attn", layer).__dict__
    return count


# ---- the distribution ----------------------------------------------------------------------------------
@pytest.mark.parametrize("init_keep", [0.5, 0.95, 0.99])
def test_init_open_probability(init_keep):
    model = tiny_model("bert")
    gates = HeadGates(model, init_keep=init_keep)
    assert gates.log_alpha.shape == (3, 4) and gates.log_alpha.dtype == torch.float32
    assert torch.allclose(gates.open_probability(), torch.full((3, 4), init_keep))
    assert gates.expected_l0().item() == pytest.approx(12 * init_keep, rel=1e-5)
    # Monte Carlo agrees with the closed form P(z > 0).
    torch.manual_seed(0)
    draws = torch.stack([gates.sample_gates() for _ in range(2000)])
    assert (draws > 0).float().mean().item() == pytest.approx(init_keep, abs=0.02)
    assert draws.min() >= 0 and draws.max() <= 1 and (draws == 1).any()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_starts_open_and_detaches_cleanly(family):
    model, inputs = tiny_model(family), tiny_inputs()
    reference = logits(model, inputs)
    gates = HeadGates(model, init_keep=0.99).attach(model)  # z_hat = 1 exactly: the model is unchanged
    assert gates.log_alpha.shape == (3, 2 if family in GQA else 4)
    assert (gates.gate_values() == 1).all()
    assert torch.allclose(logits(model, inputs), reference, atol=1e-6)
    gates.detach()
    assert head_hook_count(model) == 0 and torch.equal(logits(model, inputs), reference)


def test_gqa_gates_are_per_kv_group():
    model = tiny_model("llama")
    gates = HeadGates(model)
    assert gates.log_alpha.shape == (3, 2) and gates.group_size == 2
    assert gates.total_heads == 12
    assert gates.gate_values().shape == (3, 4)
    assert torch.equal(gates.gate_values()[:, 0], gates.gate_values()[:, 1])


def test_stochastic_in_train_deterministic_in_eval():
    model, inputs = tiny_model("gpt2"), tiny_inputs()
    gates = HeadGates(model, init_keep=0.6).attach(model)
    model.train()
    model.config.resid_pdrop = model.config.attn_pdrop = model.config.embd_pdrop = 0.0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    torch.manual_seed(0)
    assert not torch.equal(logits(model, inputs), logits(model, inputs))
    model.eval()
    first = logits(model, inputs)
    assert torch.equal(first, logits(model, inputs))
    # Eval mode is exactly apply_masks with z_hat times the layer scale n / max(1, sum z_hat).
    mask = gates.gate_values() * gates.layer_scale()[:, None]
    gates.detach()
    with hfprune.apply_masks(model, head_mask=mask):
        assert torch.allclose(first, logits(model, inputs), atol=1e-6)


@pytest.mark.parametrize("scale", [True, False])
def test_initial_gates_and_output_scaling(scale):
    model, inputs = tiny_model("bert"), tiny_inputs()
    reference = logits(model, inputs)
    gates = HeadGates(model, init_keep=0.95, scale_attention_output=scale).attach(model)
    z_hat = (torch.sigmoid(gates.log_alpha) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)
    assert torch.allclose(gates.gate_values(), z_hat)
    assert 0.8 < z_hat.min() < 0.9  # open with probability 0.95, but z_hat is not 1 yet
    # With scaling, uniform gates are cancelled exactly; without, every head is shrunk by z_hat.
    gated = logits(model, inputs)
    if scale:
        assert torch.allclose(gated, reference, atol=1e-5)
    else:
        assert (gated - reference).abs().max() > 1e-4
    gates.detach()
    assert torch.equal(logits(model, inputs), reference)


# ---- penalty and gradients -----------------------------------------------------------------------------
def test_penalty_warmup():
    gates = HeadGates(tiny_model("distilbert"), l0_lambda=0.2, warmup_steps=10, init_keep=0.9)
    full = 0.2 * 0.9  # lambda x expected fraction of heads kept
    assert gates.penalty(0).item() == 0.0
    assert gates.penalty(5).item() == pytest.approx(full / 2, rel=1e-5)
    assert gates.penalty(10).item() == pytest.approx(full, rel=1e-5)
    assert gates.penalty(1000).item() == pytest.approx(full, rel=1e-5)
    no_warmup = HeadGates(tiny_model("distilbert"), l0_lambda=0.2, init_keep=0.9)
    assert no_warmup.penalty(0).item() == pytest.approx(full, rel=1e-5)


def test_gradients_reach_log_alpha():
    model = tiny_model("llama")
    inputs = with_labels("llama", tiny_inputs())
    gates = HeadGates(model, l0_lambda=0.1).attach(model)
    model.train()
    (model(**inputs).loss + gates.penalty(0)).backward()
    assert gates.log_alpha.grad is not None and (gates.log_alpha.grad != 0).all()
    gates.log_alpha.grad = None
    gates.penalty(0).backward()  # the penalty alone pushes every gate towards closing
    assert (gates.log_alpha.grad > 0).all()


def test_one_sample_per_forward_survives_checkpointing():
    """The gates are drawn once per forward, so a checkpointed layer is recomputed with the same sample."""
    grads = []
    for checkpointing in (False, True):
        model = tiny_model("llama", "sdpa").train()
        if checkpointing:
            model.activation_checkpointing_enable()
        gates = HeadGates(model, init_keep=0.8).attach(model)
        torch.manual_seed(0)
        model(**with_labels("llama", tiny_inputs())).loss.backward()
        grads.append(gates.log_alpha.grad)
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], atol=1e-6)


# ---- training ------------------------------------------------------------------------------------------
def train_gates(family, l0_lambda, steps=40):
    """Adam on the gates only, model loss + penalty; returns the gates (model in eval mode)."""
    model = tiny_model(family).train()
    model.requires_grad_(False)
    inputs = with_labels(family, tiny_inputs(batch=4, length=8))
    gates = HeadGates(model, l0_lambda=l0_lambda, warmup_steps=5).attach(model)
    optimizer = torch.optim.Adam(gates.parameters(), lr=0.1)
    torch.manual_seed(0)
    for step in range(steps):
        loss = model(**inputs).loss + gates.penalty(step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), gates


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_training_closes_heads_and_lambda_sets_sparsity(family):
    results = [train_gates(family, l0_lambda)[1] for l0_lambda in (0.0, 0.5, 2.0)]
    closed = [sum(map(len, gates.heads_to_prune().values())) for gates in results]
    expected = [gates.expected_l0().item() for gates in results]
    assert closed[0] <= closed[1] <= closed[2] and closed[2] >= 8 > closed[0]
    assert expected[0] > expected[1] > expected[2]


def test_finalize_after_training_equals_gated():
    model, gates = train_gates("llama", 2.0)
    inputs = tiny_inputs()
    gates.binarize_()
    assert set(gates.gate_values().unique().tolist()) <= {0.0, 1.0}
    gated = logits(model, inputs)
    plan = gates.finalize(model)
    assert plan and torch.allclose(logits(model, inputs), gated, atol=1e-5, rtol=0)
    assert head_hook_count(model) == 0


# ---- finalize ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [True, False])
@pytest.mark.parametrize("family", FINALIZE_FAMILIES + ["llama-sdpa"])
def test_finalize_pruned_equals_gated(family, scale):
    family, _, impl = family.partition("-")
    model, inputs = tiny_model(family, impl or "eager"), tiny_inputs()
    gates = HeadGates(model, scale_attention_output=scale)
    units = gates.log_alpha.shape[1]
    # Layer 0 keeps some units, layer 1 keeps none (EmptyAttention), layer 2 keeps all.
    pattern = [[unit % 2 == 0 for unit in range(units)], [False] * units, [True] * units]
    set_log_alpha(gates, pattern)
    gates.attach(model)
    gated = logits(model, inputs)
    plan = gates.finalize(model)
    group = 4 // units
    assert plan == {"heads": {0: [h for h in range(4) if (h // group) % 2], 1: [0, 1, 2, 3]}, "ffn": {}}
    assert torch.allclose(logits(model, inputs), gated, atol=1e-5, rtol=0)
    assert head_hook_count(model) == 0
    gates.detach()  # idempotent
    assert hfprune.get_record(model)["kept_heads"] == [[h for h in range(4) if not (h // group) % 2], [], [0, 1, 2, 3]]


@pytest.mark.parametrize("family", ["bert", "qwen2"])
def test_gates_on_an_already_pruned_model(family):
    model, inputs = tiny_model(family), tiny_inputs()
    first = {0: [0, 1]} if family in GQA else {0: [1], 2: [0, 3]}
    hfprune.prune_heads(model, first)
    gates = HeadGates(model, init_keep=0.9)
    assert gates.total_heads == 12 - sum(map(len, first.values()))
    assert gates.expected_l0().item() == pytest.approx(0.9 * gates.total_heads, rel=1e-5)
    assert (gates.gate_values()[0, first[0]] == 0).all()
    set_log_alpha(gates, torch.rand(gates.log_alpha.shape, generator=torch.Generator().manual_seed(3)) > 0.5)
    gates.attach(model)
    gated = logits(model, inputs)
    plan = gates.finalize(model)["heads"]
    for layer, heads in plan.items():  # the plan never names a head that was already gone
        assert not set(heads) & set(first.get(layer, []))
    assert torch.allclose(logits(model, inputs), gated, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", sorted(GQA))
def test_gqa_plans_are_valid(family):
    model, inputs = tiny_model(family), tiny_inputs()
    for seed in range(4):
        gates = HeadGates(model)
        with torch.no_grad():
            gates.log_alpha.normal_(generator=torch.Generator().manual_seed(seed))
        plan = gates.heads_to_prune()
        for heads in plan.values():  # whole KV groups of 2 query heads
            assert len(heads) % 2 == 0 and all(heads[i] // 2 == heads[i + 1] // 2 for i in range(0, len(heads), 2))
    hfprune.prune_heads(model, plan)
    assert logits(model, inputs).isfinite().all()


def test_layers_that_cannot_lose_all_heads_keep_their_best(monkeypatch):
    model = tiny_model("distilbert")
    gates = HeadGates(model)
    with torch.no_grad():
        gates.log_alpha.copy_(torch.tensor([[-1.0, -3.0, -0.5, -2.0], [1.0, -1.0, 1.0, -1.0], [-5.0] * 4]))
    assert gates.heads_to_prune() == {0: [0, 1, 2, 3], 1: [1, 3], 2: [0, 1, 2, 3]}
    monkeypatch.setattr(hfprune.get_adapter(model), "can_remove_all_heads", False)
    assert gates.heads_to_prune() == {0: [0, 1, 3], 1: [1, 3], 2: [1, 2, 3]}


# ---- errors --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        {"init_keep": 0.0},
        {"init_keep": 1.0},
        {"init_keep": "high"},
        {"temperature": 0},
        {"l0_lambda": -0.1},
        {"l0_lambda": math.nan},
        {"warmup_steps": -1},
        {"warmup_steps": 2.5},
        {"scale_attention_output": "yes"},
    ],
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(PruningError) as error:
        HeadGates(tiny_model("bert"), **kwargs)
    assert "\n" not in str(error.value) and next(iter(kwargs)) in str(error.value)


def test_bad_models_and_steps_raise():
    with pytest.raises(PruningError, match="no adapter"):
        HeadGates(torch.nn.Linear(2, 2))
    gates = HeadGates(tiny_model("bert"))
    with pytest.raises(PruningError, match="step"):
        gates.penalty(-1)
    with pytest.raises(PruningError, match="another model family"):
        gates.attach(tiny_model("gpt2"))


# ---- FFN neurons and whole blocks (CoFi) ---------------------------------------------------------------
def num_parameters(model):
    return sum(p.numel() for p in model.parameters())


def snap(parameter, pattern):
    with torch.no_grad():
        parameter.copy_(torch.where(torch.as_tensor(pattern), 10.0, -10.0))


@pytest.mark.parametrize("family", FINALIZE_FAMILIES)
def test_ffn_and_block_gates_finalize_pruned_equals_gated(family):
    model, inputs = tiny_model(family), tiny_inputs()
    gates = HeadGates(model, ffn=True, blocks=True)
    units, width = gates.log_alpha.shape[1], gates.ffn_log_alpha.shape[1]
    assert gates.ffn_log_alpha.shape == (3, 24) and gates.block_log_alpha.shape == (3, 2)
    generator = torch.Generator().manual_seed(5)
    snap(gates.log_alpha, torch.rand(3, units, generator=generator) > 0.3)
    snap(gates.ffn_log_alpha, torch.rand(3, width, generator=generator) > 0.4)
    snap(gates.block_log_alpha, [[True, True], [False, True], [True, False]])  # layer 1: no attention, layer 2: no MLP
    gates.attach(model)
    gated = logits(model, inputs)
    plan = gates.finalize(model)
    assert plan["heads"][1] == [0, 1, 2, 3] and plan["ffn"][2] == list(range(width))
    assert plan["ffn"][0] == sorted(set(range(width)) - set(gates.ffn_log_alpha[0].gt(0).nonzero().flatten().tolist()))
    assert torch.allclose(logits(model, inputs), gated, atol=1e-5, rtol=0)
    record = hfprune.get_record(model)
    assert record["kept_heads"][1] == [] and record["kept_ffn"][2] == []
    assert record["kept_ffn"][0] == [n for n in range(width) if n not in plan["ffn"][0]]
    assert head_hook_count(model) == 0


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_block_gates_alone_remove_whole_blocks_and_equal_the_gated_model(family):
    model, inputs = tiny_model(family), tiny_inputs()
    gates = HeadGates(model, blocks=True)
    assert gates.ffn_log_alpha is None
    set_log_alpha(gates, torch.ones_like(gates.log_alpha, dtype=torch.bool))
    snap(gates.block_log_alpha, [[True, True], [False, True], [True, False]])
    gates.attach(model)
    gated = logits(model, inputs)
    assert gates.finalize(model) == {"heads": {1: [0, 1, 2, 3]}, "ffn": {2: list(range(24))}}
    assert torch.allclose(logits(model, inputs), gated, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_expected_cost_is_the_mean_cost_of_sampled_structures(family):
    """The Lagrangian's expected cost is exact: it equals the Monte Carlo mean cost of the sampled gates."""
    model = tiny_model(family)
    gates = HeadGates(model, ffn=True, blocks=True, init_keep=0.6)
    with torch.no_grad():
        for parameter in gates.gate_parameters():
            parameter.normal_(0.5, 1.5, generator=torch.Generator().manual_seed(parameter.numel()))
    torch.manual_seed(0)
    draws = []
    for _ in range(3000):
        heads, neurons, blocks = (_sample_open(gates, parameter) for parameter in gates.gate_parameters())
        draws.append(float(gates._cost(heads, neurons, blocks)))
    assert sum(draws) / len(draws) == pytest.approx(float(gates.expected_cost().detach()), rel=0.01)
    assert gates.dense_cost == pytest.approx(float(gates._cost(*gates._all_open())))


def _sample_open(gates, log_alpha):
    from hfprune.training.gates import _sample

    return (_sample(log_alpha, gates.temperature) > 0).float()


@pytest.mark.parametrize("family, budget", [("bert", 0.8), ("llama", 0.75), ("gpt2", 0.85)])
def test_a_param_budget_removes_the_least_open_gates_down_to_the_budget(family, budget):
    model, inputs = tiny_model(family), tiny_inputs()
    dense = num_parameters(model)
    gates = HeadGates(model, ffn=True, blocks=True, param_budget=budget)
    assert gates.target_sparsity == pytest.approx((1 - budget) * dense / gates.dense_cost)
    with torch.no_grad():
        for parameter in gates.gate_parameters():
            parameter.normal_(generator=torch.Generator().manual_seed(parameter.numel()))
    plan = gates.plan()
    gates.finalize(model)
    # the accounting is exact in parameters, so the model lands within one FFN neuron's parameters of the budget
    assert abs(num_parameters(model) - budget * dense) <= gates.costs.neuron
    assert plan["ffn"] and logits(model, inputs).isfinite().all()
    # closing goes least open first: in the layers that keep an MLP, every removed neuron's gate is below every
    # kept one's (a closed MLP block takes its neurons whatever their own gates)
    record = hfprune.get_record(model)
    kept = {i: kept_ffn(record, p) for p, i in enumerate(record["kept_layers"])}
    with torch.no_grad():
        closed = [float(gates.ffn_log_alpha[i, n]) for i, neurons in plan["ffn"].items() if kept[i] for n in neurons]
        still = [float(gates.ffn_log_alpha[i, n]) for i, neurons in kept.items() for n in neurons]
    assert closed and max(closed) <= min(still)


def test_gate_kinds_and_budgets_are_checked():
    model = tiny_model("bert")
    with pytest.raises(TargetOutOfReachError) as error:
        HeadGates(model, param_budget=0.3)  # the heads alone hold far less than 70% of the parameters
    assert "\n" not in str(error.value) and "out of reach" in str(error.value)
    with pytest.raises(PruningError, match="leave target_sparsity and costs unset"):
        HeadGates(model, param_budget=0.5, target_sparsity=0.2)
    with pytest.raises(PruningError, match="ffn must be True or False"):
        HeadGates(model, ffn="yes")
    plain = HeadGates(model)  # heads only: one per head, the behaviour of every earlier release
    assert plain.ffn_log_alpha is None and plain.block_log_alpha is None and plain.dense_cost == 12
    assert plain.expected_sparsity().item() == pytest.approx(1 - plain.init_keep)
