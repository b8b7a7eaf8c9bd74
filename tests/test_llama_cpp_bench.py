"""`hfprune bench --engine llama.cpp`: a pruned checkpoint and its dense original timed in llama.cpp, side by side."""

from __future__ import annotations

import importlib.util
import json

import pytest
from cli_fixtures import one_error_line
from hfprune.cli import app
from test_gguf import VOCAB, tiny_llama, tiny_tokenizer, uneven
from typer.testing import CliRunner

import hfprune
from hfprune.errors import PipelineInputError
from hfprune.export.card import regenerate_model_card
from hfprune.jobs.llama_cpp_bench import prefill_flops
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


def test_the_prefill_ideal_counts_the_output_layer_for_the_last_token_only():
    model = tiny_llama()
    one, many = hfprune.count_flops(model, 1, 1), hfprune.count_flops(model, 1, 16)
    assert prefill_flops(model, 1) == one
    assert prefill_flops(model, 16) == many - 2 * VOCAB * 64 * 15  # llama.cpp computes one row of logits, not 16


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


# ---- the prune job with gguf_dtype -----------------------------------------------------------------------
JOB = dict(head_sparsity=0.25, method="magnitude", batch_size=8, max_length=32, learning_rate=1e-3, score_num_examples=8,
           recovery_epochs=0.0, dense_control=False, allow_weak_baseline=True)  # fmt: skip


@pytest.fixture(scope="module")
def lm_job(tmp_path_factory):
    """A tiny Llama with its tokenizer, and text files for task 'lm'."""
    folder = tmp_path_factory.mktemp("lm")
    tiny_llama().save_pretrained(folder / "llama")
    tiny_tokenizer().save_pretrained(folder / "llama")
    text = " ".join(f"word{index % 17} of line {index}." for index in range(400))
    (folder / "data").mkdir()
    (folder / "data" / "train.txt").write_text(text)
    (folder / "data" / "validation.txt").write_text(text[:2000])
    return folder


def test_an_lm_job_writes_a_checked_gguf_and_times_it_in_llama_cpp(lm_job, tmp_path):
    result = hfprune.prune_for_task(
        str(lm_job / "llama"), "lm", data_dir=lm_job / "data", output_dir=tmp_path / "out", gguf_dtype="q8_0",
        bench=True, bench_batch_sizes=(1,), bench_repeats=2, bench_threads=1, ffn_sparsity=0.3, round_to_multiple=16, **JOB,
    )  # fmt: skip
    out = tmp_path / "out"
    widths = [len(kept) for kept in hfprune.get_record(hfprune.from_pretrained(out))["kept_ffn"] if kept is not None]
    assert widths and all(width % 16 == 0 for width in widths)  # q8_0 rows of whole 32-value blocks need this
    assert result.settings["round_to_multiple"] == 16
    assert (out / "model-q8_0.gguf").is_file() and result.gguf["file"] == "model-q8_0.gguf"
    assert result.gguf["f32_max_relative_difference"] <= 1e-4  # the structure is exact before quantization
    assert [row["model"] for row in result.llama_cpp_speed["rows"]] == ["dense", "pruned"]
    assert result.llama_cpp_speed["settings"]["dtype"] == "q8_0"
    stored = json.loads((out / "hfprune_results.json").read_text())
    assert stored["card"]["gguf"]["dtype"] == "q8_0" and stored["card"]["llama_cpp_speed"]["rows"][1]["model"] == "pruned"
    card = (out / "README.md").read_text()
    assert "llama-cli -m model-q8_0.gguf" in card and 'filename="model-q8_0.gguf"' in card
    assert "In llama.cpp" in card and f"{result.llama_cpp_speed['rows'][1]['prefill_speedup']:.2f}x" in card
    regenerate_model_card(out)  # a later `hfprune card` keeps both
    assert (out / "README.md").read_text() == card


def test_a_gguf_that_fails_its_check_leaves_the_checkpoint_complete(lm_job, tmp_path, monkeypatch):
    def mismatch(*args, **kwargs):
        raise hfprune.GgufMismatchError("llama.cpp's logits differ from PyTorch's by 1 of their scale")

    monkeypatch.setattr("hfprune.jobs.prune_job.export_gguf", mismatch)
    with pytest.raises(hfprune.GgufMismatchError, match="checkpoint in .* is complete") as error:
        hfprune.prune_for_task(
            str(lm_job / "llama"), "lm", data_dir=lm_job / "data", output_dir=tmp_path / "out", gguf_dtype="f32", bench=False, **JOB
        )  # fmt: skip
    assert "\n" not in str(error.value)
    assert hfprune.from_pretrained(tmp_path / "out") is not None and not list((tmp_path / "out").glob("*.gguf"))


def test_gguf_job_refusals_come_before_any_weights_load(lm_job, tmp_path):
    run = dict(data_dir=lm_job / "data", output_dir=tmp_path / "out", bench=False, **JOB)
    with pytest.raises(PipelineInputError, match="gguf_dtype must be one of"):
        hfprune.prune_for_task(str(lm_job / "llama"), "lm", gguf_dtype="q3", **run)
    glue = tmp_path / "glue" / "SST-2"
    glue.mkdir(parents=True)
    for name in ("train.tsv", "dev.tsv"):
        (glue / name).write_text("sentence\tlabel\nword0 .\t0\nword1 .\t1\n")
    with pytest.raises(PipelineInputError, match="task='lm'"):
        hfprune.prune_for_task(str(lm_job / "llama"), "sst2", gguf_dtype="f32", **{**run, "data_dir": glue.parent})
    assert not (tmp_path / "out").exists()
    result = CliRunner().invoke(app, ["prune", str(lm_job / "llama"), "--task", "lm", "--data-dir", str(lm_job / "data"),
                                      "-o", str(tmp_path / "out"), "--gguf-dtype", "q3"])  # fmt: skip
    assert result.exit_code == 2 and "--gguf-dtype must be one of" in one_error_line(result)
