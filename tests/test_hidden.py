"""Width pruning (`prune_hidden`): the residual stream loses channels everywhere, for every family.

It cannot equal the original the way head pruning does (the norms see fewer channels), so the reference here
is built by hand: the original weights sliced by rules written in this file (not by the adapters), loaded into
a model made from a config with the smaller hidden size.
"""

import copy
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from conftest import FAMILIES, GQA, VOCAB, logits_of, tiny_inputs, tiny_model
from torch import nn

import hfprune
from hfprune.engine.record import original_config
from hfprune.engine.restore import restore_structure

HIDDEN = 32  # every tiny model in conftest
REMOVED = [0, 3, 5, 9, 14, 20, 27, 31]
KEPT = [c for c in range(HIDDEN) if c not in REMOVED]
TOLERANCE = 1e-5

# Dimensions of size 32 that are NOT the residual stream in the tiny models (there heads * head_dim == 32 too).
_HEAD_ROWS = re.compile(r"(query|key|value|q_lin|k_lin|v_lin|q_proj|k_proj|v_proj)\.(weight|bias)$")
_HEAD_COLUMNS = re.compile(r"(attention\.output\.dense|out_lin|o_proj)\.weight$")


def channel_dims(name: str, shape) -> list[int]:
    """Which dims of an original parameter are residual-stream channels, by hand."""
    if name.endswith("rel_attn.r"):  # XLNet: reads the sinusoidal position encoding, kept whole
        return []
    if _HEAD_ROWS.search(name):
        return [1] if name.endswith("weight") else []
    if _HEAD_COLUMNS.search(name):
        return [0]
    if name.endswith("attn.c_proj.weight"):  # GPT-2 Conv1D [heads * head_dim, hidden]
        return [1]
    if name.endswith("attn.c_attn.bias"):
        return []
    return [dim for dim, size in enumerate(shape) if size == HIDDEN]


def sliced_state(model, kept=KEPT) -> dict:
    index = torch.tensor(kept)
    state = {}
    for name, value in model.state_dict().items():
        for dim in channel_dims(name, value.shape):
            value = value.index_select(dim, index)
        state[name] = value.clone()
    return state


def assert_state_equal(model, expected: dict):
    state = model.state_dict()
    assert state.keys() == expected.keys()
    for name, value in expected.items():
        assert state[name].shape == value.shape and torch.equal(state[name], value), name


def assert_close(actual, expected, tolerance=TOLERANCE):
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max().item() <= tolerance


def reference_model(model, state: dict, width: int):
    """The stock class built from a config of the smaller width, with `state` loaded into it; attention
    attributes that the config derives from hidden_size are set back by hand to the original head width."""
    config = copy.deepcopy(model.config)
    config.hidden_size = width
    if getattr(config, "embedding_size", None) == HIDDEN:  # ELECTRA without embeddings_project
        config.embedding_size = width
    if config.model_type == "xlnet":
        config.d_head = width // config.n_head  # XLNetConfig insists on d_model // n_head
    if config.model_type in GQA:
        config.head_dim = 8  # explicit: what makes a width-pruned Llama a plain config
    reference = type(model)(config).eval()
    for name, value in state.items():
        module_path, _, attribute = name.rpartition(".")
        module = reference.get_submodule(module_path)
        if getattr(module, attribute).shape != value.shape:
            setattr(module, attribute, nn.Parameter(value.clone()))
            if isinstance(module, transformers.pytorch_utils.Conv1D) and attribute == "weight":
                module.nf = value.shape[1]  # Conv1D's forward reads it
    reference.load_state_dict(state)
    head = 8  # the original head width of every tiny model
    for module in reference.modules():
        kind = type(module).__name__
        if kind.endswith("SelfAttention") and hasattr(module, "attention_head_size"):  # BERT family, DistilBERT
            module.attention_head_size, module.scaling = head, head**-0.5
            if hasattr(module, "all_head_size"):
                module.all_head_size = module.num_attention_heads * head
        elif kind == "GPT2Attention":
            module.head_dim, module.split_size, module.scaling = head, module.num_heads * head, head**-0.5
        elif kind == "XLNetRelativeAttention":
            module.d_head, module.scale = head, 1 / head**0.5
        elif kind == "XLNetModel":
            module.d_model = HIDDEN  # the position encoding keeps its original width
    return reference


