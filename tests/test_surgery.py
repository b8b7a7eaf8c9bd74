"""pruned == masked, for every supported family, with eager and sdpa attention."""

import pytest
import torch
from conftest import DECODERS, GQA, logits_of, tiny_inputs, tiny_model

import hfprune

TOLERANCE = 1e-5


def head_spec(family):
    # Layer 0: two heads; layer 2: every head. GQA models (4 heads over 2 KV groups) prune a whole group.
    return {0: [2, 3], 2: [0, 1, 2, 3]} if family in GQA else {0: [1, 3], 2: [0, 1, 2, 3]}


FFN_SPEC = {0: [0, 5, 7], 1: list(range(0, 24, 2)), 2: list(range(24))}


def assert_close(actual, expected):
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max().item() <= TOLERANCE


def test_pruned_heads_equal_masked(family_impl):
    family, impl = family_impl
    model, inputs = tiny_model(family, impl), tiny_inputs()
    spec = head_spec(family)
    with hfprune.apply_masks(model, head_mask=hfprune.make_head_mask(model, spec)):
        expected = logits_of(model, inputs)
    before = sum(p.numel() for p in model.parameters())
    hfprune.prune_heads(model, spec)
    assert sum(p.numel() for p in model.parameters()) < before
    assert_close(logits_of(model, inputs), expected)
    assert model.config.hfprune["kept_heads"][0] == [h for h in range(4) if h not in spec[0]]
    assert model.config.hfprune["kept_heads"][2] == []


def test_pruned_ffn_equal_masked(family_impl):
    family, impl = family_impl
    model, inputs = tiny_model(family, impl), tiny_inputs()
    with hfprune.apply_masks(model, ffn_mask=hfprune.make_ffn_mask(model, FFN_SPEC)):
        expected = logits_of(model, inputs)
    hfprune.prune_ffn(model, FFN_SPEC)
    assert_close(logits_of(model, inputs), expected)
    assert [len(k) for k in model.config.hfprune["kept_ffn"]] == [21, 12, 0]


def test_dropped_layers_equal_skipped(family_impl):
    family, impl = family_impl
    model, inputs = tiny_model(family, impl), tiny_inputs()
    with hfprune.skip_layers(model, [1]):
        expected = logits_of(model, inputs)
    hfprune.drop_layers(model, [1])
    assert_close(logits_of(model, inputs), expected)
    assert model.config.hfprune["kept_layers"] == [0, 2]
    assert hfprune.get_adapter(model).num_layers(model.config) == 2


def test_combined_calls_compose_in_original_indices(family_impl):
    family, impl = family_impl
    model, inputs = tiny_model(family, impl), tiny_inputs()
    heads = head_spec(family)
    masks = dict(
        head_mask=hfprune.make_head_mask(model, heads),
        ffn_mask=hfprune.make_ffn_mask(model, FFN_SPEC),
        layer_mask=hfprune.make_layer_mask(model, [1]),
    )
    with hfprune.apply_masks(model, **masks):
        expected = logits_of(model, inputs)
    # Drop first, then prune by ORIGINAL indices; pruning layer 1 (gone) and pruned heads again are no-ops.
    hfprune.drop_layers(model, [1])
    hfprune.prune_ffn(model, FFN_SPEC)
    hfprune.prune_heads(model, {2: [0, 1]})  # part of a layer first (a whole KV group under GQA)
    hfprune.prune_heads(model, heads)
    hfprune.prune_heads(model, heads)
    assert_close(logits_of(model, inputs), expected)
    # Masks keep their original meaning on an already-pruned model.
    with hfprune.apply_masks(model, **masks):
        assert_close(logits_of(model, inputs), expected)


def _layer0_grads(model, family, inputs):
    model.train()
    labels = inputs["input_ids"] if family in DECODERS else torch.tensor([0, 2])
    model(**inputs, labels=labels).loss.backward()
    layer = hfprune.get_adapter(model).get_layers(model)[0]
    return {name: p.grad for name, p in layer.named_parameters() if p.numel()}


def test_backward_after_surgery(family_impl):
    family, impl = family_impl
    inputs = tiny_inputs()
    dense_grads = _layer0_grads(tiny_model(family, impl), family, inputs)
    model = tiny_model(family, impl)
    hfprune.prune_heads(model, head_spec(family))
    hfprune.prune_ffn(model, FFN_SPEC)
    hfprune.drop_layers(model, [1])
    grads = _layer0_grads(model, family, inputs)
    # Every parameter that learns in the dense model still learns after surgery.
    expected = {name for name, grad in dense_grads.items() if grad is not None}
    assert expected and expected <= {name for name, grad in grads.items() if grad is not None}
    assert all(torch.isfinite(grads[name]).all() for name in expected)


