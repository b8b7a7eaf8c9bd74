"""`card`, `eval` and `bench` refuse what they cannot honestly do, before any work, in one line (issue 24).

Each test here failed before these checks existed: `card` replaced the README of a model hfprune did not write,
crashed on broken JSON and described checkpoints whose weights do not load; a NaN metric showed as "+nan";
`eval --json` wrote invalid JSON from the CLI; `bench` found a too-long sequence, a base model of another
family and an unwritable `--json`/`--plot` only after (or while) timing. The models are tiny and nothing here
trains, so the whole file runs in seconds.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import transformers
from cli_fixtures import one_error_line, snapshot, write_tiny_bert
from hfprune.cli import app
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import hfprune
import hfprune.jobs.evaluate as evaluate_job
import hfprune.jobs.prune as prune_job
from hfprune.constants import RESULTS_FILE
from hfprune.errors import PipelineInputError, PruningError
from hfprune.export.card import check_card_checkpoint, regenerate_model_card, write_model_card
from hfprune.export.card_source import card_inputs
from hfprune.io.output import check_output_file
from hfprune.io.rundir import jsonable

runner = CliRunner()
EXAMPLE = Path(__file__).resolve().parents[1] / "model_cards" / "example"
FAST_BENCH = ["--batch-sizes", "1", "--seq-lengths", "8", "--repeats", "1", "--warmup", "0", "-q"]


def cli(*args):
    return runner.invoke(app, [str(arg) for arg in args])


def strict_json(path: Path):
    """JSON as a strict parser reads it: `NaN` / `Infinity` are refused."""

    def refuse(constant: str):
        raise ValueError(f"invalid JSON constant {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    """`bert`: a tiny dense BERT with a head (the base); `pruned`: it with 3 of 8 heads removed, saved as hfprune
    saves a checkpoint (config.hfprune, hfprune_results.json with the card inputs, README.md)."""
    root = tmp_path_factory.mktemp("inputs")
    write_tiny_bert(root / "bert", with_head=True)
    model = transformers.BertForSequenceClassification.from_pretrained(root / "bert")
    hfprune.prune_heads(model, {0: [1], 1: [0, 2]})
    model.save_pretrained(root / "pruned")
    transformers.AutoTokenizer.from_pretrained(root / "bert").save_pretrained(root / "pruned")
    stored = card_inputs(
        base_model="google-bert/bert-base-uncased", task="sst2", metrics_before={"accuracy": 0.8},
        metrics_after={"accuracy": 0.78}, speed=None, importance=None, command="hfprune prune bert --task sst2",
        pruning={"head_sparsity": 0.375}, base_num_parameters=None, finetuned_first=False, repo_id="me/tiny",
    )  # fmt: skip
    (root / "pruned" / RESULTS_FILE).write_text(json.dumps(jsonable({"card": stored}), indent=2))
    regenerate_model_card(root / "pruned")
    return root


@pytest.fixture
def pruned(assets: Path, tmp_path: Path) -> Path:
    """A fresh copy of the pruned checkpoint, to damage."""
    return Path(shutil.copytree(assets / "pruned", tmp_path / "pruned"))


@pytest.fixture
def no_weights_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any weight load or timing in `benchmark_checkpoint` fails the test: what it refuses, it refuses first."""

    def must_not_run(*args, **kwargs):
        raise AssertionError("the job loaded weights or timed before refusing its input")

    monkeypatch.setattr(prune_job, "from_pretrained", must_not_run)
    monkeypatch.setattr(prune_job, "time_against_dense", must_not_run)


# ---- 1, 2: `card` writes only over a card hfprune made, and says why not in one line --------------------------
def test_card_refuses_a_model_hfprune_did_not_write_and_keeps_its_readme(assets: Path, tmp_path: Path, monkeypatch):
    downloaded = write_tiny_bert(tmp_path / "downloaded", with_head=True)  # no config.hfprune, no results file
    (downloaded / "README.md").write_text("# The author's own model card\n")
    before = snapshot(downloaded)
    stderr = one_error_line(cli("card", downloaded))
    assert "was not written by hfprune" in stderr and "README.md is left as it is" in stderr
    with pytest.raises(PipelineInputError, match="not written by hfprune"):
        regenerate_model_card(downloaded)
    # bench --update-card wrote hfprune_results.json and the card after timing: refused before any timing
    monkeypatch.setattr(prune_job, "time_against_dense", lambda *a, **k: pytest.fail("timed before refusing"))
    assert "not written by hfprune" in one_error_line(cli("bench", downloaded, "--update-card", *FAST_BENCH))
    assert snapshot(downloaded) == before


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda folder: (folder / "config.json").write_text('{"model_type": "bert",'), "is not valid JSON"),
        (lambda folder: (folder / RESULTS_FILE).write_text("metrics: 0.9\n"), "is not valid JSON"),
        (lambda folder: (folder / RESULTS_FILE).write_bytes(b"\xff\xfe\x00binary"), "is not valid JSON"),
        (lambda folder: (folder / RESULTS_FILE).write_text("[1, 2]"), "not what hfprune writes"),
        (lambda folder: (folder / RESULTS_FILE).write_text('{"card": {"colour": "red"}}'), "does not know (colour)"),
    ],
    ids=["config", "results", "binary-results", "results-list", "unknown-field"],
)
def test_card_on_broken_json_is_one_line_exit_2_and_writes_nothing(pruned: Path, damage, message: str):
    damage(pruned)
    before = snapshot(pruned)
    assert message in one_error_line(cli("card", pruned))
    assert snapshot(pruned) == before


