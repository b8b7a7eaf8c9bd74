"""save_pretrained -> reload gives the same weights and outputs: with hfprune, stock transformers, remote code."""

import json
import subprocess
import sys

import pytest
import torch
import transformers
from conftest import FAMILIES, GQA, logits_of, tiny_inputs, tiny_model
from test_surgery import FFN_SPEC, head_spec

import hfprune


def prune_everything(model, family):
    hfprune.drop_layers(model, [1])
    hfprune.prune_ffn(model, FFN_SPEC)
    hfprune.prune_heads(model, head_spec(family))
    return model


def assert_same_model(reloaded, model, inputs):
    expected, actual = model.state_dict(), reloaded.state_dict()
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    assert torch.equal(logits_of(reloaded, inputs), logits_of(model, inputs))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_reload_with_hfprune(family, tmp_path):
    model, inputs = prune_everything(tiny_model(family), family), tiny_inputs()
    model.save_pretrained(tmp_path)
    reloaded = hfprune.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert type(reloaded).__name__ == type(model).__name__
    assert_same_model(reloaded, model, inputs)
    assert reloaded.config.hfprune == model.config.hfprune
    # The reloaded model can be pruned further, in original indices, and saved again.
    hfprune.prune_ffn(reloaded, {0: [1, 2]})
    reloaded.save_pretrained(tmp_path / "again")
    assert_same_model(hfprune.from_pretrained(tmp_path / "again", attn_implementation="eager").eval(), reloaded, inputs)
    assert json.loads((tmp_path / "again" / "config.json").read_text())["architectures"] == [type(model).__name__]


def test_reload_passes_dtype_device_map_and_model_class_through(tmp_path):
    model = prune_everything(tiny_model("bert"), "bert")
    model.save_pretrained(tmp_path)
    reloaded = hfprune.from_pretrained(tmp_path, dtype=torch.float16)
    assert {p.dtype for p in reloaded.parameters()} == {torch.float16}
    mapped = hfprune.from_pretrained(tmp_path, device_map="cpu")
    assert all(torch.equal(v, mapped.state_dict()[k]) for k, v in model.state_dict().items())
    encoder = hfprune.from_pretrained(tmp_path, model_class=transformers.AutoModel)
    assert type(encoder).__name__ == "BertModel"
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, model.bert.state_dict()[key])


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_layer_drops_reload_with_stock_transformers(family, tmp_path):
    model, inputs = tiny_model(family), tiny_inputs()
    hfprune.drop_layers(model, [0, 2])
    assert model.config.hfprune["stock_loadable"] is True
    model.save_pretrained(tmp_path)
    stock = getattr(transformers, FAMILIES[family][2]).from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert_same_model(stock, model, inputs)


@pytest.mark.parametrize("family", sorted(GQA))
def test_uniform_shapes_reload_with_stock_transformers(family, tmp_path):
    model, inputs = tiny_model(family), tiny_inputs()
    # The same shapes in every layer: 2 query heads over 1 KV group, 12 FFN neurons.
    hfprune.prune_heads(model, {layer: [0, 1] for layer in range(3)})
    hfprune.prune_ffn(model, {layer: range(layer % 2, 24, 2) for layer in range(3)})
    assert model.config.hfprune["stock_loadable"] is True
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (2, 1)
    model.save_pretrained(tmp_path)
    stock = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager")
    assert_same_model(stock.eval(), model, inputs)


def test_uneven_shapes_are_marked_not_stock_loadable(tmp_path):
    model = tiny_model("bert")
    hfprune.prune_heads(model, {0: [1]})
    assert model.config.hfprune["stock_loadable"] is False
    model.save_pretrained(tmp_path)
    with pytest.raises(Exception):
        transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path)


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "xlnet"])
def test_remote_code_export_loads_without_hfprune(family, tmp_path):
    model, inputs = prune_everything(tiny_model(family), family), tiny_inputs()
    hfprune.save_for_remote_code(model, tmp_path)
    torch.save(inputs, tmp_path / "inputs.pt")
    torch.save(logits_of(model, inputs), tmp_path / "expected.pt")
    # A fresh interpreter in which `import hfprune` fails: only transformers and the exported file load it.
    script = f"""
import sys, torch, transformers
sys.modules["hfprune"] = None
model = transformers.{FAMILIES[family][2].replace(FAMILIES[family][2], "AutoModelForCausalLM" if family in ("gpt2", "llama") else "AutoModelForSequenceClassification")}.from_pretrained(r"{tmp_path}", trust_remote_code=True, attn_implementation="eager").eval()
inputs = torch.load(r"{tmp_path / 'inputs.pt'}")
with torch.no_grad():
    logits = model(**inputs).logits
assert type(model).__name__.startswith("Pruned"), type(model)
assert torch.equal(logits, torch.load(r"{tmp_path / 'expected.pt'}"))
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"
