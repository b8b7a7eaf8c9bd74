"""The streamed job (`prune_for_task(..., stream=True)`, `hfprune prune --stream`): the same checkpoint as the
in-memory path with the same planner, from Python and the CLI; bad input refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_fixtures import one_error_line, write_tiny_llama_and_text
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from typer.testing import CliRunner

import hfprune
from hfprune.cli import app
from hfprune.errors import PipelineInputError
from hfprune.jobs import stream as stream_job
from hfprune.jobs.prune import drop_layers_for_task
from hfprune.planning.streamed_budget import plan_parameter_budget
from hfprune.tasks.lm import perplexity
from hfprune.tasks.task_data import load_task_data, tokenize_split

RUN = dict(max_length=16, seed=0)


@pytest.fixture(scope="module")
def lm(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny Llama (3 layers, 2 KV groups of 2 heads) with a tokenizer, and train / validation text."""
    return write_tiny_llama_and_text(tmp_path_factory.mktemp("stream"), num_layers=3, num_kv_heads=2)


def in_memory_job(llama: Path, text: Path, **targets) -> tuple[torch.nn.Module, dict]:
    """What the streamed job computes, done on the whole model in memory: the same calibration blocks,
    `activation_scores`, `plan_parameter_budget`, the engine's surgery."""
    model = hfprune.from_pretrained(llama).eval()
    tokenizer = __import__("transformers").AutoTokenizer.from_pretrained(llama)
    data = load_task_data("lm", data_dir=text, seed=RUN["seed"])
    train = tokenize_split(data, data.train, tokenizer, RUN["max_length"])
    calibration = train.shuffle(seed=RUN["seed"] + 1).select(range(min(512, len(train))))
    loader = DataLoader(calibration, batch_size=stream_job.STREAM_BATCH_SIZE)
    scores = hfprune.activation_scores(model, loader, ("ffn", "heads"))
    scores["layer_cosine"] = hfprune.layer_cosine_scores(model, loader)
    plan = plan_parameter_budget(model, scores, **targets)
    hfprune.prune_heads(model, plan["heads"])
    hfprune.prune_ffn(model, plan["ffn"])
    hfprune.drop_layers(model, plan["layers"])
    validation = DataLoader(tokenize_split(data, data.eval["validation"], tokenizer, RUN["max_length"]), batch_size=8)
    return model, {"perplexity": perplexity(model, validation)}


@pytest.mark.parametrize("targets", [dict(param_budget=0.8), dict(param_budget=0.6, head_sparsity=0.5, layer_sparsity=0.34)])
def test_a_streamed_job_writes_the_in_memory_checkpoint(lm, tmp_path, targets):
    llama, text = lm
    result = hfprune.prune_for_task(str(llama), "lm", data_dir=text, output_dir=tmp_path / "out", stream=True, **targets, **RUN)
    model, metrics = in_memory_job(llama, text, **targets)
    saved = load_file(tmp_path / "out" / "model.safetensors")
    expected = {key: value for key, value in model.state_dict().items() if key in saved}
    assert saved.keys() == expected.keys() and all(torch.equal(saved[key], expected[key]) for key in saved)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["hfprune"] == model.config.hfprune
    assert result.metrics_after["validation"]["perplexity"] == pytest.approx(metrics["perplexity"], rel=1e-5)
    kept = result.sparsity["parameters"]["kept"]
    assert kept == sum(p.numel() for p in model.parameters()) and kept <= targets["param_budget"] * result.sparsity["parameters"]["original"]
    results = json.loads((tmp_path / "out" / "hfprune_results.json").read_text())
    assert results["settings"]["stream"] and results["settings"]["recovery_epochs"] == 0.0
    assert {"evaluate before", "score", "prune", "evaluate after"} <= set(results["timings_s"])
    assert (tmp_path / "out" / "README.md").is_file() and (tmp_path / "out" / "tokenizer.json").is_file()


def test_a_streamed_job_reconstructs_on_training_blocks_only(lm, tmp_path):
    llama, text = lm
    plain = hfprune.prune_for_task(str(llama), "lm", data_dir=text, output_dir=tmp_path / "plain", stream=True, param_budget=0.6, **RUN)
    result = hfprune.prune_for_task(
        str(llama), "lm", data_dir=text, output_dir=tmp_path / "out", stream=True, param_budget=0.6, reconstruct=True, **RUN
    )
    (report,) = result.reconstruction
    assert report["target"] == "stream" and report["mean_error_after"] < report["mean_error_before"]
    assert report["tokens"] == result.settings["score_num_examples"] * RUN["max_length"]  # the calibration blocks
    assert result.sparsity == plain.sparsity and "reconstruct" in result.timings
    assert result.metrics_after["validation"]["perplexity"] != plain.metrics_after["validation"]["perplexity"]
    assert json.loads((tmp_path / "out" / "hfprune_results.json").read_text())["settings"]["reconstruct"] is True


