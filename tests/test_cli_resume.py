"""`hfprune prune` killed with SIGKILL mid-run resumes with `--resume` and ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cli_fixtures import write_sst2, write_tiny_bert
from safetensors.torch import load_file

from hfprune.io.rundir import work_dir_for


def prune_command(root: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "hfprune.cli", "prune", str(root / "bert"), "--task", "sst2", "--data-dir", str(root / "glue"),
        "--heads", "0.5", "--ffn", "0.25", "--schedule", "iterative", "--steps", "3", "--lr", "1e-3",
        "--batch-size", "8", "--max-length", "32", "--save-steps", "2", "--no-bench", "--quiet", "-o", str(output_dir), *extra,
    ]  # fmt: skip


def run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=ENV)


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_prune_killed_mid_run_resumes_from_the_cli(tmp_path: Path):
    write_tiny_bert(tmp_path / "bert")
    write_sst2(tmp_path / "glue")
    reference = run(prune_command(tmp_path, tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr[-3000:]

    output_dir = tmp_path / "out"
    work_dir = work_dir_for(output_dir)
    process = subprocess.Popen(prune_command(tmp_path, output_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    deadline = time.monotonic() + 240
    while not any(work_dir.glob("prune/pruning-step-2/checkpoint-*/trainer_state.json")):
        assert process.poll() is None, f"the run ended before it could be killed: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "no checkpoint of pruning step 2 appeared"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not output_dir.exists()  # nothing half-written where the result goes

    refused = run(prune_command(tmp_path, output_dir))
    assert refused.returncode == 2
    assert refused.stderr.strip().startswith("Error: ") and "--resume" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert work_dir.is_dir()  # refusing did not throw the interrupted run away

    resumed = run(prune_command(tmp_path, output_dir, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not work_dir.exists()  # cleaned up once the result is in place

    expected, actual = load_file(tmp_path / "reference" / "model.safetensors"), load_file(output_dir / "model.safetensors")
    assert expected.keys() == actual.keys()
    assert all(expected[name].equal(actual[name]) for name in expected)  # bit-identical to the uninterrupted run
    record = lambda folder: json.loads((folder / "config.json").read_text())["hfprune"]  # noqa: E731
    assert record(output_dir) == record(tmp_path / "reference")
    results = lambda folder: json.loads((folder / "hfprune_results.json").read_text())  # noqa: E731
    for key in ("metrics_before", "metrics_after", "sparsity"):
        assert results(output_dir)[key] == results(tmp_path / "reference")[key]
    assert len(results(output_dir)["pruning_history"]) == 4  # step 0 and the three pruning steps


def test_resume_without_an_interrupted_run_is_refused(tmp_path: Path):
    write_tiny_bert(tmp_path / "bert")
    write_sst2(tmp_path / "glue")
    result = run(prune_command(tmp_path, tmp_path / "out", "--resume"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"Error: nothing to resume: no interrupted run in {work_dir_for(tmp_path / 'out')}"
    assert not (tmp_path / "out").exists() and not work_dir_for(tmp_path / "out").exists()
