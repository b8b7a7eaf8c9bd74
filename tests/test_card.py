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
from hfprune.export.card import regenerate_model_card, write_model_card
from hfprune.measure.sparsity import sparsity_summary

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
    assert card.data.to_dict()["hfprune"]["base_model"] == tmp_path.name  # named by its folder only
    assert f"This model is **{tmp_path.name}** (a local checkpoint)" in card.text
    assert str(tmp_path.parent) not in str(card)
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

    from hfprune.constants import RESULTS_FILE
    from hfprune.export.card_source import card_inputs

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


# ---- issue 11: cards that travel with the model ------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "hfprune prune /home/alice/models/minilm --task sst2 --output-dir /tmp/out --data-dir ../glue",
            "hfprune prune minilm --task sst2 --output-dir out --data-dir ../glue",
        ),
        ("hfprune prune ~/models/bert -o=/tmp/x/ --repo-id me/bert", "hfprune prune bert -o=x --repo-id me/bert"),
        ("hfprune prune '/home/alice/my models/bert' -o out", "hfprune prune 'bert' -o out"),
        (
            "hfprune.jobs.prune.prune_for_task('/work/venv/m', 'sst2', output_dir='/tmp/o', data_dir=None)",
            "hfprune.jobs.prune.prune_for_task('m', 'sst2', output_dir='o', data_dir=None)",
        ),
        (r"hfprune prune C:\Users\bob\bert -o D:\out", "hfprune prune bert -o out"),
        ("hfprune eval / --task sst2", "hfprune eval <local> --task sst2"),
        # Hub ids, relative paths, URLs and ratios are not paths to hide
        ("hfprune prune google-bert/bert-base-uncased --data-dir data/glue --heads 0.4", None),
        ("HF_ENDPOINT=https://hub.example.org/api hfprune push ./out me/out", None),
    ],
)
def test_sanitize_paths_keeps_only_the_last_part_of_absolute_paths(text, expected):
    from hfprune.export.card_source import sanitize_paths

    assert sanitize_paths(text) == (text if expected is None else expected)


def _render(model, folder: Path, **kwargs):
    return write_model_card(model, folder, **{"base_model": "google-bert/bert-base-uncased", **kwargs})


def test_card_inputs_keep_no_absolute_path_and_a_local_base_stays_local(tmp_path: Path, monkeypatch):
    import json

    from hfprune.constants import RESULTS_FILE
    from hfprune.export.card_source import card_inputs

    base = tmp_path / "home" / "alice" / "gpt2"  # a local folder whose name is also a Hub id
    base.mkdir(parents=True)
    stored = card_inputs(
        base_model=str(base), task="sst2", metrics_before=None, metrics_after={"accuracy": 0.9}, speed=None,
        importance=None, command=f"hfprune prune {base} --task sst2 -o {tmp_path}/out",
        pruning={"data_dir": str(tmp_path / "glue"), "head_sparsity": 0.4}, base_num_parameters=None, finetuned_first=False,
    )  # fmt: skip
    assert str(tmp_path) not in json.dumps(stored)
    assert (stored["base_model"], stored["base_model_id"]) == ("./gpt2", None)
    assert stored["command"] == "hfprune prune gpt2 --task sst2 -o out" and stored["pruning"]["data_dir"] == "glue"

    model = tiny_model("bert")
    hfprune.drop_layers(model, [2])
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    (checkpoint / RESULTS_FILE).write_text(json.dumps({"card": stored}))
    monkeypatch.chdir(tmp_path)  # no "gpt2" here: the stored name must still not pass for a Hub id
    card = regenerate_model_card(checkpoint)
    assert card.data.base_model is None and "This model is **gpt2** (a local checkpoint)" in card.text
    assert str(tmp_path) not in str(card)

    card = regenerate_model_card(checkpoint, base_model_id="openai-community/gpt2")
    assert card.data.base_model == "openai-community/gpt2"
    assert "This model is **openai-community/gpt2** after structured pruning" in card.text


