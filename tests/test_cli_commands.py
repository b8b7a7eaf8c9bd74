"""Every `hfprune` subcommand end to end on a tiny BERT and a tiny SST-2 in GLUE's layout.

Most runs go through typer's CliRunner (same code path as the console script, without paying the import
time again); a bad-input case and `push` run as real processes (`python -m hfprune.cli`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cli_fixtures import one_error_line, snapshot, write_sst2, write_tiny_bert
from hfprune.cli import app
from typer.testing import CliRunner

TOKEN = "hf_CliLoopbackToken0123456789abcdefXYZ"  # shaped like a real user access token
runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, [str(arg) for arg in args])


def run_process(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hfprune.cli", *map(str, args)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )  # fmt: skip


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A bare tiny BERT (no task head), SST-2 in GLUE layout, and one checkpoint pruned by `hfprune prune`."""
    root = tmp_path_factory.mktemp("cli")
    write_tiny_bert(root / "bert")
    write_sst2(root / "glue")
    result = cli(
        "prune", root / "bert", "--task", "sst2", "--data-dir", root / "glue", "-o", root / "pruned",
        "--heads", "0.5", "--ffn", "0.25", "--lr", "1e-3", "--batch-size", "16", "--max-length", "32",
        "--bench-batch-sizes", "1,2", "--repo-id", "me/tiny-sst2",
    )  # fmt: skip
    assert result.exit_code == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (root / "prune_stdout.txt").write_text(result.stdout)
    return root


def test_help_lists_every_command():
    result = cli("--help")
    assert result.exit_code == 0
    for command in ("demo", "prune", "score", "drop-layers", "eval", "bench", "card", "push"):
        assert re.search(rf"│ {command}\s", result.stdout), command


def test_prune_fine_tunes_prunes_and_writes_checkpoint_card_and_results(work: Path):
    out = work / "pruned"
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "heads.png", "importance.png",
            "speed.json", "speed.png", "hfprune_results.json"} <= files  # fmt: skip
    assert not [p for p in work.iterdir() if p.name.startswith(".pruned")]  # no temporary folder left behind

    record = json.loads((out / "config.json").read_text())["hfprune"]
    assert sum(len(heads) for heads in record["kept_heads"]) == 4  # 50% of 2 x 4 heads
    assert sum(len(kept) for kept in record["kept_ffn"]) == 72  # 25% of 2 x 48 neurons

    results = json.loads((out / "hfprune_results.json").read_text())
    assert results["finetuned_first"] is True  # a bare BertModel has no SST-2 head
    assert set(results["metrics_before"]) == set(results["metrics_after"]) == {"validation"}
    assert results["sparsity"]["heads"]["sparsity"] == 0.5
    assert {row["batch_size"] for row in results["speed"]["rows"]} == {1, 2}

    card = (out / "README.md").read_text()
    assert 'hfprune.from_pretrained("me/tiny-sst2")' in card
    assert "hfprune prune" in card and "--heads 0.5" in card  # the command that produced it
    stdout = (work / "prune_stdout.txt").read_text()
    assert "dense vs pruned" in stdout and "saved to" in stdout


def test_eval_reproduces_the_recorded_metrics(work: Path, tmp_path: Path):
    result = cli("eval", work / "pruned", "--task", "sst2", "--data-dir", work / "glue", "--json", tmp_path / "m.json", "-q")
    assert result.exit_code == 0, result.stderr
    measured = json.loads((tmp_path / "m.json").read_text())["metrics"]
    recorded = json.loads((work / "pruned" / "hfprune_results.json").read_text())["metrics_after"]
    assert measured == recorded  # the saved checkpoint reloads to exactly the model that was measured
    assert "accuracy" in result.stdout


def test_eval_warns_about_an_untrained_head(work: Path):
    result = cli("eval", work / "bert", "--task", "sst2", "--data-dir", work / "glue", "-q")
    assert result.exit_code == 0
    assert "no trained sst2 head" in result.stderr