# ---- 3: `card` applies the checks `from_pretrained` applies, from the safetensors headers --------------------------
def _drop_layer_weights(folder: Path) -> None:
    weights = load_file(folder / "model.safetensors")
    save_file(
        {k: v for k, v in weights.items() if ".layer.1." not in k},
        folder / "model.safetensors",
        metadata={"format": "pt"},
    )


def _edit_record(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["hfprune"]["kept_heads"][0] = [0, 2]  # the weights keep heads 0, 2, 3 of layer 0
    (folder / "config.json").write_text(json.dumps(config))


def _edit_width(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = 40  # the weights hold 48 FFN neurons per layer
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda folder: (folder / "model.safetensors").unlink(), "holds no model weights"),
        (
            lambda folder: (folder / "model.safetensors").write_bytes(
                (folder / "model.safetensors").read_bytes()[:-100]
            ),
            "truncated or corrupt",
        ),
        (_drop_layer_weights, "has no weights for"),
        (_edit_record, "disagrees with the weights"),
        (_edit_width, "disagrees with the weights"),
    ],
    ids=["missing", "truncated", "missing-layer", "record", "config"],
)
def test_card_refuses_a_checkpoint_that_would_not_load_as_from_pretrained_does(pruned: Path, damage, message: str):
    damage(pruned)
    with pytest.raises(PruningError) as loading:
        hfprune.from_pretrained(pruned)  # what `eval` and `push` users would hit
    before = snapshot(pruned)
    stderr = one_error_line(cli("card", pruned))
    assert message in stderr and message in str(loading.value)
    assert stderr == f"Error: {' '.join(str(loading.value).split())}"  # the very refusal of from_pretrained
    assert snapshot(pruned) == before


def test_card_checks_read_no_weights(pruned: Path, monkeypatch):
    import safetensors

    def no_tensors(*args, **kwargs):
        raise AssertionError("a weight was read")

    monkeypatch.setattr(safetensors.torch, "load_file", no_tensors)
    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", no_tensors)
    stored, model = check_card_checkpoint(pruned)
    assert stored["repo_id"] == "me/tiny" and next(model.parameters()).device.type == "meta"


@pytest.mark.parametrize("family", ["gpt2", "llama", "distilbert", "xlnet"])
def test_the_card_checks_pass_on_sound_checkpoints_of_other_families(family: str, tmp_path: Path):
    from conftest import tiny_model

    model = tiny_model(family)  # gpt2 ties lm_head to wte: saved once, not missing
    hfprune.prune_heads(model, {0: [1, 3]})
    model.save_pretrained(tmp_path)
    card = regenerate_model_card(tmp_path, output_dir=tmp_path / "card", repo_id="me/x")
    assert "2 of 12 attention heads removed" in card.text


# ---- 4: an undefined metric is shown as undefined, with no +nan change ----------------------------------------------
def test_an_undefined_metric_renders_as_undefined_and_survives_a_rerender(pruned: Path, tmp_path: Path):
    nan = float("nan")
    before = {"pearson": nan, "spearmanr": 0.1}
    after = {"pearson": 0.3, "spearmanr": nan}
    model = hfprune.from_pretrained(pruned)
    first = write_model_card(model, tmp_path / "card", task="stsb", metrics_before=before, metrics_after=after,
                             baselines={"pearson": nan, "spearmanr": nan}).text  # fmt: skip
    rows = [line for line in first.splitlines() if line.startswith("| validation |")]
    assert rows == [
        "| validation | pearson | undefined (NaN) | undefined (NaN) | 0.3000 | undefined |",
        "| validation | spearmanr | undefined (NaN) | 0.1000 | undefined (NaN) | undefined |",
    ]
    assert "nan" not in first.replace("undefined (NaN)", "").lower()

    stored = card_inputs(base_model=None, task="stsb", metrics_before=before, metrics_after=after, speed=None,
                         importance=None, command=None, pruning=None, base_num_parameters=None, finetuned_first=False,
                         baselines={"pearson": nan, "spearmanr": nan})  # fmt: skip
    (pruned / RESULTS_FILE).write_text(json.dumps(jsonable({"card": stored})))  # NaN is stored as null
    again = regenerate_model_card(pruned).text
    assert [line for line in again.splitlines() if line.startswith("| validation |")] == rows