MODEL_CLASSES = [(family, FAMILIES[family][2]) for family in FAMILIES] + [
    ("bert", "BertForMaskedLM"),
    ("bert", "BertModel"),
    ("roberta", "RobertaForMaskedLM"),
    ("electra", "ElectraForMaskedLM"),
    ("distilbert", "DistilBertForMaskedLM"),
    ("xlnet", "XLNetLMHeadModel"),
    ("gpt2", "GPT2ForSequenceClassification"),
    ("llama", "LlamaForSequenceClassification"),
]


def build(family, model_class=None, seed=0, **overrides):
    config_name, kwargs, default_class = FAMILIES[family]
    config = getattr(transformers, config_name)(vocab_size=VOCAB, num_labels=3, **{**kwargs, **overrides})
    config._attn_implementation = "eager"
    if config.model_type == "gpt2":
        config.pad_token_id = 0  # GPT2ForSequenceClassification with a batch
    if config.model_type == "llama":
        config.pad_token_id = 0
    torch.manual_seed(seed)
    model = getattr(transformers, model_class or default_class)(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model


def outputs_of(model, inputs):
    with torch.no_grad():
        output = model(**inputs)
    return output.logits if hasattr(output, "logits") else output.last_hidden_state


# ---- the pruned model is the hand-sliced one ----------------------------------------------------------
@pytest.mark.parametrize("family,model_class", MODEL_CLASSES, ids=[f"{f}-{c}" for f, c in MODEL_CLASSES])
def test_pruned_model_equals_a_reference_built_from_sliced_weights(family, model_class):
    model, inputs = build(family, model_class), tiny_inputs()
    expected_state = sliced_state(model)
    reference = reference_model(model, expected_state, len(KEPT))
    before = sum(p.numel() for p in model.parameters())
    assert hfprune.prune_hidden(model, REMOVED) is model
    assert_state_equal(model, expected_state)
    assert sum(p.numel() for p in model.parameters()) < before
    assert_close(outputs_of(model, inputs), outputs_of(reference, inputs))
    record = model.config.hfprune
    assert record["kept_hidden"] == KEPT and record["original"]["hidden_size"] == HIDDEN
    assert record["original"]["head_dim"] == 8 and model.config.hidden_size == len(KEPT)


def test_electra_whose_embeddings_are_the_residual_stream_loses_them_too():
    # embedding_size == hidden_size: no embeddings_project, the embeddings (and the tied generator head) are cut.
    model, inputs = build("electra", "ElectraForMaskedLM", embedding_size=HIDDEN), tiny_inputs()
    expected_state = sliced_state(model)
    reference = reference_model(model, expected_state, len(KEPT))
    hfprune.prune_hidden(model, REMOVED)
    assert_state_equal(model, expected_state)
    assert model.config.embedding_size == len(KEPT) and not hasattr(model.electra, "embeddings_project")
    assert model.generator_lm_head.weight is model.electra.embeddings.word_embeddings.weight
    assert_close(outputs_of(model, inputs), outputs_of(reference, inputs))


def test_electra_refuses_a_width_equal_to_its_embedding_size():
    model = tiny_model("electra")  # embedding_size 16, so embeddings_project exists
    with pytest.raises(hfprune.PruningError, match="embedding_size"):
        hfprune.prune_hidden(model, range(16))
    assert model.config.hidden_size == HIDDEN


# ---- reload -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_reload_is_identical(tmp_path, family):
    model, inputs = tiny_model(family), tiny_inputs()
    hfprune.prune_hidden(model, REMOVED)
    expected = logits_of(model, inputs)
    model.save_pretrained(tmp_path)
    reloaded = hfprune.from_pretrained(tmp_path, attn_implementation="eager")
    assert type(reloaded).__name__ == type(model).__name__
    assert_state_equal(reloaded, model.state_dict())
    assert torch.equal(logits_of(reloaded, inputs), expected)
    assert reloaded.config.hfprune == model.config.hfprune
    # The reloaded model prunes on, in original indices, as the one in memory does.
    for pruned in (model, reloaded):
        hfprune.prune_hidden(pruned, [1, 2, 3])
    assert reloaded.config.hfprune == model.config.hfprune
    assert_state_equal(reloaded, model.state_dict())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_composes_with_heads_ffn_and_layers_in_either_order(tmp_path, family):
    inputs = tiny_inputs()
    # Layer 2 loses every head and layer 0 every FFN neuron: their stand-ins (EmptyAttention, EmptyMLP) still
    # add a bias to the residual stream, which loses the same channels.
    heads = {0: [2, 3], 2: [0, 1, 2, 3]} if family in GQA else {0: [1, 3], 2: [0, 1, 2, 3]}
    ffn, layers = {0: list(range(24)), 2: list(range(0, 24, 2))}, [1]

    first = tiny_model(family)
    hfprune.prune_heads(first, heads)
    hfprune.prune_ffn(first, ffn)
    hfprune.drop_layers(first, layers)
    hfprune.prune_hidden(first, REMOVED[:4])
    hfprune.prune_hidden(first, REMOVED)  # again, overlapping: original indices, the rest is a no-op

    second = tiny_model(family)
    hfprune.prune_hidden(second, REMOVED[4:])
    hfprune.drop_layers(second, layers)
    hfprune.prune_heads(second, heads)
    hfprune.prune_hidden(second, REMOVED[:4])
    hfprune.prune_ffn(second, ffn)

    assert first.config.hfprune == second.config.hfprune
    assert_state_equal(second, first.state_dict())
    expected = logits_of(first, inputs)
    assert torch.equal(logits_of(second, inputs), expected)
    # Width pruning keeps head pruning exact: the same heads masked in the width-pruned model agree.
    masked = tiny_model(family)
    hfprune.prune_hidden(masked, REMOVED)
    hfprune.drop_layers(masked, layers)
    hfprune.prune_ffn(masked, ffn)
    with hfprune.apply_masks(masked, head_mask=hfprune.make_head_mask(masked, heads)):
        assert_close(logits_of(masked, inputs), expected)

    first.save_pretrained(tmp_path)
    reloaded = hfprune.from_pretrained(tmp_path, attn_implementation="eager")
    assert torch.equal(logits_of(reloaded, inputs), expected)
    # The trainer's resume path: rebuild the structure on a fresh model, then load the weights.
    fresh = restore_structure(tiny_model(family, seed=3), first.config.hfprune)
    fresh.load_state_dict(first.state_dict())
    assert torch.equal(logits_of(fresh, inputs), expected)


# ---- stock transformers -------------------------------------------------------------------------------
@pytest.mark.parametrize("family", sorted(GQA))
def test_llama_family_with_uniform_shapes_loads_in_stock_transformers(tmp_path, family):
    model, inputs = tiny_model(family), tiny_inputs()
    hfprune.prune_hidden(model, REMOVED)
    hfprune.prune_heads(model, {layer: [2, 3] for layer in range(3)})  # one KV group in every layer
    hfprune.prune_ffn(model, {layer: range(8) for layer in range(3)})
    assert model.config.hfprune["stock_loadable"] and model.config.hfprune["patch"] == []
    expected = logits_of(model, inputs)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["hidden_size"], saved["head_dim"], saved["num_attention_heads"]) == (24, 8, 2)
    stock, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True, attn_implementation="eager")
    assert type(stock) is type(model)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert torch.equal(logits_of(stock.eval(), inputs), expected)


