"""Forward-only (activation) importance and `hidden_importance`: what they measure, in original indices."""

import pytest
import torch
from conftest import DECODERS, FAMILIES, GQA, tiny_inputs, tiny_model

import hfprune
from hfprune.scoring.activations import activation_scores, hidden_importance

TOLERANCE = 1e-5


def batches(family, count=2, seed=1):
    out = []
    for number in range(count):
        batch = tiny_inputs(batch=3, length=6, seed=seed + number)
        if family not in DECODERS:
            batch["labels"] = torch.tensor([0, 2, 1])
        out.append(batch)
    return out


def token_mean_of_inputs(model, data, modules, statistic):
    """Per module, `statistic(input, mask)` summed over the batches' real tokens and divided by their count,
    from forward pre-hooks written here (the input of each of `modules`, in order)."""
    seen = []
    for module in modules:
        module.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    totals, count = 0, 0
    for batch in data:
        seen.clear()
        with torch.no_grad():
            model(**batch)
        mask = batch["attention_mask"].bool()
        totals, count = totals + torch.stack([statistic(value, mask) for value in seen]), count + int(mask.sum())
    return totals / count


def assert_close(actual, expected):
    assert actual.shape == expected.shape
    both = ~expected.isnan()
    assert torch.equal(actual.isnan(), expected.isnan())
    scale = expected[both].abs().max().clamp_min(1e-12)
    assert ((actual[both] - expected[both]).abs().max() / scale).item() <= TOLERANCE


def manual_context_norms(model, name_of_output, data, heads, head_dim):
    """Mean over real tokens of each head's context norm, from a pre-hook on the output projection written here."""
    totals, count, seen = {}, 0, {}
    for name, module in model.named_modules():
        if name.endswith(name_of_output):
            def hook(module, args, name=name):
                seen[name] = args[0]
            module.register_forward_pre_hook(hook)
    for batch in data:
        seen.clear()
        with torch.no_grad():
            model(**batch)
        mask = batch["attention_mask"].bool()
        for name, context in seen.items():
            norms = context.reshape(*context.shape[:2], heads, head_dim).norm(dim=-1)[mask]
            totals[name] = totals.get(name, 0) + norms.double().sum(0)
        count += int(mask.sum())
    return torch.stack([totals[name] / count for name in sorted(totals)])


@pytest.mark.parametrize("family,output", [("bert", "attention.output.dense"), ("llama", "self_attn.o_proj"),
                                           ("gpt2", "attn.c_proj"), ("distilbert", "attention.out_lin")])
def test_head_scores_are_the_mean_norm_of_each_heads_output(family, output):
    model, data = tiny_model(family), batches(family)
    scores = activation_scores(model, data, ("heads", "kv_groups"))
    expected = manual_context_norms(model, output, data, heads=4, head_dim=8)
    assert_close(scores["heads"], expected)
    if family in GQA:  # 4 query heads over 2 KV groups: the norm of both heads' context together
        modules = [module for name, module in model.named_modules() if name.endswith(output)]
        group_norms = lambda c, mask: c.reshape(*c.shape[:2], 2, 16).norm(dim=-1)[mask].double().sum(0)  # noqa: E731
        assert_close(scores["kv_groups"], token_mean_of_inputs(model, data, modules, group_norms))
    else:
        assert_close(scores["kv_groups"], scores["heads"])


def test_ffn_scores_are_the_mean_absolute_activation():
    model, data = tiny_model("llama"), batches("llama")
    modules = [layer.mlp.down_proj for layer in model.model.layers]
    expected = token_mean_of_inputs(model, data, modules, lambda a, mask: a.abs()[mask].double().sum(0))
    assert_close(activation_scores(model, data, "ffn")["ffn"], expected)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_every_kind_in_original_indices(family):
    model, data = tiny_model(family), batches(family)
    dense = activation_scores(model, data)
    # Pruning heads of the last layer changes nothing upstream, and nothing in that layer's remaining heads'
    # contexts (computed from the layer's input): their scores stay, at their ORIGINAL indices.
    heads = [0, 1] if family in GQA else [1, 2]
    hfprune.prune_heads(model, {2: heads})
    pruned = activation_scores(model, data)
    assert pruned["heads"][2, heads].isnan().all()
    assert not pruned["heads"][2, [h for h in range(4) if h not in heads]].isnan().any()
    expected_heads = dense["heads"].clone()
    expected_heads[2, heads] = float("nan")
    assert_close(pruned["heads"], expected_heads)
    # Likewise an FFN neuron's activation depends on the FFN's input only, not on the other neurons.
    hfprune.prune_ffn(model, {2: list(range(0, 24, 3))})
    expected_ffn = pruned["ffn"].clone()
    expected_ffn[2, ::3] = float("nan")
    pruned = activation_scores(model, data)
    assert_close(pruned["ffn"], expected_ffn)
    if family in GQA:
        assert pruned["kv_groups"][2, 0].isnan() and pruned["kv_groups"][2, 1].isfinite()
    assert dense["hidden"].shape == (32,) and (dense["hidden"] > 0).all()
    hfprune.prune_hidden(model, [1, 4, 30])
    width = hidden_importance(model, data, method="activation")
    assert width.isnan().nonzero().flatten().tolist() == [1, 4, 30]
    gradient = hidden_importance(model, data)
    assert gradient.isnan().nonzero().flatten().tolist() == [1, 4, 30] and (gradient[~gradient.isnan()] > 0).all()