def test_score_writes_scores_and_heatmap_with_nan_for_pruned_heads(work: Path, tmp_path: Path):
    result = cli("score", work / "pruned", "--task", "sst2", "--data-dir", work / "glue", "-o", tmp_path / "s", "-n", "16")
    assert result.exit_code == 0, result.stderr
    payload = json.loads((tmp_path / "s" / "head_scores.json").read_text())
    assert payload["shape"] == [2, 4] and payload["num_examples"] == 16
    kept = json.loads((work / "pruned" / "config.json").read_text())["hfprune"]["kept_heads"]
    for layer, row in enumerate(payload["scores"]):
        assert [head for head, value in enumerate(row) if value is not None] == kept[layer]
    assert (tmp_path / "s" / "importance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_drop_layers_writes_a_stock_loadable_checkpoint(work: Path, tmp_path: Path):
    out = tmp_path / "dropped"
    result = cli("drop-layers", work / "bert", "-k", "1", "--strategy", "top", "-o", out,
                 "--task", "sst2", "--data-dir", work / "glue")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "dropped layers [1]" in result.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["hfprune"]["kept_layers"] == [0]
    from transformers import AutoModelForSequenceClassification

    AutoModelForSequenceClassification.from_pretrained(out)  # plain transformers, as the card promises
    card = (out / "README.md").read_text()
    assert "Plain transformers loads it too" in card and "| 1 | 0 | layer dropped |" in card
    assert "validation | accuracy" in card  # evaluated before and after


def test_bench_prints_a_table_and_updates_the_card(work: Path, tmp_path: Path):
    out = tmp_path / "pruned"
    import shutil

    shutil.copytree(work / "pruned", out)
    result = cli("bench", out, "--batch-sizes", "1,3", "--seq-lengths", "16", "--repeats", "2", "--warmup", "0",
                 "--json", tmp_path / "speed.json", "--update-card", "-q")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    rows = json.loads((tmp_path / "speed.json").read_text())["rows"]
    assert [(row["model"], row["batch_size"], row["seq_len"]) for row in rows] == [
        ("dense", 1, 16), ("pruned", 1, 16), ("dense", 3, 16), ("pruned", 3, 16)
    ]
    assert rows[1]["params"] < rows[0]["params"] and rows[1]["flops"] < rows[0]["flops"]
    sparsity = json.loads((work / "pruned" / "hfprune_results.json").read_text())["sparsity"]["parameters"]
    assert (rows[0]["params"], rows[1]["params"]) == (sparsity["original"], sparsity["kept"])  # dense twin = original shapes
    assert "| pruned | 3 | 16 |" in result.stdout
    card = (out / "README.md").read_text()
    assert "| pruned | 3 | 16 |" in card and "| pruned | 2 | 32 |" not in card  # the new timings replaced the old
    assert 'hfprune.from_pretrained("me/tiny-sst2")' in card  # the rest of the card is kept


def test_card_regenerates_readme_and_heatmaps(work: Path, tmp_path: Path):
    import shutil

    from huggingface_hub import ModelCard

    out = tmp_path / "pruned"
    shutil.copytree(work / "pruned", out)
    before = ModelCard.load(out / "README.md")
    for name in ("README.md", "heads.png", "importance.png"):
        (out / name).unlink()
    result = cli("card", out, "--repo-id", "someone/else")
    assert result.exit_code == 0, result.stderr
    after = ModelCard.load(out / "README.md")
    assert after.data.eval_results == before.data.eval_results
    assert 'hfprune.from_pretrained("someone/else")' in after.text
    assert (out / "heads.png").exists() and (out / "importance.png").exists()


# ---- bad input: one line, exit code 2, nothing written ----------------------------------------------------
def _bad_inputs(work: Path, tmp: Path) -> list[tuple[list, str]]:
    bad_glue = tmp / "bad_glue" / "SST-2"
    bad_glue.mkdir(parents=True)
    (bad_glue / "train.tsv").write_text("sentence\tlabel\ngood film .\t1\n")
    (bad_glue / "dev.tsv").write_text("sentence\tlabel\ngood film .\t7\n")
    (tmp / "custom").mkdir()
    (tmp / "custom" / "train.csv").write_text("review,label\ngood film,pos\n")
    (tmp / "custom" / "validation.csv").write_text("review,label\nbad film,neg\n")
    bert, glue, out = work / "bert", work / "glue", tmp / "out"
    prune = ["prune", bert, "--task", "sst2", "--data-dir", glue, "-o", out]
    return [
        (["prune", tmp / "no" / "such" / "model", "--task", "sst2", "--data-dir", glue, "-o", out], "does not exist"),
        (["prune", bert, "--task", "sst3", "--data-dir", glue, "-o", out], "unknown task 'sst3'"),
        (["prune", bert, "--task", "mnli", "--data-dir", glue, "-o", out], "GLUE file not found"),
        (["prune", bert, "--task", "sst2", "--data-dir", tmp / "nowhere", "-o", out], "does not exist"),
        (["prune", bert, "--task", "sst2", "--data-dir", tmp / "bad_glue", "-o", out], "unknown label '7'"),
        (["prune", bert, "--task", "custom", "--data-dir", tmp / "custom", "-o", out], "missing column(s) ['text']"),
        (["prune", bert, "--task", "custom", "--data-dir", tmp / "custom", "--text-column", "review", "-o", out], "unknown label 'neg'"),
        ([*prune, "--heads", "1.0"], "--heads must be a fraction in [0, 1)"),
        ([*prune, "--ffn", "-0.1"], "--ffn must be a fraction in [0, 1)"),
        ([*prune, "--heads", "0", "--ffn", "0"], "nothing to prune"),
        ([*prune, "--method", "psychic"], "pruning_method must be one of"),
        (["eval", tmp / "missing", "--task", "sst2", "--data-dir", glue], "does not exist"),
        (["score", bert, "--task", "sst2", "--data-dir", glue, "-o", out, "--method", "psychic"], "unknown --method"),
        (["drop-layers", bert, "-k", "2", "-o", out], "k must be an integer in [0, 1]"),
        (["drop-layers", bert, "-k", "1", "--strategy", "contribution", "-o", out], "scores layers on data: give a task"),
        (["bench", tmp / "custom"], "not a model directory"),
        (["card", tmp / "custom"], "not a model directory"),
        (["push", tmp / "missing", "me/x"], "is not a directory"),
        (["push", tmp / "custom", "me/x"], "has no model weights"),
    ]


def test_bad_input_is_one_line_exit_2_and_writes_nothing(work: Path, tmp_path: Path):
    cases = _bad_inputs(work, tmp_path)
    inputs_before, model_before = snapshot(tmp_path), snapshot(work / "bert")
    for args, message in cases:
        result = cli(*args)
        assert message in one_error_line(result), (args, result.stderr)
        assert snapshot(tmp_path) == inputs_before, args  # no output dir, no temp dir, inputs untouched
    assert snapshot(work / "bert") == model_before


def test_existing_output_dir_is_refused_and_kept(work: Path, tmp_path: Path):
    (tmp_path / "keep.txt").write_text("mine")
    for args in (
        ["prune", work / "bert", "--task", "sst2", "--data-dir", work / "glue", "-o", tmp_path],
        ["drop-layers", work / "bert", "-k", "1", "-o", tmp_path],
        ["score", work / "bert", "--task", "sst2", "--data-dir", work / "glue", "-o", tmp_path],
    ):
        assert "is not empty" in one_error_line(cli(*args))
    assert snapshot(tmp_path) == {"keep.txt": b"mine"}


def test_bad_input_in_a_real_process(tmp_path: Path):
    result = run_process("prune", "/no/such/model", "--task", "sst2", "-o", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip() == "Error: model path /no/such/model does not exist"
    assert not (tmp_path / "out").exists()


# ---- push -----------------------------------------------------------------------------------------------
@pytest.fixture
def in_process_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """For CliRunner pushes: what a fresh process with HF_ENDPOINT/HF_TOKEN set would see, and no retry back-off."""
    import time
    import types

    from hub_server import FakeHub
    from huggingface_hub import constants
    from huggingface_hub.utils import _http as hf_http

    fake_time = types.SimpleNamespace(**vars(time))
    fake_time.sleep = lambda seconds: None
    monkeypatch.setattr(hf_http, "time", fake_time)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "stored_tokens"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with FakeHub(token=TOKEN) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)  # set at import time in a real process
        yield hub


def test_push_in_a_real_process_uploads_everything_and_never_shows_the_token(work: Path, tmp_path: Path):
    from hub_server import FakeHub

    folder = work / "pruned"
    local = snapshot(folder)
    home = tmp_path / "home"
    with FakeHub(token=TOKEN) as hub:
        env = {
            "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HOME": str(home), "HF_HUB_OFFLINE": "0",
            "NO_PROXY": "127.0.0.1,localhost",
        }  # fmt: skip
        result = run_process("push", folder, "me/tiny-sst2", "--private", "-m", "Prune half the heads", env=env)

    assert result.returncode == 0, result.stderr
    repo = hub.repos["me/tiny-sst2"]
    assert repo.files() == local  # every file, byte for byte, README.md and the heatmaps included
    assert repo.private is True and [commit.summary for commit in repo.commits] == ["Prune half the heads"]
    assert f"{hub.url}/me/tiny-sst2/commit/" in result.stdout
    writes = [r for r in hub.requests if any(part in r.path for part in ("/repos/create", "/preupload/", "/commit/"))]
    assert writes and all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in writes)  # HF_TOKEN was used
    assert TOKEN not in result.stdout + result.stderr
    for path in [*folder.rglob("*"), *home.rglob("*")]:
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert snapshot(folder) == local