STOCK_WHEN_HEADS_SHRINK = ["bert", "distilbert", "electra", "gpt2", "roberta"]


@pytest.mark.parametrize("family", STOCK_WHEN_HEADS_SHRINK)
def test_head_width_from_config_is_stock_only_when_heads_shrink_with_the_width(tmp_path, family):
    # The head width is hidden_size / num_heads: 24 channels and 3 heads of 8 in every layer is a stock config.
    model, inputs = tiny_model(family), tiny_inputs()
    hfprune.prune_hidden(model, REMOVED)
    assert not model.config.hfprune["stock_loadable"]  # 4 heads of 8 in 24 channels: patched
    hfprune.prune_heads(model, {layer: [layer] for layer in range(3)})
    record = model.config.hfprune
    assert record["stock_loadable"] and record["patch"] == []
    assert hfprune.get_adapter(model).num_heads(model.config) == 3
    expected = logits_of(model, inputs)
    model.save_pretrained(tmp_path)
    stock, info = type(model).from_pretrained(tmp_path, output_loading_info=True, attn_implementation="eager")
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert torch.equal(logits_of(stock.eval(), inputs), expected)


def test_a_width_that_no_head_count_divides_still_builds_and_reloads(tmp_path):
    # GPT-2 insists that n_head divides n_embd: 23 channels keep 4 heads of 8, the config says 1 head.
    model, inputs = tiny_model("gpt2"), tiny_inputs()
    hfprune.prune_hidden(model, range(9))
    assert model.config.n_embd == 23 and model.config.n_head == 1
    expected = logits_of(model, inputs)
    model.save_pretrained(tmp_path)
    assert torch.equal(logits_of(hfprune.from_pretrained(tmp_path, attn_implementation="eager"), inputs), expected)