def test_padding_is_not_counted():
    model = tiny_model("bert")
    short = {"input_ids": torch.tensor([[5, 6, 7, 8]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    padded = {"input_ids": torch.tensor([[5, 6, 7, 8, 0, 0, 0]]),
              "attention_mask": torch.tensor([[1, 1, 1, 1, 0, 0, 0]])}
    a, b = activation_scores(model, [short]), activation_scores(model, [padded])
    for kind in a:
        assert_close(b[kind], a[kind])


def test_activation_scores_need_no_backward(monkeypatch):
    model, data = tiny_model("qwen3"), batches("qwen3")
    calls = []
    original_forward = type(model).forward

    def counting_forward(self, *args, **kwargs):
        calls.append(torch.is_grad_enabled())
        return original_forward(self, *args, **kwargs)

    def no_backward(*args, **kwargs):
        raise AssertionError("activation scores ran a backward pass")

    monkeypatch.setattr(type(model), "forward", counting_forward)
    monkeypatch.setattr(torch.autograd, "grad", no_backward)
    monkeypatch.setattr(torch.autograd, "backward", no_backward)
    activation_scores(model, data)
    assert calls == [False] * len(data)  # one forward per batch, without autograd
    assert all(parameter.grad is None for parameter in model.parameters())


def _manual_taylor(model, data, site_names):
    """E over examples of |sum over tokens of a * dL/da|, summed over sites, one example at a time.

    For a causal LM the batch loss is a mean over the batch's predicted tokens, so an example weighs
    (its predicted tokens / the batch's mean): that weighting is applied here by hand."""
    total, examples = 0, 0
    outputs = {}
    handles = [model.get_submodule(name).register_forward_hook(
        lambda m, args, out, name=name: outputs.__setitem__(name, out)) for name in site_names]
    for batch in data:
        size = batch["input_ids"].shape[0]
        predicted = batch["attention_mask"][:, 1:].sum(1).double()  # next-token targets per example
        for row in range(size):
            example = {key: value[row : row + 1] for key, value in batch.items()}
            outputs.clear()
            weight = 1.0
            if "labels" not in example:  # a causal LM predicts its own (non-padding) tokens
                example["labels"] = example["input_ids"].masked_fill(example["attention_mask"] == 0, -100)
                weight = (predicted[row] / predicted.mean()).item()
            loss = model(**example).loss * weight
            activations = [outputs[name] for name in site_names]
            grads = torch.autograd.grad(loss, activations)
            total = total + sum((a * g).reshape(-1, a.shape[-1]).sum(0).abs().double() for a, g in zip(activations, grads))
            examples += 1
    for handle in handles:
        handle.remove()
    return total / examples


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_gradient_hidden_importance_is_per_example_taylor_on_the_channel_sites(family):
    model, data = tiny_model(family), batches(family)
    model.eval()
    if family == "bert":
        names = ["bert.embeddings.LayerNorm"] + [
            f"bert.encoder.layer.{i}.{part}" for i in range(3) for part in ("attention.output.LayerNorm", "output.LayerNorm")
        ] + ["bert.pooler.dense"]
    else:
        names = [f"model.layers.{i}.{part}" for i in range(3) for part in ("input_layernorm", "post_attention_layernorm")]
        names.append("model.norm")
    expected = _manual_taylor(model, data, names)
    assert_close(hidden_importance(model, data), expected)
    # ... and it leaves no gradient behind, nor a parameter frozen
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_activation_hidden_importance_is_the_summed_mean_norm_output():
    model, data = tiny_model("gpt2"), batches("gpt2")
    names = [f"transformer.h.{i}.{part}" for i in range(3) for part in ("ln_1", "ln_2")] + ["transformer.ln_f"]
    seen = {}
    for name in names:
        model.get_submodule(name).register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, out))
    totals, count = 0, 0
    for batch in data:
        with torch.no_grad():
            model(**batch)
        mask = batch["attention_mask"].bool()
        totals = totals + sum(seen[name].abs()[mask].double().sum(0) for name in names)
        count += int(mask.sum())
    expected = totals / count
    assert_close(hidden_importance(model, data, method="activation"), expected)
    assert_close(activation_scores(model, data, "hidden")["hidden"], expected)


def test_refusals():
    model = tiny_model("bert")
    with pytest.raises(hfprune.PruningError, match="choose from"):
        hidden_importance(model, batches("bert"), method="magnitude")
    with pytest.raises(hfprune.PruningError, match="unknown activation kinds"):
        activation_scores(model, batches("bert"), ("heads", "layers"))
    with pytest.raises(hfprune.PruningError, match="no batches"):
        activation_scores(model, [])
    with pytest.raises(hfprune.PruningError, match="no batches"):
        hidden_importance(model, [])
    with pytest.raises(hfprune.PruningError, match="torch.compile"):
        activation_scores(torch.compile(model, backend="eager"), batches("bert"))


def test_normalize_divides_each_layer_by_its_norm():
    model, data = tiny_model("bert"), batches("bert")
    raw, normalized = activation_scores(model, data, ("heads", "ffn")), activation_scores(model, data, ("heads", "ffn"), normalize=True)
    for kind in raw:
        assert_close(normalized[kind], raw[kind] / raw[kind].norm(dim=-1, keepdim=True))
