"""`hfprune bench --engine llama.cpp`: a pruned checkpoint and its dense original timed in llama.cpp, side by side."""

from __future__ import annotations

import importlib.util
import json

import pytest
from cli_fixtures import one_error_line
from hfprune.cli import app
from test_gguf import tiny_llama, tiny_tokenizer, uneven
from typer.testing import CliRunner

import hfprune
from hfprune.errors import PipelineInputError
from hfprune.measure.llama_cpp_speed import measure_llama_cpp_speed

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A pruned tiny Llama saved by hfprune, with a byte-level BPE tokenizer and a card."""
    folder = tmp_path_factory.mktemp("ckpt")
    model = uneven(tiny_llama())
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    hfprune.write_model_card(model, folder, base_model="tiny-llama", task="lm")
    return folder


def test_measure_times_every_file_and_reports_speedups(tmp_path):
    files = {}
    for name, model in (("dense", tiny_llama()), ("pruned", uneven(tiny_llama()))):
        files[name] = tmp_path / f"{name}.gguf"
        hfprune.export_gguf(model, files[name], tokenizer=tiny_tokenizer(), tokenizer_pre="gpt-2", check=False)
    report = measure_llama_cpp_speed(files, prompt_len=16, new_tokens=4, repeats=3, warmup=0, ideal_prefill_speedup={"pruned": 1.5})
    assert [row["model"] for row in report.rows] == ["dense", "pruned"]
    dense, pruned = report.rows
    assert dense["prefill_speedup"] == 1.0 and dense["decode_speedup"] == 1.0
    assert pruned["prefill_speedup"] == pytest.approx(dense["prefill_ms"] / pruned["prefill_ms"])
    for row in report.rows:
        assert row["prefill_tokens_per_s"] == pytest.approx(16 / (row["prefill_ms"] / 1e3))
        assert row["decode_tokens_per_s"] == pytest.approx(3 / (row["decode_ms"] / 1e3))
        assert row["prefill_p25_ms"] <= row["prefill_ms"] <= row["prefill_p75_ms"]
        assert set(row["noise"]) == {"noisy", "reasons"}
    assert pruned["ideal_prefill_speedup"] == 1.5 and report.settings["threads"] == 1
    assert "| pruned |" in report.table() and json.loads(json.dumps(report.to_dict()))["rows"][1]["model"] == "pruned"


def test_benchmark_checkpoint_in_llama_cpp_updates_the_card(checkpoint, tmp_path):
    report = hfprune.benchmark_llama_cpp(
        checkpoint, dtype="f16", prompt_len=16, new_tokens=4, repeats=2, warmup=0, json_path=tmp_path / "bench.json",
        update_card=True,
    )  # fmt: skip
    assert report.settings["dtype"] == "f16" and [row["model"] for row in report.rows] == ["dense", "pruned"]
    ideal = report.rows[1]["ideal_prefill_speedup"]
    assert ideal > 1.0  # the pruned model does less work per token than its dense original
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["rows"][1]["prefill_ms"] == report.rows[1]["prefill_ms"]
    results = json.loads((checkpoint / "hfprune_results.json").read_text())
    assert results["card"]["llama_cpp_speed"]["settings"]["dtype"] == "f16"
    card = (checkpoint / "README.md").read_text()
    assert "llama.cpp" in card and f"{report.rows[1]['prefill_speedup']:.2f}x" in card


def test_refusals_are_one_line_before_any_timing(checkpoint, tmp_path):
    with pytest.raises(PipelineInputError, match="dtype"):
        hfprune.benchmark_llama_cpp(checkpoint, dtype="q3")
    with pytest.raises(PipelineInputError, match="not a model directory"):
        hfprune.benchmark_llama_cpp(tmp_path)
    with pytest.raises(PipelineInputError, match="longer than"):
        hfprune.benchmark_llama_cpp(checkpoint, prompt_len=200)
    runner = CliRunner()
    result = runner.invoke(app, ["bench", str(checkpoint), "--engine", "vllm"])
    assert result.exit_code == 2 and "--engine" in one_error_line(result)
    result = runner.invoke(app, ["bench", str(checkpoint), "--engine", "llama.cpp", "--plot", str(tmp_path / "p.png")])
    assert result.exit_code == 2 and "--plot" in one_error_line(result)


def test_bench_command_with_llama_cpp(checkpoint):
    args = ["bench", str(checkpoint), "--engine", "llama.cpp", "--dtype", "f32", "--prompt-len", "16", "--new-tokens", "4",
            "--repeats", "2", "--warmup", "0"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "llama.cpp f32" in result.output and "| pruned |" in result.output