def test_push_is_idempotent(work: Path, in_process_hub):
    folder = work / "pruned"
    first, second = cli("push", folder, "me/tiny"), cli("push", folder, "me/tiny")
    assert first.exit_code == second.exit_code == 0, first.stderr + second.stderr
    assert len(in_process_hub.repos["me/tiny"].commits) == 1  # nothing changed: no second commit
    assert in_process_hub.repos["me/tiny"].files() == snapshot(folder)


def test_push_failures_are_one_line_exit_1_and_retryable(work: Path, in_process_hub, monkeypatch: pytest.MonkeyPatch):
    hub, folder = in_process_hub, work / "pruned"
    local = snapshot(folder)

    hub.fail_next(100, status=500, path_contains="/commit/")
    line = one_error_line(cli("push", folder, "me/x"), code=1)
    assert f"{hub.url} failed (HTTP 500" in line and "Nothing local was changed" in line
    hub.clear_faults()

    monkeypatch.setenv("HF_TOKEN", "hf_SomeOtherTokenTheHubRejects01234567")
    line = one_error_line(cli("push", folder, "me/x"), code=1)
    assert "HTTP 401" in line and "hf auth login" in line and "SomeOtherToken" not in line
    monkeypatch.setenv("HF_TOKEN", TOKEN)

    url = hub.url
    hub.stop()  # connection refused
    line = one_error_line(cli("push", folder, "me/x"), code=1)
    assert f"could not reach {url}" in line and "re-run the push to retry" in line and TOKEN not in line
    hub.start()  # back (on a new port)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", hub.url)

    result = cli("push", folder, "me/x")  # the same command, retried, now works
    assert result.exit_code == 0, result.stderr
    assert hub.repos["me/x"].files() == local
    assert snapshot(folder) == local


