"""Checkpoints pruned under transformers 4 load under transformers 5 with the logits transformers 4 gave.

The fixtures in tests/fixtures/v4/ were made by tests/scripts/make_v4_fixtures.py with transformers 4.57 itself:
`model.prune_heads` twice with a save/reload in between (layer 0 pruned in both calls, layer 1 down to one head,
a head pruned twice), v4's `save_pretrained`, and v4's logits on fixed inputs. No v4 install is needed here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from cli_fixtures import one_error_line
from hfprune.cli import app
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

import hfprune
from hfprune.export.convert import convert_checkpoint
from hfprune.io.v4 import v4_pruned_heads

FIXTURES = Path(__file__).parent / "fixtures" / "v4"
FAMILIES = ("bert", "roberta", "electra", "distilbert", "gpt2", "xlnet")
V4_PRUNED = {0: [1, 2], 1: [0, 1, 3], 2: [0, 3]}  # what the fixture script's two calls accumulate
TOLERANCE = 1e-5
runner = CliRunner()


def v4_logits_diff(model, folder: Path) -> float:
    expected = load_file(str(folder / "expected.safetensors"))
    with torch.no_grad():
        logits = model(input_ids=expected["input_ids"], attention_mask=expected["attention_mask"]).logits
    return float((logits - expected["logits"]).abs().max())


def test_fixtures_are_small_and_were_made_by_transformers_4():
    files = [path for path in FIXTURES.rglob("*") if path.is_file()]
    assert sum(path.stat().st_size for path in files) < 2_000_000
    for family in FAMILIES:
        config = json.loads((FIXTURES / family / "config.json").read_text())
        assert config["transformers_version"].startswith("4."), family
        assert {int(layer): sorted(heads) for layer, heads in config["pruned_heads"].items()} == V4_PRUNED


@pytest.mark.parametrize(
    "family, impl", [(family, impl) for family in FAMILIES for impl in ("eager", "sdpa") if not (family == "xlnet" and impl == "sdpa")]
)
def test_v4_checkpoint_loads_with_v4_logits(family, impl):
    model = hfprune.from_pretrained(FIXTURES / family, attn_implementation=impl).eval()
    assert v4_logits_diff(model, FIXTURES / family) <= TOLERANCE
    record = model.config.hfprune
    assert record["kept_heads"] == [sorted(set(range(4)) - set(V4_PRUNED[layer])) for layer in range(3)]
    assert record["kept_layers"] == [0, 1, 2] and record["stock_loadable"] is False
    assert not hasattr(model.config, "pruned_heads")


def test_stock_transformers_5_refuses_the_same_checkpoints():
    """Why the conversion exists: v5 reads the config as unpruned and the weights do not fit."""
    for family, auto in (("bert", transformers.AutoModelForSequenceClassification), ("gpt2", transformers.AutoModelForCausalLM)):
        with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
            auto.from_pretrained(FIXTURES / family)


def test_xlnet_weights_hold_every_head_and_hfprune_removes_the_listed_ones():
    """v4 wrote XLNet's pruned_heads but never cut its weights (NotImplementedError): the fixture's expected logits
    are v4's with those heads masked, and hfprune removes them from the weights."""
    with safe_open(str(FIXTURES / "xlnet" / "model.safetensors"), framework="pt") as weights:
        assert weights.get_slice("transformer.layer.1.rel_attn.q").get_shape() == [32, 4, 8]
    model = hfprune.from_pretrained(FIXTURES / "xlnet").eval()
    assert [layer.rel_attn.q.shape[1] for layer in model.transformer.layer] == [2, 1, 2]


def test_converted_model_prunes_further_in_original_indices():
    model = hfprune.from_pretrained(FIXTURES / "bert", attn_implementation="eager").eval()
    hfprune.prune_heads(model, {0: [1, 3], 2: [0]})  # 1 and 0 were already pruned by v4: no-ops
    assert model.config.hfprune["kept_heads"] == [[0], [2], [1, 2]]
    assert model.bert.encoder.layer[0].attention.self.query.weight.shape == (8, 32)


