"""transformers' own `per_layer_config`, written beside `config.hfprune` where it says the pruned layers exactly."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from conftest import logits_of, tiny_inputs, tiny_model

import hfprune
from hfprune.engine.record import unpruned_twin
from hfprune.export.card import regenerate_model_card
from hfprune.measure.flops import count_flops

heterogeneity = pytest.importorskip("transformers.integrations.heterogeneity", reason="per_layer_config needs transformers >= 5.23")
AmbiguousGlobalPerLayerAttributeError = heterogeneity.AmbiguousGlobalPerLayerAttributeError

# Llama (3 layers, 4 heads over 2 KV groups, FFN 24): layer 0 keeps one KV group and 19 neurons, layer 1 loses its
# MLP, layer 2 its attention.
LLAMA_HEADS = {0: [0, 1], 2: [0, 1, 2, 3]}
LLAMA_FFN = {0: range(5), 1: range(24)}
LLAMA_PER_LAYER = {
    "0": {"intermediate_size": 19, "num_attention_heads": 2, "num_key_value_heads": 1},
    "1": {"skip": ["mlp"]},
    "2": {"skip": ["attention"]},
}


def heterogeneous_llama(family: str = "llama"):
    model = tiny_model(family)
    hfprune.prune_heads(model, LLAMA_HEADS)
    hfprune.prune_ffn(model, LLAMA_FFN)
    return model


def widths_from_weights(model) -> list[dict]:
    """Each layer's shapes read from its weights (not from any config), in per_layer_config's terms."""
    rows = []
    for layer in model.model.layers:
        attention = layer.self_attn
        has_attention = hasattr(attention, "q_proj")
        rows.append(
            {
                "heads": attention.q_proj.out_features // 8 if has_attention else 0,
                "kv_heads": attention.k_proj.out_features // 8 if has_attention else 0,
                "ffn": layer.mlp.up_proj.out_features,
            }
        )
    return rows


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_llama_family_writes_per_layer_config_that_matches_the_weights(family, tmp_path):
    model = heterogeneous_llama(family)
    config = model.config
    assert config.is_heterogeneous and config.to_dict()["per_layer_config"] == LLAMA_PER_LAYER
    for position, (layer_config, widths) in enumerate(zip(config.per_layer_config, widths_from_weights(model))):
        skip = layer_config.skip
        assert ("attention" in skip) == (widths["heads"] == 0), position
        assert ("mlp" in skip) == (widths["ffn"] == 0), position
        if widths["heads"]:
            assert (layer_config.num_attention_heads, layer_config.num_key_value_heads) == (widths["heads"], widths["kv_heads"])
        if widths["ffn"]:
            assert layer_config.intermediate_size == widths["ffn"]

    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["per_layer_config"] == LLAMA_PER_LAYER and saved["allow_global_per_layer_attribute_access"] is True
    reloaded = hfprune.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert torch.equal(logits_of(reloaded, tiny_inputs()), logits_of(model, tiny_inputs()))
    assert reloaded.config.to_dict()["per_layer_config"] == LLAMA_PER_LAYER


def test_global_fields_stay_readable_and_everything_still_works(tmp_path):
    model, inputs = heterogeneous_llama(), tiny_inputs()
    config = model.config
    assert (config.intermediate_size, config.num_attention_heads, config.num_key_value_heads) == (24, 4, 2)
    with torch.device("meta"):
        transformers.LlamaForCausalLM(config)  # stock modeling reads the global fields
    assert model.generate(inputs["input_ids"][:1], max_new_tokens=3, do_sample=False).shape == (1, 10)
    assert count_flops(model, 1, 8) > 0 and unpruned_twin(model, "meta").config.intermediate_size == 24

    model.save_pretrained(tmp_path / "ckpt")
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):  # the same refusal as without per_layer_config
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    hfprune.save_for_remote_code(model, tmp_path / "remote")
    remote = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "remote", trust_remote_code=True, attn_implementation="eager")
    assert torch.equal(logits_of(remote.eval(), inputs), logits_of(model, inputs))
    card = regenerate_model_card(tmp_path / "ckpt", repo_id="me/llama")
    assert "transformers' own `per_layer_config` (per-layer `intermediate_size`, `num_attention_heads`," in card.text

    hfprune.drop_layers(model, [1])  # layer indices move with the layers
    hfprune.prune_ffn(model, {2: range(3)})
    assert model.config.to_dict()["per_layer_config"] == {
        "0": LLAMA_PER_LAYER["0"], "1": {"intermediate_size": 21, "skip": ["attention"]},
    }  # fmt: skip


def drop_flag(folder) -> None:
    saved = json.loads((folder / "config.json").read_text())
    del saved["allow_global_per_layer_attribute_access"]
    (folder / "config.json").write_text(json.dumps(saved))


def test_without_the_global_access_flag_transformers_could_not_read_or_build_it(tmp_path):
    """Why hfprune saves allow_global_per_layer_attribute_access: without it the global per-layer fields raise."""
    heterogeneous_llama().save_pretrained(tmp_path / "heads")
    drop_flag(tmp_path / "heads")
    with pytest.raises(AmbiguousGlobalPerLayerAttributeError):  # LlamaConfig's own checks read num_attention_heads
        transformers.AutoConfig.from_pretrained(tmp_path / "heads")

    model = tiny_model("llama")
    hfprune.prune_ffn(model, LLAMA_FFN)
    model.save_pretrained(tmp_path / "ffn")
    drop_flag(tmp_path / "ffn")
    config = transformers.AutoConfig.from_pretrained(tmp_path / "ffn")
    with pytest.raises(AmbiguousGlobalPerLayerAttributeError):  # LlamaMLP reads config.intermediate_size
        transformers.LlamaForCausalLM(config)
    reloaded = hfprune.from_pretrained(tmp_path / "ffn", attn_implementation="eager").eval()  # hfprune allows it
    assert torch.equal(logits_of(reloaded, tiny_inputs()), logits_of(model, tiny_inputs()))


@pytest.mark.parametrize(
    "family, ffn_field",
    [("bert", "intermediate_size"), ("distilbert", "hidden_dim"), ("gpt2", "n_inner"), ("xlnet", "d_inner"), ("roberta", "intermediate_size")],
)
def test_uneven_ffn_widths_of_every_family_are_written(family, ffn_field, tmp_path):
    model = tiny_model(family)
    hfprune.prune_ffn(model, {0: range(5), 2: range(0, 24, 2)})
    assert model.config.to_dict()["per_layer_config"] == {"0": {ffn_field: 19}, "2": {ffn_field: 12}}
    model.save_pretrained(tmp_path)
    reloaded = hfprune.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert torch.equal(logits_of(reloaded, tiny_inputs()), logits_of(model, tiny_inputs()))


@pytest.mark.parametrize(
    "family, heads, ffn",
    [
        ("bert", {0: [1]}, {}),  # BERT's head size is hidden_size / heads: a per-layer count would change it
        ("distilbert", {1: [0, 2]}, {0: range(4)}),
        ("gpt2", {0: [3]}, {}),
        ("gpt2", {}, {1: range(24)}),  # GPT-2's empty MLP still adds c_proj's bias: not a skip
        ("bert", {2: [0, 1, 2, 3]}, {}),  # an encoder layer runs its LayerNorm after an empty attention block
        ("xlnet", {0: [0]}, {}),  # 3 heads do not divide d_model 32
    ],
)
def test_structures_the_format_cannot_say_are_in_the_record_only(family, heads, ffn):
    model = tiny_model(family)
    hfprune.prune_heads(model, heads)
    hfprune.prune_ffn(model, ffn)
    assert model.config.hfprune["patch"] and not model.config.is_heterogeneous
    assert "per_layer_config" not in model.config.to_dict()


def test_a_checkpoint_with_only_per_layer_config_loads(tmp_path):
    model = heterogeneous_llama()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["hfprune"]  # e.g. written by another tool in transformers' format
    (tmp_path / "config.json").write_text(json.dumps(saved))
    reloaded = hfprune.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert torch.equal(logits_of(reloaded, tiny_inputs()), logits_of(model, tiny_inputs()))
    record = reloaded.config.hfprune
    assert record["kept_heads"] == [[0, 1], [0, 1, 2, 3], []]  # original indices are not in the format: first heads
    assert [None if kept is None else len(kept) for kept in record["kept_ffn"]] == [19, 0, None]


def test_per_layer_config_that_disagrees_or_says_more_is_refused(tmp_path):
    heterogeneous_llama().save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    edited = json.loads(json.dumps(saved))
    edited["per_layer_config"]["0"]["intermediate_size"] = 20
    (tmp_path / "config.json").write_text(json.dumps(edited))
    with pytest.raises(hfprune.PruningError, match="per_layer_config disagrees with config.hfprune"):
        hfprune.from_pretrained(tmp_path)
    edited = json.loads(json.dumps(saved))
    edited["per_layer_config"]["1"]["rms_norm_eps"] = 1e-3
    (tmp_path / "config.json").write_text(json.dumps(edited))
    with pytest.raises(hfprune.PruningError, match="sets rms_norm_eps per layer"):
        hfprune.from_pretrained(tmp_path)
