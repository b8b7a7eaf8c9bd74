"""`hfprune.jobs.prune`: the Python one-call behind `hfprune prune`, on tiny models and tiny GLUE-layout data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from cli_fixtures import VOCAB, sentences, snapshot, write_sst2, write_tiny_bert
from huggingface_hub import ModelCard

import hfprune
from hfprune.errors import PipelineInputError
from hfprune.io.checkpoint import load_model_for_task
from hfprune.io.output import write_atomically
from hfprune.jobs.prune import prune_for_task
from hfprune.tasks.evaluate import evaluate_model
from hfprune.tasks.specs import TaskDataError
from hfprune.tasks.task_data import load_task_data

FAST = dict(batch_size=16, max_length=32, learning_rate=1e-3, bench=False, score_num_examples=32)


def write_mnli(glue_dir: Path) -> Path:
    """MNLI in GLUE's layout: a train file and the matched and mismatched dev files."""
    folder = glue_dir / "MNLI"
    folder.mkdir(parents=True)
    labels = ["entailment", "neutral", "contradiction"]
    for name, n, seed in (("train.tsv", 48, 0), ("dev_matched.tsv", 15, 1), ("dev_mismatched.tsv", 12, 2)):
        rows = ["index\tgenre\tsentence1\tsentence2\tgold_label"]
        for i, (text, _) in enumerate(sentences(n, seed)):
            rows.append(f"{i}\tfiction\t{text}\t{text.split()[0]} film .\t{labels[i % 3]}")
        (folder / name).write_text("\n".join(rows) + "\n")
    return glue_dir


def test_mnli_reports_both_dev_sets_before_and_after(tmp_path: Path):
    write_tiny_bert(tmp_path / "bert")
    write_mnli(tmp_path / "glue")
    result = prune_for_task(
        str(tmp_path / "bert"), "mnli", data_dir=tmp_path / "glue", output_dir=tmp_path / "out",
        head_sparsity=0.25, ffn_sparsity=0.5, schedule="iterative", steps=2, allow_weak_baseline=True, **FAST,
    )  # fmt: skip  # the labels are i % 3, which no model can learn: this test is about the two dev sets

    splits = {"validation_matched", "validation_mismatched"}
    assert set(result.metrics_before) == set(result.metrics_after) == splits
    assert result.finetuned_first and result.speed is None
    # iterative: step 0 (as given) and two pruning steps, each evaluated on the matched dev set
    assert [entry["step"] for entry in result.pruning_history] == [0, 1, 2]
    assert [entry["ffn_sparsity"] for entry in result.pruning_history] == [0.0, 0.25, 0.5]
    assert all("eval_accuracy" in entry for entry in result.pruning_history)

    out = tmp_path / "out"
    model = hfprune.from_pretrained(out)
    assert model.config.num_labels == 3 and model.config.id2label[2] == "contradiction"
    card = ModelCard.load(out / "README.md")
    assert {r.dataset_split: r.metric_value for r in card.data.eval_results} == {
        split: pytest.approx(result.metrics_after[split]["accuracy"], abs=1e-6) for split in splits
    }
    assert "Speed was not measured" in card.text and not (out / "speed.json").exists()
    stored = json.loads((out / "hfprune_results.json").read_text())
    assert stored["metrics_after"] == result.metrics_after and stored["settings"]["steps"] == 2

    # the saved model is the one that was measured
    data = load_task_data("mnli", data_dir=tmp_path / "glue", need_train=False)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert evaluate_model(model, tokenizer, data, batch_size=32, max_length=32) == result.metrics_after


def test_a_model_with_a_trained_head_is_not_fine_tuned_first(tmp_path: Path):
    write_tiny_bert(tmp_path / "clf", with_head=True)
    write_sst2(tmp_path / "glue")
    data = load_task_data("sst2", data_dir=tmp_path / "glue")
    model, tokenizer, has_head = load_model_for_task(str(tmp_path / "clf"), data)
    assert has_head
    untouched = evaluate_model(model, tokenizer, data, batch_size=32, max_length=32)

    result = prune_for_task(
        str(tmp_path / "clf"), "sst2", data_dir=tmp_path / "glue", output_dir=tmp_path / "out",
        head_sparsity=0.0, layer_sparsity=0.5, recovery_epochs=0.0, allow_weak_baseline=True, **FAST,
    )  # fmt: skip  # the "trained" head is random: this test is about not fine-tuning it
    assert not result.finetuned_first
    assert result.metrics_before == untouched  # evaluated as loaded: no training before pruning
    assert result.sparsity["layers"]["kept"] == 1
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")  # stock-loadable
    assert reloaded.config.num_hidden_layers == 1


