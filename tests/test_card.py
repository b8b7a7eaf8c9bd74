"""Model cards: render, parse back with huggingface_hub, and check every number against the model itself."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from huggingface_hub import ModelCard
from PIL import Image

import hfprune
from hfprune.card import regenerate_model_card, sparsity_summary, write_model_card

MNLI_BEFORE = {"validation_matched": {"accuracy": 0.84}, "validation_mismatched": {"accuracy": 0.845}}
MNLI_AFTER = {"validation_matched": {"accuracy": 0.8312}, "validation_mismatched": {"accuracy": 0.8377}}
SPEED = {
    "device": "cpu (Test CPU, 1 thread)",
    "rows": [
        dict(model="dense", batch_size=8, seq_len=128, median_ms=40.0, p25_ms=39.0, p75_ms=41.0, throughput=200.0,
             flops=10**9, params=1000, speedup=1.0, ideal_speedup=1.0),
        dict(model="pruned", batch_size=8, seq_len=128, median_ms=25.0, p25_ms=24.5, p75_ms=26.0, throughput=320.0,
             flops=6 * 10**8, params=700, speedup=1.6, ideal_speedup=1.667),
    ],
}  # fmt: skip


def heads_table(text: str) -> dict[int, str]:
    """`{original layer: "kept heads" cell}` from the card's per-layer table."""
    rows = re.findall(r"^\| (\d+) \| [^|]+ \| ([^|]+) \| [^|]+ \|$", text, flags=re.M)
    return {int(layer): cell.strip() for layer, cell in rows}


@pytest.fixture
def pruned():
    model = tiny_model("bert")  # 3 layers x 4 heads, FFN 24
    dense_parameters = sum(p.numel() for p in model.parameters())
    hfprune.prune_heads(model, {0: [1, 2], 1: [0, 1, 2, 3]})  # layer 1 loses its attention block
    hfprune.prune_ffn(model, {0: range(6)})
    hfprune.drop_layers(model, [2])
    return model, dense_parameters


def test_card_round_trips_metadata_tables_and_pictures(pruned, tmp_path: Path):
    model, dense_parameters = pruned
    importance = torch.rand(3, 4)
    write_model_card(
        model, tmp_path, base_model="bert-base-uncased", task="mnli", metrics_before=MNLI_BEFORE,
        metrics_after=MNLI_AFTER, speed=SPEED, importance=importance, command="hfprune prune bert-base-uncased --task mnli",
        repo_id="me/bert-mnli-pruned", base_num_parameters=dense_parameters,
    )  # fmt: skip
    card = ModelCard.load(tmp_path / "README.md")

    data = card.data
    assert data.base_model == "bert-base-uncased" and data.datasets == ["nyu-mll/glue"]
    assert "hfprune" in data.tags and data.library_name == "transformers"
    assert data.pipeline_tag == "text-classification"
    results = {(r.dataset_split, r.metric_type): r.metric_value for r in data.eval_results}
    assert results == {("validation_matched", "accuracy"): 0.8312, ("validation_mismatched", "accuracy"): 0.8377}
    assert {r.dataset_config for r in data.eval_results} == {"mnli"}
    assert data.to_dict()["hfprune"]["sparsity"]["heads"] == round(10 / 12, 6)  # 6 heads + dropped layer's 4

    record = model.config.hfprune
    table = heads_table(card.text)
    assert table[2] == "layer dropped"
    for current, layer in enumerate(record["kept_layers"]):
        heads = record["kept_heads"][current]
        assert table[layer] == (", ".join(map(str, heads)) if heads else "none (attention removed)")
    assert table == {0: "0, 3", 1: "none (attention removed)", 2: "layer dropped"}

    text = card.text
    assert "| validation_mismatched | accuracy | 0.8450 | 0.8377 | -0.0073 |" in text
    assert "cpu (Test CPU, 1 thread)" in text and "| pruned | 8 | 128 | 25.00 [24.50-26.00] |" in text and "1.60x" in text
    assert 'hfprune.from_pretrained("me/bert-mnli-pruned")' in text
    assert "Plain transformers does not load it" in text  # per-layer shapes
    assert "hfprune prune bert-base-uncased --task mnli" in text
    kept_parameters = sum(p.numel() for p in model.parameters())
    assert f"| parameters | {dense_parameters:,} | {kept_parameters:,} |" in text

    for name in ("heads.png", "importance.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.size[0] > 100


def test_stock_loadable_card_shows_plain_transformers_code_that_works(tmp_path: Path):
    model = tiny_model("bert")
    hfprune.drop_layers(model, [1])  # layers only: stock transformers can load it
    model.save_pretrained(tmp_path)
    card = write_model_card(model, tmp_path, base_model=str(tmp_path), task="sst2", metrics_after={"accuracy": 0.9})

    assert card.data.base_model is None  # a local path is not a Hub id: kept out of the metadata
    assert card.data.to_dict()["hfprune"]["base_model"] == str(tmp_path)
    code = re.search(r"from transformers import (\w+)\n\nmodel = \1\.from_pretrained\(\"([^\"]+)\"\)", card.text)
    assert code and code.group(1) == "AutoModelForSequenceClassification"
    assert [(r.dataset_split, r.metric_value) for r in card.data.eval_results] == [("validation", 0.9)]
    import transformers

    reloaded = getattr(transformers, code.group(1)).from_pretrained(tmp_path)  # what the card tells a stranger
    assert reloaded.config.num_hidden_layers == 2
    assert not (tmp_path / "importance.png").exists()  # no scores given, no importance picture
    assert "Speed was not measured" in card.text


def test_sparsity_summary_rebuilds_the_dense_parameter_count(pruned):
    model, dense_parameters = pruned
    summary = sparsity_summary(model)  # no count given: rebuilt from the config on the meta device
    assert summary["parameters"]["original"] == dense_parameters
    assert summary["layers"] == {"original": 3, "kept": 2, "removed": 1, "sparsity": pytest.approx(1 / 3)}
    assert summary["ffn_neurons"]["kept"] == 18 + 24


def test_regenerate_keeps_stored_inputs_and_applies_overrides(tmp_path: Path):
    import json

    from hfprune.card import RESULTS_FILE, card_inputs

    model = tiny_model("gpt2")  # a decoder: the card must not pretend it is a classifier
    hfprune.drop_layers(model, [2])
    model.save_pretrained(tmp_path)
    stored = card_inputs(
        base_model="openai-community/gpt2", task="lm", metrics_before={"perplexity": 20.0},
        metrics_after={"perplexity": 22.5}, speed=None, importance=None, command="hfprune prune gpt2 --task lm",
        pruning={"method": "magnitude"}, base_num_parameters=None, finetuned_first=False, repo_id="me/gpt2-pruned",
    )  # fmt: skip
    (tmp_path / RESULTS_FILE).write_text(json.dumps({"card": stored}))

    card = regenerate_model_card(tmp_path)
    assert 'hfprune.from_pretrained("me/gpt2-pruned")' in card.text
    assert 'AutoModelForCausalLM.from_pretrained("me/gpt2-pruned")' in card.text
    assert card.data.pipeline_tag == "text-generation"
    assert [(r.metric_type, r.metric_value) for r in card.data.eval_results] == [("perplexity", 22.5)]

    card = regenerate_model_card(tmp_path, repo_id="other/name")
    assert 'hfprune.from_pretrained("other/name")' in card.text
    assert ModelCard.load(tmp_path / "README.md").text == card.text