def test_pruned_heads_are_read_like_transformers_4_did():
    config = transformers.BertConfig(num_hidden_layers=3, num_attention_heads=4, hidden_size=32)
    config.pruned_heads = {"0": [2, 1], 0: [1], "2": [3, 3], "1": []}  # JSON string keys, repeats, an empty list
    assert v4_pruned_heads(config) == {0: [1, 2], 2: [3]}

    for value, message in (
        ({"3": [0]}, r"layer: index 3 is out of range \[0, 3\)"),
        ({"0": [4]}, r"index 4 is out of range \[0, 4\)"),
        ({"0": 1}, "must be a list of head indices"),
        ({"0": [1.0]}, "must be integers"),
        ({"1": [0, 1, 2, 3]}, r"every head of layer\(s\) \[1\]"),
        ([1, 2], "must be a dict"),
    ):
        config.pruned_heads = value
        with pytest.raises(hfprune.PruningError, match=message):
            v4_pruned_heads(config)

    config.pruned_heads = {"0": [1]}
    config.hfprune = {"kept_layers": [0]}
    with pytest.raises(hfprune.PruningError, match="both config.hfprune and transformers 4's pruned_heads"):
        v4_pruned_heads(config)
    llama = transformers.LlamaConfig(num_hidden_layers=2, num_attention_heads=4, hidden_size=32)
    llama.pruned_heads = {"0": [1]}
    with pytest.raises(hfprune.PruningError, match="'llama' checkpoint"):
        v4_pruned_heads(llama)


def test_convert_checkpoint_writes_a_transformers_5_checkpoint(tmp_path):
    out = tmp_path / "converted"
    result = convert_checkpoint(FIXTURES / "bert", out)
    assert result.output_dir == out and result.pruned_heads == V4_PRUNED
    config = json.loads((out / "config.json").read_text())
    assert "pruned_heads" not in config and config["hfprune"]["kept_heads"] == [[0, 3], [2], [1, 2]]
    assert config["transformers_version"].startswith("5.")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):  # copied as they were
        assert (out / name).read_bytes() == (FIXTURES / "bert" / name).read_bytes()
    assert len(transformers.AutoTokenizer.from_pretrained(out)) == 99
    model = hfprune.from_pretrained(out, attn_implementation="eager").eval()
    assert v4_logits_diff(model, FIXTURES / "bert") <= TOLERANCE
    assert [p.name for p in tmp_path.iterdir()] == ["converted"]  # no staging folder left behind

    with pytest.raises(hfprune.PruningError, match="nothing to convert"):
        convert_checkpoint(out, tmp_path / "again")
    with pytest.raises(hfprune.PruningError, match="not empty"):
        convert_checkpoint(FIXTURES / "bert", out)
    convert_checkpoint(FIXTURES / "gpt2", out, overwrite=True)
    assert (out / "generation_config.json").is_file() and not (out / "vocab.txt").exists()


def test_convert_command(tmp_path):
    result = runner.invoke(app, ["convert", str(FIXTURES / "distilbert"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "7 pruned heads in 3 layer(s)" in result.stdout
    model = hfprune.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    assert v4_logits_diff(model, FIXTURES / "distilbert") <= TOLERANCE

    one_error_line(runner.invoke(app, ["convert", str(tmp_path / "missing"), "-o", str(tmp_path / "x")]))
    one_error_line(runner.invoke(app, ["convert", str(tmp_path / "out"), "-o", str(tmp_path / "x")]))  # already v5
    one_error_line(runner.invoke(app, ["convert", str(FIXTURES / "bert"), "-o", str(tmp_path / "out")]))  # not empty
    broken = tmp_path / "broken"
    shutil.copytree(FIXTURES / "bert", broken)
    config = json.loads((broken / "config.json").read_text())
    config["pruned_heads"] = {"7": [0]}
    (broken / "config.json").write_text(json.dumps(config))
    assert "out of range" in one_error_line(runner.invoke(app, ["convert", str(broken), "-o", str(tmp_path / "x")]))
    assert not (tmp_path / "x").exists()