@pytest.mark.parametrize("family", sorted(DECODERS))
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_generate_with_kv_cache(family, impl):
    model = tiny_model(family, impl)
    inputs = {"input_ids": tiny_inputs(batch=1, length=5)["input_ids"]}
    heads = head_spec(family)
    masks = dict(
        head_mask=hfprune.make_head_mask(model, heads),
        ffn_mask=hfprune.make_ffn_mask(model, FFN_SPEC),
        layer_mask=hfprune.make_layer_mask(model, [1]),
    )
    settings = dict(max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    with hfprune.apply_masks(model, **masks), torch.no_grad():
        expected = model.generate(**inputs, **settings, output_scores=True, return_dict_in_generate=True)
    hfprune.drop_layers(model, [1])
    hfprune.prune_ffn(model, FFN_SPEC)
    hfprune.prune_heads(model, heads)
    with torch.no_grad():
        actual = model.generate(**inputs, **settings, output_scores=True, return_dict_in_generate=True)
    assert torch.equal(actual.sequences, expected.sequences)
    for a, e in zip(actual.scores, expected.scores):
        assert_close(a, e)


def test_layer_idx_renumbered_after_drop():
    model = tiny_model("llama")
    hfprune.drop_layers(model, [0])
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]


def test_layer_types_sliced():
    model = tiny_model("qwen2")
    model.config.layer_types = ["full_attention", "sliding_attention", "full_attention"]
    hfprune.drop_layers(model, [0])
    assert model.config.layer_types == ["sliding_attention", "full_attention"]


def test_gqa_uneven_pattern_is_refused_and_model_untouched():
    model = tiny_model("llama")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(hfprune.PruningError, match="uneven grouped-query"):
        hfprune.prune_heads(model, {0: [0, 1], 1: [0]})  # layer 1: group 0 keeps 1 head, group 1 keeps 2
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not getattr(model.config, "hfprune", None)


def test_gqa_same_count_in_every_group_is_allowed():
    model, inputs = tiny_model("llama"), tiny_inputs()
    spec = {1: [0, 3]}  # one query head from each of the two KV groups
    with hfprune.apply_masks(model, head_mask=hfprune.make_head_mask(model, spec)):
        expected = logits_of(model, inputs)
    hfprune.prune_heads(model, spec)
    assert model.model.layers[1].self_attn.num_key_value_groups == 1
    assert model.model.layers[1].self_attn.k_proj.out_features == 2 * 8
    assert_close(logits_of(model, inputs), expected)


def test_mask_gradient_is_available():
    model, inputs = tiny_model("bert"), tiny_inputs()
    head_mask = torch.ones(3, 4, requires_grad=True)
    ffn_mask = torch.ones(3, 24, requires_grad=True)
    with hfprune.apply_masks(model, head_mask=head_mask, ffn_mask=ffn_mask):
        model(**inputs, labels=torch.tensor([0, 1])).loss.backward()
    assert head_mask.grad.abs().sum() > 0 and ffn_mask.grad.abs().sum() > 0
    # Hooks are gone after the block: the same forward without masks matches a fresh copy.
    assert all(not layer.attention.output.dense._forward_pre_hooks for layer in model.bert.encoder.layer)


@pytest.mark.parametrize("family", ["bert", "xlnet", "llama"])
def test_eval_only_masks_act_in_eval_mode_only(family):
    model, inputs = tiny_model(family), tiny_inputs()
    masks = dict(
        head_mask=hfprune.make_head_mask(model, head_spec(family)),
        ffn_mask=hfprune.make_ffn_mask(model, FFN_SPEC),
        layer_mask=hfprune.make_layer_mask(model, [1]),
    )
    dense = logits_of(model, inputs)
    with hfprune.apply_masks(model, **masks):
        masked = logits_of(model, inputs)
    torch.manual_seed(0)
    model.train()
    dense_train = model(**inputs).logits
    with hfprune.apply_masks(model, **masks, eval_only=True):
        torch.manual_seed(0)
        assert torch.equal(model(**inputs).logits, dense_train)  # train mode: untouched, bit for bit
        model.eval()
        assert torch.equal(logits_of(model, inputs), masked)
    assert torch.equal(logits_of(model, inputs), dense)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: hfprune.prune_heads(m, {0: [4]}), "out of range"),
        (lambda m: hfprune.prune_heads(m, {7: [0]}), "out of range"),
        (lambda m: hfprune.prune_heads(m, [0, 1]), "must be a dict"),
        (lambda m: hfprune.prune_heads(m, {0: "1"}), "list of integers"),
        (lambda m: hfprune.prune_heads(m, {0: [1.5]}), "must be integers"),
        (lambda m: hfprune.prune_ffn(m, {0: [24]}), "out of range"),
        (lambda m: hfprune.drop_layers(m, [0, 1, 2]), "no layers"),
        (lambda m: hfprune.drop_layers(m, [-1]), "out of range"),
        (lambda m: hfprune.prune_heads("bert", {0: [1]}), "PreTrainedModel"),
        (lambda m: hfprune.apply_masks(m, head_mask=torch.ones(2, 2)), "shape"),
    ],
)
def test_bad_input_gives_one_line_error(call, message):
    model = tiny_model("bert")
    with pytest.raises(hfprune.PruningError, match=message) as error:
        call(model)
    assert "\n" not in str(error.value)


def test_unsupported_model_type_names_supported_ones():
    from transformers import T5Config, T5Model

    model = T5Model(T5Config(d_model=16, d_ff=16, num_layers=1, num_heads=2, d_kv=8, vocab_size=10))
    with pytest.raises(hfprune.PruningError, match="no adapter for model type 't5'.*bert.*llama"):
        hfprune.prune_heads(model, {0: [0]})
