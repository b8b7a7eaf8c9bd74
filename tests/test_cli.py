"""The CLI, end to end, in real processes."""

import json
import subprocess
import sys

import pytest


def hfprune_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hfprune.cli", *args], capture_output=True, text=True, timeout=600)


def test_help_lists_commands():
    result = hfprune_cli("--help")
    assert result.returncode == 0
    assert "demo" in result.stdout


@pytest.mark.slow
def test_demo_prunes_the_real_model_and_reloads_it(tmp_path):
    result = hfprune_cli("demo", "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reload identical: True" in result.stdout
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    record = config["hfprune"]
    assert record["kept_layers"] == [0, 1, 2, 3, 4]
    # 40% of 72 heads (29, rounded) go by magnitude, then layer 5 with whatever it kept.
    assert 72 - 29 - 12 <= sum(len(heads) for heads in record["kept_heads"]) <= 72 - 29
    assert all(len(kept) == 1152 for kept in record["kept_ffn"])  # 25% of 1536 removed per layer


@pytest.mark.parametrize(
    "args, message",
    [
        (["demo", "--heads", "1.5"], "must be in [0, 1)"),
        (["demo", "/no/such/model"], "Error"),
    ],
)
def test_bad_input_exits_non_zero_with_one_line(args, message):
    result = hfprune_cli(*args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_existing_output_dir_is_refused_and_kept(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    result = hfprune_cli("demo", "--output-dir", str(tmp_path))
    assert result.returncode == 2 and "not empty" in result.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_version_prints_the_package_version():
    import hfprune

    result = hfprune_cli("--version")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == hfprune.__version__