# ---- issue 11: noisy timings and cards that travel with the model ----------------------------------------
def test_bench_warns_once_on_stderr_and_records_a_noisy_timing(work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import shutil

    from huggingface_hub import ModelCard

    import hfprune.measure.noise as noise_module

    out = tmp_path / "pruned"
    shutil.copytree(work / "pruned", out)
    monkeypatch.setattr(noise_module.os, "getloadavg", lambda: (64.0, 64.0, 64.0))  # far above any CPU count here
    result = cli("bench", out, "--batch-sizes", "1", "--seq-lengths", "16", "--repeats", "2", "--warmup", "0",
                 "--json", tmp_path / "speed.json", "--update-card", "-q")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("Warning: noisy timing (")
    assert "load average 64.0" in warnings[0] and "--threads 1" in warnings[0] and "quiet machine" in warnings[0]
    noise = json.loads((tmp_path / "speed.json").read_text())["noise"]
    assert noise["noisy"] is True and noise["reasons"][0].startswith("1-minute load average 64.0 before")
    assert "Warning: noisy timing" in result.stdout  # under the table too
    card = ModelCard.load(out / "README.md")
    assert "> **Warning: noisy timing.**" in card.text and "> - 1-minute load average 64.0" in card.text
    stored = json.loads((out / "hfprune_results.json").read_text())["card"]["speed"]
    assert stored["noise"] == noise  # `hfprune card` re-renders the warning later


def test_bench_on_a_quiet_machine_prints_no_warning(work: Path, monkeypatch: pytest.MonkeyPatch):
    import hfprune.measure.noise as noise_module
    import hfprune.measure.speed as speed_module

    monkeypatch.setattr(noise_module.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(speed_module, "device_timer", lambda device: lambda fn: 5.0)  # steady: no real timing
    result = cli("bench", work / "pruned", "--batch-sizes", "1", "--seq-lengths", "16", "--repeats", "4", "-q")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.strip() == "" and "Warning" not in result.stdout
    assert [line.rsplit("|", 2)[1].strip() for line in result.stdout.splitlines() if line.startswith("| dense") or line.startswith("| pruned")] == ["ok", "ok"]


def test_card_base_model_id_sets_the_metadata(work: Path, tmp_path: Path):
    import shutil

    from huggingface_hub import ModelCard

    out = tmp_path / "pruned"
    shutil.copytree(work / "pruned", out)
    assert ModelCard.load(out / "README.md").data.base_model is None  # pruned from a local folder
    result = cli("card", out, "--base-model-id", "sentence-transformers/all-MiniLM-L6-v2")
    assert result.exit_code == 0, result.stderr
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert str(work) not in str(card) and str(tmp_path) not in str(card)  # no absolute path, command included


def test_push_adds_the_card_when_the_folder_has_none_and_no_card_skips_it(work: Path, tmp_path: Path, in_process_hub):
    import shutil

    from huggingface_hub import ModelCard

    hub, folder = in_process_hub, tmp_path / "pruned"
    shutil.copytree(work / "pruned", folder)
    (folder / "README.md").unlink()
    local = snapshot(folder)

    result = cli("push", folder, "me/tiny-card")
    assert result.exit_code == 0, result.stderr
    assert "with a generated model card (README.md)" in result.stdout
    files = hub.repos["me/tiny-card"].files()
    card = ModelCard(files["README.md"].decode())
    assert "hfprune" in card.data.tags and 'hfprune.from_pretrained("me/tiny-card")' in card.text
    recorded = json.loads((folder / "hfprune_results.json").read_text())["metrics_after"]["validation"]["accuracy"]
    assert [r.metric_value for r in card.data.eval_results] == [round(recorded, 6)]  # from hfprune_results.json
    assert {path: files[path] for path in local} == local
    assert snapshot(folder) == local and not (folder / "README.md").exists()

    result = cli("push", folder, "me/tiny-no-card", "--no-card")
    assert result.exit_code == 0, result.stderr
    assert hub.repos["me/tiny-no-card"].files() == local and "generated model card" not in result.stdout


def test_decoder_end_to_end_from_the_cli_with_a_parameter_target(tmp_path: Path):
    """`hfprune prune TINY_LLAMA --task lm --params 0.7`: scored on calibration text, pruned to 70% of the
    parameters, distilled from the dense model (logits and layers), perplexity on held-out text only, card written."""
    from cli_fixtures import write_tiny_llama_and_text

    # MHA: 2-head KV groups would make 70% too coarse a target
    llama, text = write_tiny_llama_and_text(tmp_path, num_layers=2, num_kv_heads=4)

    result = cli(
        "prune", llama, "--task", "lm", "--data-dir", text, "-o", tmp_path / "out",
        "--params", "0.7", "--distill", "0.5", "--distill-layers", "1.0", "--lr", "1e-3", "--batch-size", "8", "--max-length", "16",
        "--no-bench", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "hfprune_results.json").read_text())
    parameters = results["sparsity"]["parameters"]
    assert parameters["kept"] / parameters["original"] == pytest.approx(0.7, abs=0.05)
    assert results["settings"]["param_budget"] == 0.7 and results["settings"]["distillation_alpha"] == 0.5
    assert results["settings"]["distillation_layer_weight"] == 1.0
    before, after = results["metrics_before"]["validation"], results["metrics_after"]["validation"]
    assert {"perplexity"} <= set(before) and after["perplexity"] > 1.0
    assert results["dense_control"]["steps"] == results["dense_control"]["pruned_steps"] > 0
    reloaded = __import__("hfprune").from_pretrained(tmp_path / "out")
    assert sum(p.numel() for p in reloaded.parameters()) == parameters["kept"]
    assert "text-generation" in (tmp_path / "out" / "README.md").read_text()


def test_params_out_of_range_is_one_line_exit_2(tmp_path: Path):
    result = cli("prune", tmp_path / "missing", "--task", "lm", "--params", "1.5")
    assert result.exit_code == 2 and one_error_line(result) == "Error: --params must be a fraction in (0, 1], got 1.5"


def test_prune_width_from_the_cli_chooses_a_width_and_reports_every_candidate(tmp_path: Path):
    from cli_fixtures import write_tiny_llama_and_text

    llama, text = write_tiny_llama_and_text(tmp_path, num_layers=2, num_kv_heads=4)
    result = cli(
        "prune", llama, "--task", "lm", "--data-dir", text, "-o", tmp_path / "out", "--params", "0.6", "--prune-width",
        "--lr", "1e-3", "--batch-size", "8", "--max-length", "16", "--no-bench", "--no-dense-control", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "hfprune_results.json").read_text())
    report, parameters = results["param_target"], results["sparsity"]["parameters"]
    assert report["prune_width"] and parameters["kept"] == report["parameters"] <= 0.6 * parameters["original"]
    candidates = report["steps"][0]["candidates"]
    assert len(candidates) >= 2 and all(candidate["loss"] is not None for candidate in candidates)
    chosen = min(candidates, key=lambda candidate: candidate["loss"])["hidden_size"]
    reloaded = __import__("hfprune").from_pretrained(tmp_path / "out")
    assert reloaded.config.hidden_size == report["hidden_size"] == chosen
    # the budget, what was kept and the width choice are said on the console and on the card, and survive a re-render
    assert f"parameter budget 0.6: kept {parameters['kept']:,} of {parameters['original']:,}" in result.stdout
    assert f"hidden width {chosen}" in result.stdout
    from hfprune.export.card import regenerate_model_card

    sentence = f"**Parameter budget 60%**, allocated by importance per parameter across layers, heads and FFN neurons: {parameters['kept']:,} of {parameters['original']:,}"
    widths = ", ".join(f"{candidate['hidden_size']} (loss {candidate['loss']:.4f})" for candidate in candidates)
    for card in ((tmp_path / "out" / "README.md").read_text(), regenerate_model_card(tmp_path / "out", output_dir=tmp_path / "card").content):
        assert sentence in card and f"hidden width {chosen}, the least loss on the scoring data among the widths tried: {widths}." in card