def test_an_in_memory_job_compensates_with_biases_that_a_reload_builds(lm, tmp_path):
    """`reconstruct_method="bias"` on a Llama (no biases): the job turns on its config's bias flags, refits the output
    biases on the training blocks, and writes a checkpoint that loads as it was saved."""
    llama, text = lm
    result = hfprune.prune_for_task(
        str(llama), "lm", data_dir=text, output_dir=tmp_path / "out", param_budget=0.6, recovery_epochs=0,
        reconstruct=True, reconstruct_method="bias", **RUN,
    )  # fmt: skip
    (report,) = result.reconstruction
    assert report["method"] == "bias" and report["mean_error_after"] < report["mean_error_before"]
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["attention_bias"] is True and config["mlp_bias"] is True
    saved = load_file(tmp_path / "out" / "model.safetensors")
    assert any(key.endswith("down_proj.bias") and torch.count_nonzero(value) for key, value in saved.items())
    reloaded = hfprune.from_pretrained(tmp_path / "out")
    assert {key: value.shape for key, value in reloaded.state_dict().items() if key in saved} == {key: value.shape for key, value in saved.items()}
    assert json.loads((tmp_path / "out" / "hfprune_results.json").read_text())["settings"]["reconstruct_method"] == "bias"


def test_a_failed_streamed_job_leaves_nothing_behind(lm, tmp_path, monkeypatch):
    llama, text = lm

    def fail(*args, **kwargs):
        raise RuntimeError("killed while evaluating the pruned model")

    calls = iter([False, True])
    real = stream_job.streamed_perplexity
    monkeypatch.setattr(stream_job, "streamed_perplexity", lambda *a, **k: fail() if next(calls) else real(*a, **k))
    with pytest.raises(RuntimeError, match="killed"):
        hfprune.prune_for_task(str(llama), "lm", data_dir=text, output_dir=tmp_path / "out", stream=True, param_budget=0.8, **RUN)
    assert list(tmp_path.iterdir()) == []  # no output, no staging folder with the cut checkpoint


def test_the_cli_streams_and_refuses_what_streaming_cannot_do(lm, tmp_path):
    llama, text = lm
    runner = CliRunner()

    def cli(*args):
        return runner.invoke(app, ["prune", str(llama), "--data-dir", str(text), "--max-length", "16", *map(str, args)])

    result = cli("--task", "lm", "--params", "0.8", "--stream", "-o", tmp_path / "out", "--quiet")
    assert result.exit_code == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert json.loads((tmp_path / "out" / "hfprune_results.json").read_text())["settings"]["stream"] is True
    assert one_error_line(cli("--task", "lm", "--stream", "-o", tmp_path / "a")).endswith("give param_budget (--params)")
    assert "does not support target_speedup" in one_error_line(cli("--task", "lm", "--stream", "--params", "0.8", "--speedup", "2", "-o", tmp_path / "b"))
    assert "does not support fsdp" in one_error_line(cli("--task", "lm", "--stream", "--params", "0.8", "--fsdp", "-o", tmp_path / "f"))
    assert "not sst2" in one_error_line(cli("--task", "sst2", "--stream", "--params", "0.8", "-o", tmp_path / "c"))
    bias = cli("--task", "lm", "--stream", "--params", "0.8", "--reconstruct", "--reconstruct-method", "bias", "-o", tmp_path / "g")
    assert "does not support reconstruct_method='bias'" in one_error_line(bias)  # it would add tensors to the shards
    assert not any((tmp_path / name).exists() for name in "abcfg")


def test_a_budget_the_ffn_cannot_reach_is_refused_before_writing(lm, tmp_path):
    llama, text = lm
    with pytest.raises(PipelineInputError, match="out of reach by cutting the FFN"):
        hfprune.prune_for_task(str(llama), "lm", data_dir=text, output_dir=tmp_path / "out", stream=True, param_budget=0.2, **RUN)
    assert not (tmp_path / "out").exists()


def test_a_model_larger_than_free_memory_is_pointed_to_stream(lm, tmp_path, monkeypatch):
    """Without stream, weights that exceed the free memory are refused in one line before anything loads."""
    llama, text = lm
    source = hfprune.io.checkpoint.resolve_model(str(llama), causal_lm=True)
    needed = stream_job.weight_bytes(source)
    assert needed == 4 * sum(p.numel() for p in hfprune.from_pretrained(llama).parameters())  # fp32 weights
    stream_job.check_fits_in_memory(source, available=needed)  # fits exactly: no complaint
    monkeypatch.setattr(stream_job.psutil, "virtual_memory", lambda: type("Memory", (), {"available": needed - 1})())
    result = CliRunner().invoke(app, ["prune", str(llama), "--task", "lm", "--data-dir", str(text), "--params", "0.8", "-o", str(tmp_path / "out")])
    assert one_error_line(result).endswith("prune it one layer at a time with --stream (--task lm with --params)")
    assert not (tmp_path / "out").exists()


def test_jobs_that_do_not_train_refuse_several_processes(lm, tmp_path, monkeypatch):
    """--stream and drop-layers train nothing, so under torchrun every rank would only write the same folder."""
    llama, text = lm
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(PipelineInputError, match="stream runs as one process"):
        hfprune.prune_for_task(str(llama), "lm", data_dir=text, output_dir=tmp_path / "a", stream=True, param_budget=0.8, **RUN)
    with pytest.raises(PipelineInputError, match="drop-layers runs as one process"):
        drop_layers_for_task(str(llama), tmp_path / "b", k=1)
    assert list(tmp_path.iterdir()) == []
