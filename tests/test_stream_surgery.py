"""Streamed surgery (`hfprune.streaming.surgery.prune_checkpoint`) writes what the in-memory path writes, bit for bit:
`hfprune.from_pretrained` + the engine's surgery + `save_pretrained` (and the tokenizer's files)."""

import json
from pathlib import Path

import pytest
import torch
import transformers
from conftest import FAMILIES, GQA, tiny_inputs, tiny_model
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

import hfprune
from hfprune.engine.surgery import prune_heads
from hfprune.engine.transaction import tracing_slices
from hfprune.errors import PruningError
from hfprune.io.skeleton import checkpoint_skeleton
from hfprune.engine.apply_plan import apply_plan
from hfprune.streaming.surgery import prune_checkpoint

WORDS = ["<unk>", "<s>", "</s>", "[PAD]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(93)]
TEXT = "w1 w5 w17 w42 w3 w88 w9"
CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"

LLAMA = {
    "vocab_size": len(WORDS), "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128, "bos_token_id": 1, "eos_token_id": 2,
}  # fmt: skip
BERT = {
    "vocab_size": len(WORDS), "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4,
    "intermediate_size": 48, "max_position_embeddings": 32, "num_labels": 3,
}  # fmt: skip

# Llama: 4 layers, 4 query heads in 2 KV groups of 2, 128 FFN neurons, 64 channels
LLAMA_PLANS = {
    "heads": {"heads": {0: [1, 3], 2: [0, 2]}},  # one query head of each group: both KV heads stay
    "kv_groups": {"heads": {0: [0, 1], 3: [2, 3]}},  # whole KV groups
    "ffn": {"ffn": {0: list(range(0, 128, 3)), 3: [5, 6, 100]}},
    "layers": {"layers": [1, 2]},
    "all_heads": {"heads": {1: [0, 1, 2, 3]}},  # EmptyAttention
    "all_ffn": {"ffn": {2: list(range(128))}},
    "hidden": {"hidden": list(range(0, 64, 5))},
    "combined": {
        "layers": [2], "heads": {0: [1, 3], 1: [0, 1, 2, 3], 3: [2, 3]}, "ffn": {0: list(range(64)), 3: list(range(128))},
        "hidden": [3, 9, 10, 40], "predicted_seconds": 0.5,
    },
}  # fmt: skip
# BERT: 3 layers of 4 heads, 48 FFN neurons, 32 channels, a classification head
BERT_PLANS = {
    "heads": {"heads": {0: [1], 2: [0, 3]}},
    "ffn": {"ffn": {1: list(range(0, 48, 2))}},
    "layers": {"layers": [0]},
    "all_heads": {"heads": {1: [0, 1, 2, 3]}},
    "all_ffn": {"ffn": {0: list(range(48))}},
    "hidden": {"hidden": [0, 7, 8, 31]},
    "combined": {"layers": [2], "heads": {0: [0, 1, 2, 3], 1: [2]}, "ffn": {1: list(range(40))}, "hidden": [4, 5]},
}


# ---- checkpoints -------------------------------------------------------------------------------------------------
def _perturbed(model):
    """Random init leaves biases at zero and norms at one; move every weight so that a wrong cut shows."""
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model.eval()


def _fast_tokenizer(**special):
    backend = Tokenizer(WordLevel({word: i for i, word in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", **special)


def _save_llama(folder: Path, *, tied: bool, dtype=torch.float32, **save) -> Path:
    torch.manual_seed(0)
    model = _perturbed(transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA, tie_word_embeddings=tied)))
    model.to(dtype).save_pretrained(folder, **save)
    tokenizer = _fast_tokenizer(bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


def _save_bert(folder: Path) -> Path:
    torch.manual_seed(0)
    model = _perturbed(transformers.BertForSequenceClassification(transformers.BertConfig(**BERT)))
    model.save_pretrained(folder)
    _fast_tokenizer(pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        "llama_tied": _save_llama(root / "llama_tied", tied=True),
        "llama_untied": _save_llama(root / "llama_untied", tied=False),
        "llama_sharded": _save_llama(root / "llama_sharded", tied=False, max_shard_size="20KB"),
        "llama_bf16": _save_llama(root / "llama_bf16", tied=True, dtype=torch.bfloat16),
        "bert": _save_bert(root / "bert"),
    }


# ---- the in-memory path and the comparison -------------------------------------------------------------------------
def _in_memory(model_dir: Path, plan: dict, output_dir: Path, *, tokenizer: bool = True, **save):
    """What the in-memory job writes: the model loaded, pruned by the engine and saved, with its tokenizer."""
    model = apply_plan(hfprune.from_pretrained(model_dir), plan)
    model.save_pretrained(output_dir, **save)
    if tokenizer:
        transformers.AutoTokenizer.from_pretrained(model_dir).save_pretrained(output_dir)
    return model


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as weights:
            tensors.update({key: weights.get_tensor(key) for key in weights.keys()})  # noqa: SIM118
    return tensors


def _json(path: Path):
    return json.loads(path.read_text())


def _assert_same_checkpoint(reference: Path, streamed: Path) -> None:
    expected, actual = _tensors(reference), _tensors(streamed)
    assert sorted(actual) == sorted(expected)
    for key, tensor in expected.items():
        assert actual[key].dtype == tensor.dtype, key
        assert torch.equal(actual[key], tensor), key
    assert sorted(p.name for p in streamed.glob("*.safetensors")) == sorted(p.name for p in reference.glob("*.safetensors"))
    assert _json(streamed / "config.json") == _json(reference / "config.json")
    for name in ("generation_config.json", "model.safetensors.index.json"):
        assert (streamed / name).is_file() == (reference / name).is_file(), name
        if (reference / name).is_file():
            assert _json(streamed / name) == _json(reference / name), name


def _assert_same_tokenizer(reference: Path, streamed: Path) -> None:
    assert sorted(p.name for p in streamed.iterdir()) == sorted(p.name for p in reference.iterdir())
    expected, actual = (transformers.AutoTokenizer.from_pretrained(folder) for folder in (reference, streamed))
    assert actual(TEXT)["input_ids"] == expected(TEXT)["input_ids"]
    assert actual.chat_template == expected.chat_template


def _inputs() -> dict:
    ids = torch.tensor([[WORDS.index(word) for word in TEXT.split()]] * 2)
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _assert_same_logits(model, streamed: Path) -> None:
    reloaded = hfprune.from_pretrained(streamed)
    with torch.no_grad():
        assert torch.equal(reloaded(**_inputs()).logits, model.eval()(**_inputs()).logits)


def _check(model_dir: Path, plan: dict, tmp_path: Path, **save) -> None:
    reference, streamed = tmp_path / "reference", tmp_path / "streamed"
    model = _in_memory(model_dir, plan, reference, **save)
    assert prune_checkpoint(model_dir, plan, streamed, **save) == streamed
    _assert_same_checkpoint(reference, streamed)
    _assert_same_tokenizer(reference, streamed)
    _assert_same_logits(model, streamed)


# ---- streamed == in memory -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("case", sorted(LLAMA_PLANS))
def test_llama_plan_streams_like_in_memory(checkpoints, tmp_path, case, tied):
    _check(checkpoints["llama_tied" if tied else "llama_untied"], LLAMA_PLANS[case], tmp_path)


@pytest.mark.parametrize("case", sorted(BERT_PLANS))
def test_bert_plan_streams_like_in_memory(checkpoints, tmp_path, case):
    _check(checkpoints["bert"], BERT_PLANS[case], tmp_path)


def test_sharded_input_and_output(checkpoints, tmp_path):
    _check(checkpoints["llama_sharded"], LLAMA_PLANS["combined"], tmp_path, max_shard_size="20KB")
    assert len(list((tmp_path / "streamed").glob("*.safetensors"))) > 1


def test_sharded_input_to_one_file(checkpoints, tmp_path):
    _check(checkpoints["llama_sharded"], LLAMA_PLANS["hidden"], tmp_path)
    assert [p.name for p in (tmp_path / "streamed").glob("*.safetensors")] == ["model.safetensors"]


def test_dtype_stays_as_stored(checkpoints, tmp_path):
    _check(checkpoints["llama_bf16"], LLAMA_PLANS["combined"], tmp_path)
    assert {t.dtype for t in _tensors(tmp_path / "streamed").values()} == {torch.bfloat16}
    assert _json(tmp_path / "streamed" / "config.json")["dtype"] == "bfloat16"


def test_empty_plan_copies_the_checkpoint(checkpoints, tmp_path):
    _check(checkpoints["bert"], {}, tmp_path)


@pytest.mark.parametrize("name, first, second", [
    ("llama_tied", LLAMA_PLANS["combined"], {"heads": {0: [0, 2]}, "ffn": {1: [0, 1, 2]}, "layers": [3], "hidden": [11]}),
    ("bert", BERT_PLANS["combined"], {"heads": {0: [1], 1: [0]}, "layers": [1], "hidden": [6, 4]}),
])  # fmt: skip
def test_already_pruned_checkpoint(checkpoints, tmp_path, name, first, second):
    pruned = tmp_path / "pruned"
    _in_memory(checkpoints[name], first, pruned)
    _check(pruned, second, tmp_path / "again")
    # streamed twice is the same as pruned twice in memory
    prune_checkpoint(checkpoints[name], first, tmp_path / "streamed_once")
    prune_checkpoint(tmp_path / "streamed_once", second, tmp_path / "streamed_twice")
    _assert_same_checkpoint(tmp_path / "again" / "reference", tmp_path / "streamed_twice")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_streams_like_in_memory(tmp_path, family):
    """conftest's families (3 layers, 4 heads, 24 FFN neurons, 32 channels): XLNet's bare attention Parameters,
    GPT-2's fused Conv1D and its EmptyMLP bias, ELECTRA's embeddings projection, DistilBERT's layout."""
    source, reference, streamed = tmp_path / "source", tmp_path / "reference", tmp_path / "streamed"
    tiny_model(family).save_pretrained(source)
    plan = {
        "heads": {0: [0, 1] if family in GQA else [1], 1: [0, 1, 2, 3]}, "ffn": {1: [0, 5, 9], 2: list(range(24))},
        "layers": [2], "hidden": [1, 2, 30],
    }  # fmt: skip
    model = _in_memory(source, plan, reference, tokenizer=False)
    prune_checkpoint(source, plan, streamed)
    _assert_same_checkpoint(reference, streamed)
    with torch.no_grad():
        expected = model.eval()(**tiny_inputs()).logits
        assert torch.equal(hfprune.from_pretrained(streamed)(**tiny_inputs()).logits, expected)


def _renamed_copy(source: Path, target: Path, rename) -> Path:
    """A copy of the checkpoint `source` whose stored keys are `rename(key)`."""
    target.mkdir()
    for file in source.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    renamed = {rename(key): tensor for key, tensor in _tensors(source).items()}
    save_file(renamed, str(target / "model.safetensors"), metadata={"format": "pt"})
    return target


def _legacy_names(key: str) -> str:
    return key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")


def test_legacy_key_names_are_read_and_written_back(checkpoints, tmp_path):
    """A checkpoint with transformers' legacy names (LayerNorm.gamma/beta) passes the skeleton's weight check, is
    read through the renames `from_pretrained` applies, and written back under them, as `save_pretrained` reverts
    them."""
    source = _renamed_copy(checkpoints["bert"], tmp_path / "legacy", _legacy_names)
    _check(source, BERT_PLANS["combined"], tmp_path)
    assert "bert.embeddings.LayerNorm.gamma" in _tensors(tmp_path / "streamed")


def test_weights_saved_without_the_base_model_prefix_stream(checkpoints, tmp_path):
    """A task model's checkpoint saved from its base model (keys without `bert.`) loads into the task model, as
    `from_pretrained` adds the prefix; the skeleton check and the surgery read it the same way."""
    source = _renamed_copy(checkpoints["bert"], tmp_path / "base", lambda key: key.removeprefix("bert."))
    assert checkpoint_skeleton(source, check_weights=True) is not None
    _check(source, BERT_PLANS["combined"], tmp_path)


def test_renamed_weight_of_the_wrong_shape_is_still_refused(checkpoints, tmp_path):
    source = _renamed_copy(checkpoints["bert"], tmp_path / "legacy", _legacy_names)
    tensors = _tensors(source)
    tensors["bert.embeddings.LayerNorm.gamma"] = tensors["bert.embeddings.LayerNorm.gamma"][:-1]
    save_file(tensors, str(source / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(PruningError, match="LayerNorm") as error:
        checkpoint_skeleton(source, check_weights=True)
    assert "\n" not in str(error.value)


# ---- refusals ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("plan, message", [
    ({"layers": [4]}, "out of range"),
    ({"heads": {0: [1]}}, "uneven grouped-query pattern"),
    ({"heads": {7: [0]}}, "out of range"),
    ({"layers": [0, 1, 2, 3]}, "no layers"),
    ({"hidden": list(range(64))}, "no hidden channels"),
    ({"head": {0: [0, 1]}}, "unknown key"),
    ([0, 1], "must be a dict"),
])  # fmt: skip
def test_bad_plan_writes_nothing(checkpoints, tmp_path, plan, message):
    output = tmp_path / "out"
    with pytest.raises(PruningError, match=message) as error:
        prune_checkpoint(checkpoints["llama_untied"], plan, output)
    assert "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_bad_shard_size_writes_nothing(checkpoints, tmp_path):
    with pytest.raises(PruningError, match="max_shard_size"):
        prune_checkpoint(checkpoints["bert"], BERT_PLANS["heads"], tmp_path / "out", max_shard_size="big")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused_without_overwrite(checkpoints, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("old")
    with pytest.raises(PruningError, match="not empty"):
        prune_checkpoint(checkpoints["bert"], BERT_PLANS["heads"], output)
    assert [p.name for p in output.iterdir()] == ["keep.txt"]
    with pytest.raises(PruningError, match="out of range"):  # a bad plan with overwrite leaves it as well
        prune_checkpoint(checkpoints["bert"], {"layers": [3]}, output, overwrite=True)
    assert [p.name for p in output.iterdir()] == ["keep.txt"]
    prune_checkpoint(checkpoints["bert"], BERT_PLANS["heads"], output, overwrite=True)
    assert not (output / "keep.txt").exists() and (output / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left behind


def test_folder_without_safetensors_is_refused(tmp_path):
    folder = tmp_path / "config_only"  # as a pytorch_model.bin checkpoint looks to streamed surgery
    transformers.BertConfig(**BERT).save_pretrained(folder)
    with pytest.raises(PruningError, match="no safetensors weights"):
        prune_checkpoint(folder, {}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---- the engine hook ---------------------------------------------------------------------------------------------
def test_meta_weights_are_refused_outside_tracing(checkpoints):
    model = checkpoint_skeleton(checkpoints["llama_untied"], check_weights=True)
    with pytest.raises(PruningError, match="meta device"):
        prune_heads(model, {0: [0, 1]})


def test_tracing_records_the_selections(checkpoints):
    model = checkpoint_skeleton(checkpoints["llama_untied"], check_weights=True)
    original = model.model.layers[0].self_attn.k_proj.weight
    with tracing_slices() as trace:
        prune_heads(model, {0: [0, 1]})
    made = trace.of(model.model.layers[0].self_attn.k_proj.weight)
    assert made.origin is original
    ((dim, index),) = made.selections
    assert dim == 0 and index.tolist() == list(range(16, 32))  # the second KV head's rows
    untouched = model.model.layers[1].self_attn.k_proj.weight
    assert trace.of(untouched).origin is untouched and trace.of(untouched).selections == ()