def test_base_model_from_the_hub_or_given_id_is_the_standard_metadata_field(pruned, tmp_path: Path):
    model, _ = pruned
    assert _render(model, tmp_path / "a").data.base_model == "google-bert/bert-base-uncased"
    local = tmp_path / "bert-local"
    local.mkdir()
    card = _render(model, tmp_path / "b", base_model=str(local), base_model_id="google-bert/bert-base-uncased")
    assert card.data.base_model == "google-bert/bert-base-uncased"
    assert card.data.to_dict()["hfprune"]["base_model"] == "google-bert/bert-base-uncased"
    assert "base_model: google-bert/bert-base-uncased" in (tmp_path / "b" / "README.md").read_text()


@pytest.mark.parametrize(
    "finetuned_first, pruning, says, never",
    [
        # hfprune drop-layers: no training at all
        (False, {"layers dropped": "2", "strategy": "top"}, "It was not fine-tuned after pruning: the weights that remain are those of the base model.", "fine-tuned first"),
        (False, {"recovery_epochs": 0.0}, "It was not fine-tuned after pruning", "fine-tuned again"),
        (True, {"recovery_epochs": 0}, "the weights that remain are those of the fine-tuned base model", "fine-tuned again"),
        (True, {"recovery_epochs": 1.0}, "After pruning, the model was fine-tuned again to recover (1 epoch).", "not fine-tuned after"),
        (False, {"recovery_epochs": 0.0, "recovery_steps": 30}, "fine-tuned again to recover (30 steps).", "not fine-tuned after"),
    ],
)
def test_the_card_claims_only_the_fine_tuning_that_happened(pruned, tmp_path: Path, finetuned_first, pruning, says, never):
    model, _ = pruned
    text = _render(model, tmp_path, task="sst2", finetuned_first=finetuned_first, pruning=pruning).text
    assert says in text and never not in text
    assert "pruned and fine-tuned" not in text
    assert ("a new head was fine-tuned first" in text) is finetuned_first


def test_an_eval_subset_is_named_in_the_model_index(pruned, tmp_path: Path):
    model, _ = pruned
    card = _render(model, tmp_path, task="mnli", metrics_after=MNLI_AFTER, pruning={"max_eval_samples": 200})
    assert {(r.dataset_name, r.dataset_split) for r in card.data.eval_results} == {
        ("GLUE MNLI (first 200 validation_matched examples)", "validation_matched[:200]"),
        ("GLUE MNLI (first 200 validation_mismatched examples)", "validation_mismatched[:200]"),
    }
    assert "**the first 200 examples of each split only**" in card.text
    full = _render(model, tmp_path / "full", task="mnli", metrics_after=MNLI_AFTER)
    assert {(r.dataset_name, r.dataset_split) for r in full.data.eval_results} == {
        ("GLUE MNLI", "validation_matched"), ("GLUE MNLI", "validation_mismatched")
    }  # fmt: skip


def test_majority_baseline_column_and_weak_baseline_warning(pruned, tmp_path: Path):
    from hfprune.export.card_source import card_inputs

    model, _ = pruned
    inputs = card_inputs(
        base_model="google-bert/bert-base-uncased", task="mrpc", speed=None, importance=None, command=None,
        metrics_before={"accuracy": 0.6838, "f1": 0.8122}, metrics_after={"accuracy": 0.6912, "f1": 0.8151},
        baselines={"accuracy": 0.6838, "f1": 0.8122}, pruning=None, base_num_parameters=None, finetuned_first=True,
        weak_baseline="The dense model is not clearly above the majority class on validation (accuracy 0.6838 vs 0.6838).",
    )  # fmt: skip
    text = write_model_card(model, tmp_path, **inputs).text
    assert "| split | metric | majority class | dense (before pruning) | pruned | change |" in text
    assert "| validation | accuracy | 0.6838 | 0.6838 | 0.6912 | +0.0074 |" in text
    assert "| validation | f1 | 0.8122 | 0.8122 | 0.8151 | +0.0029 |" in text
    warning = "> **Warning: weak baseline.** The dense model is not clearly above the majority class"
    assert warning in text and text.index(warning) < text.index("## Results")

    plain = _render(model, tmp_path / "plain", task="mrpc", metrics_after={"accuracy": 0.9}).text
    assert "majority class" not in plain and "weak baseline" not in plain