# ---- 5: eval --json is written by the Python API: atomically, strict JSON ------------------------------------------
def _constant_stsb_model(folder: Path) -> Path:
    write_tiny_bert(folder)
    config = transformers.AutoConfig.from_pretrained(folder)
    config.num_labels, config.problem_type, config.architectures = 1, "regression", None
    model = transformers.BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()  # every prediction is the bias: Pearson's r is undefined
    model.save_pretrained(folder)
    return folder


def _write_stsb(glue: Path) -> Path:
    (glue / "STS-B").mkdir(parents=True)
    rows = ["sentence1\tsentence2\tscore"] + [
        f"the film is good .\tthe plot is {w} .\t{i % 5}.0" for i, w in enumerate(["dull", "fun", "flat", "great"] * 3)
    ]
    for name in ("train.tsv", "dev.tsv"):
        (glue / "STS-B" / name).write_text("\n".join(rows) + "\n")
    return glue


def test_eval_json_is_strict_json_written_by_the_job(tmp_path: Path):
    model, glue = _constant_stsb_model(tmp_path / "model"), _write_stsb(tmp_path / "glue")
    out = tmp_path / "reports" / "metrics.json"
    result = cli("eval", model, "--task", "stsb", "--data-dir", glue, "--json", out, "-q")
    assert result.exit_code == 0, result.stderr
    written = strict_json(out)  # the CLI's json.dumps wrote `NaN`, which no strict parser reads
    assert written["metrics"]["validation"]["pearson"] is None and written["task"] == "stsb"
    assert sorted(p.name for p in out.parent.iterdir()) == ["metrics.json"]  # no temporary file left

    payload = hfprune.jobs.evaluate_checkpoint(str(model), "stsb", data_kwargs={"data_dir": glue}, json_path=out)
    assert math.isnan(payload["metrics"]["validation"]["pearson"])  # in Python, the value as computed
    assert strict_json(out)["metrics"] == written["metrics"]


def test_the_measuring_commands_write_no_file_themselves():
    import hfprune.cli.measure as commands

    source = inspect.getsource(commands)
    for writer in ("write_text", "write_bytes", "json.dump", "open(", "save_json", ".plot(", "mkdir", "savefig"):
        assert writer not in source, f"cli/measure.py writes a file itself ({writer})"


# ---- 6: bench refuses shapes and base models that cannot be compared, before timing ------------------------------
def test_bench_refuses_a_sequence_longer_than_the_position_embeddings(assets: Path, no_weights_load):
    stderr = one_error_line(cli("bench", assets / "pruned", "--seq-lengths", "16,100000", "-q"))
    assert "--seq-lengths 100000 is longer than" in stderr and "64 positions" in stderr
    assert "max_position_embeddings" in stderr


def _write_base(folder: Path, family: str) -> Path:
    if family == "bert-3-layers":
        config = transformers.BertConfig(vocab_size=32, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                         intermediate_size=48, max_position_embeddings=64)  # fmt: skip
        transformers.BertForSequenceClassification(config).save_pretrained(folder)
    else:
        config = transformers.DistilBertConfig(
            vocab_size=32, dim=32, n_layers=2, n_heads=4, hidden_dim=48, max_position_embeddings=64
        )
        transformers.DistilBertForSequenceClassification(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "family, message",
    [("distilbert", "is a distilbert model, but"), ("bert-3-layers", "num_layers 3 (the original has 2)")],
)
def test_bench_refuses_a_base_model_that_is_not_the_original(
    assets: Path, tmp_path: Path, no_weights_load, family, message
):
    base = _write_base(tmp_path / family, family)
    stderr = one_error_line(cli("bench", assets / "pruned", "--base", base, *FAST_BENCH))
    assert message in stderr and "give the dense model it was pruned from" in stderr