def test_overwrite_replaces_the_old_checkpoint_only_once_the_new_one_is_complete(tmp_path: Path, monkeypatch):
    write_tiny_bert(tmp_path / "bert", with_head=True)  # no head to fine-tune first: a quick run
    write_sst2(tmp_path / "glue")
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("previous run")
    kwargs = dict(data_dir=tmp_path / "glue", output_dir=out, head_sparsity=0.5, recovery_epochs=0.0, allow_weak_baseline=True, **FAST)

    with pytest.raises(PipelineInputError, match="not empty"):
        prune_for_task(str(tmp_path / "bert"), "sst2", **kwargs)

    import hfprune.jobs.results  # where the job writes the card from

    def broken_card(*args, **kwargs):
        raise RuntimeError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(hfprune.jobs.results, "write_model_card", broken_card)
        with pytest.raises(RuntimeError, match="disk full"):
            prune_for_task(str(tmp_path / "bert"), "sst2", overwrite=True, **kwargs)
    assert snapshot(out) == {"old.txt": b"previous run"}  # the failed run changed nothing
    # no half-written staging folder; only the failed run's state, kept for resume=True
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.hfprune-work", "bert", "glue", "out"]
    with pytest.raises(PipelineInputError, match="interrupted run: pass resume=True"):
        prune_for_task(str(tmp_path / "bert"), "sst2", overwrite=True, **kwargs)

    dev = tmp_path / "glue" / "SST-2" / "dev.tsv"
    original = dev.read_text()
    dev.write_text(original.replace("\t0\n", "\t1\n", 1))  # same path, other contents: not the same run
    with pytest.raises(PipelineInputError, match=r"used other settings \(data\)"):
        prune_for_task(str(tmp_path / "bert"), "sst2", overwrite=True, resume=True, **kwargs)
    dev.write_text(original)

    prune_for_task(str(tmp_path / "bert"), "sst2", overwrite=True, resume=True, **kwargs)
    assert not (out / "old.txt").exists() and (out / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bert", "glue", "out"]


def test_write_atomically_never_leaves_a_partial_directory(tmp_path: Path):
    def partial(folder: Path) -> None:
        (folder / "a.txt").write_text("a")
        raise OSError("interrupted")

    with pytest.raises(OSError):
        write_atomically(tmp_path / "new", partial)
    assert list(tmp_path.iterdir()) == []
    assert write_atomically(tmp_path / "new", lambda folder: (folder / "b.txt").write_text("b")) == 1
    assert snapshot(tmp_path / "new") == {"b.txt": b"b"}


def test_custom_csv_files_and_their_errors(tmp_path: Path):
    (tmp_path / "train.csv").write_text("review,stars\ngood film,pos\nbad film,neg\nfun story,pos\n")
    (tmp_path / "validation.csv").write_text("review,stars\nawful plot,neg\n")
    data = load_task_data("custom", data_dir=tmp_path, text_columns=["review"], label_column="stars")
    assert data.spec.label_names == ("pos", "neg") and data.spec.text_columns == ("review",)
    assert data.eval["validation"]["label"] == [1]

    with pytest.raises(TaskDataError, match="missing column"):
        load_task_data("custom", data_dir=tmp_path)  # default text column 'text' is not there
    (tmp_path / "validation.csv").write_text("review,stars\nawful plot,meh\n")
    with pytest.raises(TaskDataError, match="unknown label 'meh'"):
        load_task_data("custom", data_dir=tmp_path, text_columns=["review"], label_column="stars")
    with pytest.raises(TaskDataError, match="unknown task 'sst-3'"):
        load_task_data("sst-3", data_dir=tmp_path)


def test_language_modelling_task_is_scored_by_perplexity(tmp_path: Path):
    write_tiny_bert(tmp_path / "tok")  # only for its tokenizer
    config = transformers.GPT2Config(vocab_size=len(VOCAB), n_embd=32, n_layer=2, n_head=4, n_positions=64)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    transformers.AutoTokenizer.from_pretrained(tmp_path / "tok").save_pretrained(tmp_path / "gpt2")
    text = " ".join(text for text, _ in sentences(60, 0))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.txt").write_text(text)
    (tmp_path / "data" / "validation.txt").write_text(text[: len(text) // 2])

    result = prune_for_task(
        str(tmp_path / "gpt2"), "lm", data_dir=tmp_path / "data", output_dir=tmp_path / "out",
        head_sparsity=0.25, method="magnitude", **FAST,
    )  # fmt: skip
    before, after = result.metrics_before["validation"]["perplexity"], result.metrics_after["validation"]["perplexity"]
    assert 1.0 < after and 1.0 < before < len(VOCAB) * 2  # a random 30-token model is near-uniform
    assert not result.finetuned_first
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.pipeline_tag == "text-generation"
    assert [r.metric_type for r in card.data.eval_results] == ["perplexity"]
    assert hfprune.from_pretrained(tmp_path / "out").config.hfprune["kept_heads"] != [[0, 1, 2, 3]] * 2


@pytest.mark.parametrize("batch, expected", [(4, (4, 1)), (8, (8, 1)), (16, (8, 2)), (32, (8, 4)), (20, (5, 4)), (12, (6, 2)), (17, (17, 1))])
def test_micro_batches_split_large_batches_exactly(batch: int, expected: tuple[int, int]):
    from hfprune.jobs.finetune import micro_batches

    micro, steps = micro_batches(batch)
    assert (micro, steps) == expected and micro * steps == batch


def test_the_validation_slice_is_carved_from_train_and_disjoint(tmp_path: Path):
    from datasets import Dataset

    from hfprune.jobs.finetune import validation_slice

    train = Dataset.from_dict({"idx": list(range(5000))})
    rest, validation = validation_slice(train, seed=0)
    assert len(validation) == 500 and len(rest) == 4500
    assert not set(rest["idx"]) & set(validation["idx"])
    assert len(validation_slice(Dataset.from_dict({"idx": list(range(100))}), seed=0)[1]) == 25  # at most a quarter


def test_the_dense_control_trains_as_long_as_the_pruned_model_and_the_card_compares_with_it(tmp_path: Path):
    write_tiny_bert(tmp_path / "clf", with_head=True)
    write_sst2(tmp_path / "glue")
    kwargs = dict(data_dir=tmp_path / "glue", head_sparsity=0.5, recovery_epochs=1.0, allow_weak_baseline=True, **FAST)
    result = prune_for_task(str(tmp_path / "clf"), "sst2", output_dir=tmp_path / "out", schedule="iterative", steps=2, **kwargs)

    control = result.dense_control
    pruned_steps = sum(entry["train_steps"] for entry in result.pruning_history)
    assert pruned_steps > 0 and control["steps"] == control["pruned_steps"] == pruned_steps
    assert set(control["metrics"]) == set(result.metrics_before) == {"validation"}
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| split | metric | majority class | dense (before pruning) | dense, same training | pruned | change vs same training |" in card
    assert f"({pruned_steps:,} steps; the pruned model trained {pruned_steps:,})" in card
    before, same, after = (result.metrics_before, control["metrics"], result.metrics_after)
    row = f"| {before['validation']['accuracy']:.4f} | {same['validation']['accuracy']:.4f} | {after['validation']['accuracy']:.4f} | "
    assert row in card
    assert json.loads((tmp_path / "out" / "hfprune_results.json").read_text())["dense_control"]["steps"] == pruned_steps

    plain = prune_for_task(str(tmp_path / "clf"), "sst2", output_dir=tmp_path / "plain", dense_control=False, **kwargs)
    assert plain.dense_control is None
    assert "| dense (before pruning) | pruned | change |" in (tmp_path / "plain" / "README.md").read_text()