def test_noisy_speed_is_marked_on_the_card(pruned, tmp_path: Path):
    model, _ = pruned
    quiet = _render(model, tmp_path / "quiet", speed=SPEED).text  # JSON from before noise was recorded
    assert "| pruned | 8 | 128 | 25.00 [24.50-26.00] | 320.0 | 700 | 1.60x | 1.67x | ok |" in quiet
    assert "noisy" not in quiet

    noisy_speed = {**SPEED, "rows": [SPEED["rows"][0], {**SPEED["rows"][1], "speedup": 1.76, "ideal_speedup": 1.44}]}
    text = _render(model, tmp_path / "noisy", speed=noisy_speed).text
    assert "| pruned | 8 | 128 | 25.00 [24.50-26.00] | 320.0 | 700 | 1.76x | 1.44x | **noisy** |" in text
    assert "| dense | 8 | 128 | 40.00 [39.00-41.00] | 200.0 | 1,000 | 1.00x | 1.00x | ok |" in text
    assert "> **Warning: noisy timing.**" in text and "`hfprune bench --threads 1`" in text
    assert "> - pruned at batch 8 x 128: measured speedup 1.76x is more than 10% above the FLOPs ideal 1.44x" in text


def test_regenerate_into_another_folder_only_reads_the_checkpoint(tmp_path: Path):
    from cli_fixtures import snapshot

    model = tiny_model("bert")
    hfprune.prune_heads(model, {0: [0]})
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    before = snapshot(checkpoint)
    card = regenerate_model_card(checkpoint, output_dir=tmp_path / "card", repo_id="me/tiny")
    assert snapshot(checkpoint) == before
    assert sorted(p.name for p in (tmp_path / "card").iterdir()) == ["README.md", "heads.png"]
    assert "This model was pruned with hfprune: 1 of 12 attention heads removed" in card.text  # structure only
    assert heads_table(card.text) == {0: "1, 2, 3", 1: "0, 1, 2, 3", 2: "0, 1, 2, 3"}
    assert 'hfprune.from_pretrained("me/tiny")' in card.text and "No evaluation was run." in card.text


def test_pruning_trainer_writes_the_hfprune_card_for_push_to_hub(tmp_path: Path):
    from transformers import default_data_collator

    from hfprune.pruning_config import PruningArguments
    from hfprune.training.trainer import PruningTrainer

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 64, (16, 8), generator=generator)
    examples = [{"input_ids": row, "attention_mask": torch.ones(8, dtype=torch.long), "labels": int(row[0] % 3)} for row in ids]
    model = tiny_model("bert")
    model.config._name_or_path = str(tmp_path / "models" / "tiny-bert")  # as from_pretrained of a local folder
    args = PruningArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, per_device_eval_batch_size=8,
        target_head_sparsity=0.5, recovery_steps=1, save_strategy="no", report_to="none", use_cpu=True,
        disable_tqdm=True,
    )  # fmt: skip
    def accuracy(prediction) -> dict[str, float]:
        return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}

    trainer = PruningTrainer(model=model, args=args, train_dataset=examples, eval_dataset=examples[:8],
                             data_collator=default_data_collator, compute_metrics=accuracy)  # fmt: skip
    trainer.train()
    trainer.create_model_card(model_name="tiny-pruned", finetuned_from="hf-internal-testing/tiny-bert", dataset_args="sst2")

    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert "hfprune" in card.data.tags and card.data.base_model == "hf-internal-testing/tiny-bert"
    assert "### Surviving attention heads per layer" in card.text and (tmp_path / "out" / "heads.png").exists()
    record = model.config.hfprune
    assert sum(len(heads) for heads in record["kept_heads"]) == 6
    table = heads_table(card.text)
    assert table == {layer: ", ".join(map(str, heads)) for layer, heads in zip(record["kept_layers"], record["kept_heads"])}
    before, after = trainer.pruning_history[0]["eval_accuracy"], trainer.pruning_history[-1]["eval_accuracy"]
    assert f"| validation | accuracy | {before:.4f} | {after:.4f} | {after - before:+.4f} |" in card.text
    assert [(r.dataset_name, r.metric_value) for r in card.data.eval_results] == [("GLUE SST-2", round(after, 6))]
    assert "After pruning, the model was fine-tuned again to recover (1 step)." in card.text
    assert str(tmp_path) not in str(card)
    assert "generated automatically" not in card.text.lower()  # not transformers' TrainingSummary card

    trainer.create_model_card()  # no Hub id given: the local base is named by its folder only
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.base_model is None and "This model is **tiny-bert** (a local checkpoint)" in card.text
    assert str(tmp_path) not in str(card)