def test_l0_with_params_from_the_cli_gates_every_kind_and_keeps_the_budget(tmp_path: Path):
    from cli_fixtures import write_tiny_llama_and_text

    llama, text = write_tiny_llama_and_text(tmp_path, num_layers=2, num_kv_heads=4)
    result = cli(
        "prune", llama, "--task", "lm", "--data-dir", text, "-o", tmp_path / "out", "--params", "0.8", "--method", "l0",
        "--lr", "1e-3", "--batch-size", "8", "--max-length", "16", "--no-bench", "--no-dense-control", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "hfprune_results.json").read_text())
    report, parameters = results["param_target"], results["sparsity"]["parameters"]
    assert report["method"] == "l0" and parameters["kept"] == report["parameters"]
    hidden = __import__("hfprune").from_pretrained(tmp_path / "out").config.hidden_size
    assert abs(parameters["kept"] - 0.8 * parameters["original"]) <= 3 * hidden  # one gated-MLP neuron
    assert "L0 gates on the heads, FFN neurons and whole attention and MLP blocks" in (tmp_path / "out" / "README.md").read_text()
    assert f"parameter budget 0.8: kept {parameters['kept']:,}" in result.stdout


def test_an_l0_budget_below_what_the_gates_hold_is_one_line_exit_2_and_writes_nothing(tmp_path: Path):
    from cli_fixtures import write_tiny_llama_and_text

    llama, text = write_tiny_llama_and_text(tmp_path, num_layers=2, num_kv_heads=4)
    result = cli(
        "prune", llama, "--task", "lm", "--data-dir", text, "-o", tmp_path / "out", "--params", "0.05", "--method", "l0",
        "--batch-size", "8", "--max-length", "16", "--no-bench", "--no-dense-control", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 2 and one_error_line(result).startswith("Error: param_budget=0.05 is out of reach")
    assert not (tmp_path / "out").exists()


def test_prune_width_without_params_is_one_line_exit_2(tmp_path: Path):
    result = cli("prune", tmp_path / "missing", "--task", "lm", "--prune-width")
    assert result.exit_code == 2 and one_error_line(result).startswith("Error: --prune-width needs --params")