@pytest.mark.parametrize("family", sorted(GQA))
@pytest.mark.parametrize("cut", ["width", "heads"])
def test_llama_head_counts_that_do_not_divide_the_width_save_and_reload(tmp_path, family, cut):
    # transformers (5.25) validates hidden_size % num_attention_heads on save, although the Llama family's head_dim is
    # explicit: neither 30 channels with 4 heads of 8 nor 32 channels with 3 heads per layer may be said in the config
    config_name, kwargs, model_name = FAMILIES[family]
    config = getattr(transformers, config_name)(vocab_size=VOCAB, **{**kwargs, "num_key_value_heads": 4})
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model, inputs = getattr(transformers, model_name)(config).eval(), tiny_inputs()
    if cut == "width":
        hfprune.prune_hidden(model, [0, 5])  # 30 channels, 4 heads of 8 in every layer
    else:
        hfprune.prune_heads(model, {layer: [layer] for layer in range(3)})  # 3 heads of 8 in every layer
    assert model.config.hidden_size % model.config.num_attention_heads == 0
    assert not model.config.hfprune["stock_loadable"]  # the config cannot say the real counts: the patch does
    expected = logits_of(model, inputs)
    model.save_pretrained(tmp_path)
    assert torch.equal(logits_of(hfprune.from_pretrained(tmp_path, attn_implementation="eager"), inputs), expected)


# ---- tied embeddings ----------------------------------------------------------------------------------
TIED = [("gpt2", "GPT2LMHeadModel", {}), ("llama", "LlamaForCausalLM", {"tie_word_embeddings": True}),
        ("bert", "BertForMaskedLM", {}), ("xlnet", "XLNetLMHeadModel", {})]


@pytest.mark.parametrize("family,model_class,overrides", TIED, ids=[t[1] for t in TIED])
def test_tied_embeddings_stay_tied(tmp_path, family, model_class, overrides):
    model, inputs = build(family, model_class, **overrides), tiny_inputs()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    hfprune.prune_hidden(model, REMOVED)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert model.get_input_embeddings().weight.shape == (VOCAB, len(KEPT))
    expected = logits_of(model, inputs)
    model.save_pretrained(tmp_path)
    reloaded = hfprune.from_pretrained(tmp_path, attn_implementation="eager")
    assert reloaded.get_output_embeddings().weight is reloaded.get_input_embeddings().weight
    assert torch.equal(logits_of(reloaded, inputs), expected)


# ---- refusals and all-or-nothing ----------------------------------------------------------------------
def _snapshot(model):
    return {key: value.clone() for key, value in model.state_dict().items()}, model.config.to_dict()


def _assert_unchanged(model, before):
    state, config = before
    assert_state_equal(model, state)
    assert model.config.to_dict() == config