def test_bench_writes_json_and_plot_through_the_job(assets: Path, tmp_path: Path):
    out = tmp_path / "reports"
    result = cli(
        "bench",
        assets / "pruned",
        "--base",
        assets / "bert",
        "--json",
        out / "speed.json",
        "--plot",
        out / "speed.png",
        *FAST_BENCH,
    )
    assert result.exit_code == 0, result.stderr
    report = strict_json(out / "speed.json")
    assert [(row["model"], row["seq_len"]) for row in report["rows"]] == [("dense", 8), ("pruned", 8)]
    assert (out / "speed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["speed.json", "speed.png"]


# ---- 7: --json / --plot that cannot be written are refused before any work --------------------------------------
@contextlib.contextmanager
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder nothing can be written to: a read-only tmpfs as root (who ignores permissions), else mode 0555."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    mounted = False
    if os.geteuid() == 0:
        mounted = (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], capture_output=True
            ).returncode
            == 0
        )
        if not mounted:
            pytest.skip("running as root without a way to make a read-only folder")
    else:
        folder.chmod(0o555)
    try:
        yield folder
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], capture_output=True)
        else:
            folder.chmod(0o755)


def test_bench_output_paths_that_cannot_be_written_are_refused_before_timing(
    assets: Path, tmp_path: Path, no_weights_load
):
    (tmp_path / "a-file").write_text("x")
    before = snapshot(assets / "pruned")
    for option, path, message in (
        ("--json", tmp_path, "is a directory"),
        ("--plot", tmp_path, "is a directory"),
        ("--json", tmp_path / "a-file" / "speed.json", "which is a file, not a directory"),
        ("--json", assets / "pruned" / "model.safetensors", "would replace a file of the job's input"),
    ):
        stderr = one_error_line(cli("bench", assets / "pruned", option, path, *FAST_BENCH))
        assert stderr.startswith(f"Error: {option} {path} ") and message in stderr, stderr
    with read_only_folder(tmp_path) as folder:
        stderr = one_error_line(cli("bench", assets / "pruned", "--plot", folder / "speed.png", *FAST_BENCH))
        assert "is not writable" in stderr
    assert snapshot(assets / "pruned") == before


def test_eval_json_that_cannot_be_written_is_refused_before_any_data_or_weights_load(
    assets: Path, tmp_path: Path, monkeypatch
):
    monkeypatch.setattr(evaluate_job, "load_task_data", lambda *a, **k: pytest.fail("loaded data before refusing"))
    stderr = one_error_line(cli("eval", assets / "pruned", "--task", "sst2", "--json", tmp_path, "-q"))
    assert f"--json {tmp_path} is a directory" in stderr
    with read_only_folder(tmp_path) as folder:
        assert "is not writable" in one_error_line(
            cli("eval", assets / "pruned", "--task", "sst2", "--json", folder / "m.json")
        )


def test_check_output_file_speaks_python_to_python(tmp_path: Path):
    with pytest.raises(PipelineInputError, match=r"^json_path .* is a directory"):
        check_output_file(tmp_path, name="json_path", cli_name="--json")
    with pytest.raises(PipelineInputError, match="not a regular file"):
        check_output_file("/dev/null", name="plot_path")  # renaming a file over it would replace the device
    assert check_output_file(tmp_path / "new" / "deeper" / "m.json") == tmp_path / "new" / "deeper" / "m.json"
    assert not (tmp_path / "new").exists()  # the check creates nothing
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    (model / "speed.json").write_text("{}")  # a previous `bench model --json model/speed.json`
    assert check_output_file(model / "speed.json", inputs=[model]) == model / "speed.json"  # a rerun replaces it
    with pytest.raises(PipelineInputError, match="would replace a file of the job's input"):
        check_output_file(model / "model.safetensors", inputs=[model])


# ---- 8: the example card is what the current template renders ----------------------------------------------------
def test_the_example_card_is_rendered_by_the_current_template(tmp_path: Path):
    """The README in model_cards/example/ must be re-rendered (see model_cards/README.md) when the card changes."""
    stored = json.loads((EXAMPLE / RESULTS_FILE).read_text())["card"]
    config = transformers.BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                     intermediate_size=1536, num_labels=2)  # MiniLM-L6's shapes  # fmt: skip
    with torch.device("meta"):
        model = transformers.BertForSequenceClassification(config).to_empty(device="cpu")  # shapes, not values
    committed = (EXAMPLE / "README.md").read_text()
    table = {
        int(row.split(" | ")[0][2:]): row.split(" | ")[2]
        for row in committed.splitlines()
        if row.count(" | ") == 3 and "/12 |" in row
    }
    hfprune.prune_heads(
        model, {layer: [h for h in range(12) if str(h) not in heads.split(", ")] for layer, heads in table.items()}
    )
    write_model_card(model, tmp_path, checkpoint_dir=EXAMPLE, **stored)

    def without_version(text: str) -> str:
        return "\n".join(line for line in text.splitlines() if not line.startswith("Generated by hfprune"))

    assert without_version((tmp_path / "README.md").read_text()) == without_version(committed)