BAD = {
    "float": ([1.0], "must be integers"),
    "float tensor": (torch.tensor([1.0]), "must be integers"),
    "bool": ([True], "booleans"),
    "bool tensor": (torch.zeros(HIDDEN, dtype=torch.bool), "booleans"),
    "numpy float": (np.array([2.5]), "must be integers"),
    "negative": ([-1], "out of range"),
    "too large": ([HIDDEN], "out of range"),
    "a 2-d tensor": (torch.tensor([[0, 1]]), "2-d"),
    "a dict": ({0: [1]}, "list of integers"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_indices_are_refused_before_anything_changes(kind):
    model = tiny_model("bert")
    before = _snapshot(model)
    channels, match = BAD[kind]
    with pytest.raises(hfprune.PruningError, match=match):
        hfprune.prune_hidden(model, channels)
    _assert_unchanged(model, before)


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_removing_every_channel_is_refused(family):
    model = tiny_model(family)
    hfprune.prune_hidden(model, REMOVED)
    before = _snapshot(model)
    with pytest.raises(hfprune.PruningError, match="no hidden channels"):
        hfprune.prune_hidden(model, range(HIDDEN))
    _assert_unchanged(model, before)


def test_integer_tensors_and_numpy_indices_are_read_and_repeats_are_a_no_op():
    expected = tiny_model("llama")
    hfprune.prune_hidden(expected, REMOVED)
    model = tiny_model("llama")
    hfprune.prune_hidden(model, torch.tensor(REMOVED[:4]))
    hfprune.prune_hidden(model, np.array(REMOVED[3:]))
    before = _snapshot(model)
    hfprune.prune_hidden(model, REMOVED)
    _assert_unchanged(model, before)
    assert_state_equal(model, expected.state_dict())


@pytest.mark.parametrize("where", ["outer", "record"])
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_fault_half_way_rolls_everything_back(monkeypatch, where, error):
    model, inputs = tiny_model("gpt2"), tiny_inputs()  # tied lm_head
    hfprune.prune_heads(model, {0: [1]})
    before, dense = _snapshot(model), logits_of(model, inputs)

    def fault(*args, **kwargs):
        raise error("injected fault")

    if where == "outer":  # after every layer is sliced, while the embeddings are cut
        monkeypatch.setattr(hfprune.engine.hidden, "_sync_attributes", fault)
    else:  # after all weights are cut, while the record is written
        monkeypatch.setattr(hfprune.engine.record, "structure_patch", fault)
    with pytest.raises(error, match="injected fault"):
        hfprune.prune_hidden(model, REMOVED)
    monkeypatch.undo()
    _assert_unchanged(model, before)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert torch.equal(logits_of(model, inputs), dense)
    hfprune.prune_hidden(model, REMOVED)  # still usable
    assert model.lm_head.weight is model.transformer.wte.weight and model.config.n_embd == len(KEPT)


def test_compiled_model_is_pruned_through_its_wrapper():
    model, inputs = tiny_model("llama"), tiny_inputs()
    compiled = torch.compile(model, backend="eager")
    assert hfprune.prune_hidden(compiled, REMOVED) is compiled
    assert model.config.hidden_size == len(KEPT)
    assert torch.equal(logits_of(compiled, inputs), logits_of(model, inputs))


def test_cross_attention_is_refused():
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=24, is_decoder=True, add_cross_attention=True)
    model = transformers.BertModel(config)
    with pytest.raises(hfprune.PruningError, match="crossattention"):
        hfprune.prune_hidden(model, [0])


# ---- records ------------------------------------------------------------------------------------------
def _saved_width_pruned(tmp_path):
    model = tiny_model("bert")
    hfprune.prune_hidden(model, REMOVED)
    model.save_pretrained(tmp_path)
    return model


CORRUPT = {
    "kept_hidden out of range": (lambda r: r.update(kept_hidden=[0, 40]), "outside"),
    "kept_hidden unsorted": (lambda r: r.update(kept_hidden=KEPT[::-1]), "sorted"),
    "kept_hidden empty": (lambda r: r.update(kept_hidden=[]), "kept_hidden is empty"),
    "kept_hidden floats": (lambda r: r.update(kept_hidden=[1.0, 2.0]), "list of integers"),
    "kept_hidden without sizes": (lambda r: r["original"].pop("hidden_size"), "needs original hidden_size"),
    "kept_hidden vs config": (lambda r: r.update(kept_hidden=KEPT[:-1]), "hidden channels but the config says"),
    "head_dim junk": (lambda r: r["original"].update(head_dim="8"), "head_dim must be a positive integer"),
}


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_a_corrupt_width_record_is_refused_on_load(tmp_path, kind):
    _saved_width_pruned(tmp_path)
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    edit, match = CORRUPT[kind]
    edit(config["hfprune"])
    path.write_text(json.dumps(config))
    with pytest.raises(hfprune.PruningError, match=match):
        hfprune.from_pretrained(tmp_path)


def test_a_record_whose_width_disagrees_with_the_weights_is_refused(tmp_path):
    model = tiny_model("llama")
    hfprune.prune_hidden(model, REMOVED)
    record = copy.deepcopy(model.config.hfprune)
    record["kept_hidden"] = KEPT[:-1]  # 23 channels, the norms hold 24
    model.config.hfprune, model.config.hidden_size = record, len(KEPT) - 1
    with pytest.raises(hfprune.PruningError, match="23 hidden channels, the norms hold 24"):
        hfprune.prune_heads(model, {0: [0, 1]})


def test_records_written_before_width_pruning_still_restore(tmp_path):
    # An older record has no original hidden_size/head_dim; restoring it onto a fresh model must still work.
    model, inputs = tiny_model("bert"), tiny_inputs()
    hfprune.prune_heads(model, {0: [1]})
    record = copy.deepcopy(model.config.hfprune)
    assert "kept_hidden" not in record and "hidden_size" not in record["original"]
    fresh = restore_structure(tiny_model("bert", seed=2), record)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(logits_of(fresh, inputs), logits_of(model, inputs))


def test_remote_code_export_of_width_pruned_models_loads_without_hfprune(tmp_path):
    inputs, checks = tiny_inputs(), []
    for family, auto in (("bert", "AutoModelForSequenceClassification"), ("xlnet", "AutoModelForSequenceClassification")):
        model = tiny_model(family)
        hfprune.prune_hidden(model, REMOVED)
        hfprune.prune_heads(model, {0: [1]})
        hfprune.save_for_remote_code(model, tmp_path / family)
        torch.save(logits_of(model, inputs), tmp_path / family / "expected.pt")
        checks.append((tmp_path / family, auto))
    torch.save(inputs, tmp_path / "inputs.pt")
    script = "import sys, torch, transformers\nsys.modules['hfprune'] = None\n"
    script += f"inputs = torch.load(r'{tmp_path / 'inputs.pt'}')\n"
    for folder, auto in checks:
        script += (
            f"model = transformers.{auto}.from_pretrained(r'{folder}', trust_remote_code=True, "
            "attn_implementation='eager').eval()\n"
            "with torch.no_grad():\n    logits = model(**inputs).logits\n"
            f"assert torch.equal(logits, torch.load(r'{folder / 'expected.pt'}')), '{folder.name}'\n"
        )
    script += "print('ok')\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_original_config_builds_the_unpruned_shapes(family):
    # What a dense twin (timing) and the original parameter count are built from, after every kind of pruning.
    model = tiny_model(family)
    expected = {name: p.shape for name, p in model.named_parameters()}
    hfprune.prune_hidden(model, REMOVED)
    hfprune.prune_heads(model, {0: [2, 3]} if family in GQA else {0: [1]})
    hfprune.prune_ffn(model, {1: [0, 1]})
    hfprune.drop_layers(model, [2])
    config = original_config(model)
    assert not getattr(config, "hfprune", None) and model.config.hfprune  # the model's own config is untouched
    with torch.device("meta"):
        twin = type(model)(config)
    assert {name: p.shape for name, p in twin.named_parameters()} == expected
