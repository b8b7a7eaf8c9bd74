"""Issue 24: numbers that are not finite, seeds out of range, a checkpoint with every head removed, and messages
in the user's terms (a max-drop ceiling, a width budget, a Hub outage).

Each test here failed before the fix it covers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers
from cli_fixtures import one_error_line, write_sst2, write_tiny_bert
from conftest import tiny_inputs, tiny_model, tiny_pruning_args
from hfprune.cli import app
from typer.testing import CliRunner

import hfprune
from hfprune._validation import SEED_MAX, check_setting, offset_seed
from hfprune.errors import PipelineInputError, PruningError
from hfprune.io.rundir import work_dir_for
from hfprune.jobs.prune import prune_for_task
from hfprune.pruning_config import PruningConfig

runner = CliRunner()
FAST = ["--max-train-samples", "64", "--max-eval-samples", "16", "--score-examples", "16", "--epochs", "0", "--max-length", "16",
        "--no-bench", "--no-dense-control", "--allow-weak-baseline", "--quiet"]  # fmt: skip


def cli(*args):
    return runner.invoke(app, [str(arg) for arg in args])


def nothing_written(output: Path) -> bool:
    return not output.exists() and not work_dir_for(output).exists()


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    """A tiny BERT with a (random) task head, SST-2 in GLUE's layout, and the same BERT with every head removed."""
    root = tmp_path_factory.mktemp("numbers")
    write_tiny_bert(root / "bert", with_head=True)
    write_sst2(root / "glue", n_train=64, n_dev=16)
    model = transformers.BertForSequenceClassification.from_pretrained(root / "bert")
    hfprune.prune_heads(model, {layer: list(range(4)) for layer in range(2)})
    model.save_pretrained(root / "noheads")
    transformers.AutoTokenizer.from_pretrained(root / "bert").save_pretrained(root / "noheads")
    return root


# ---- 1. every float setting is finite -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, message",
    [
        (["--lr", "inf"], "--lr must be a finite number >= 0, got inf"),
        (["--speedup", "inf"], "--speedup must be a finite number above 1, got inf"),
        (["--heads", "nan"], "--heads must be a finite fraction in [0, 1), got nan"),
        (["--distill-layers", "inf"], "--distill-layers must be a finite number >= 0, got inf"),
    ],
)
def test_a_float_option_that_is_not_finite_is_one_line_exit_2(tmp_path: Path, args, message):
    output = tmp_path / "out"
    stderr = one_error_line(cli("prune", tmp_path / "missing", "--task", "sst2", "-o", output, *args))
    assert stderr == f"Error: {message}" and nothing_written(output)


def test_every_command_refuses_a_float_that_is_not_finite(tmp_path: Path):
    stderr = one_error_line(cli("export", tmp_path / "missing", "-o", tmp_path / "onnx", "--atol", "inf"))
    assert stderr == "Error: --atol must be a finite number, got inf"


def test_non_finite_numbers_and_bad_seeds_are_answered_without_importing_torch():
    script = textwrap.dedent(
        """
        import sys
        from typer.testing import CliRunner
        from hfprune.cli import app
        for args in (["--lr", "inf"], ["--seed", "-1"], ["--max-drop", "200"]):
            result = CliRunner().invoke(app, ["prune", "m", "--task", "sst2", *args])
            print(result.exit_code, len(result.stderr.strip().splitlines()))
        print("torch" in sys.modules)
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.split() == ["2", "1"] * 3 + ["False"], out.stdout + out.stderr


@pytest.mark.parametrize(
    "setting, value",
    [("learning_rate", float("inf")), ("learning_rate", float("nan")), ("target_speedup", float("inf"))],
)
def test_prune_for_task_refuses_a_setting_that_is_not_finite_before_anything_loads(tmp_path: Path, setting, value):
    with pytest.raises(PipelineInputError, match=f"^{setting} must be a finite number"):
        prune_for_task(str(tmp_path / "missing"), "sst2", output_dir=tmp_path / "out", **{setting: value})
    assert nothing_written(tmp_path / "out")


@pytest.mark.parametrize("field", ["learning_rate", "weight_decay", "max_grad_norm", "distillation_temperature"])
def test_pruning_config_refuses_a_float_that_is_not_finite(tmp_path: Path, field):
    with pytest.raises(PruningError, match=f"^{field} must be a finite number, got inf"):
        PruningConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **{field: float("inf")})


def test_the_shared_rule_says_finite():
    with pytest.raises(PruningError, match=r"^--lr must be a finite number >= 0, got nan$"):
        check_setting("learning_rate", float("nan"), name="--lr")


# ---- 2. seeds are in [0, 2**32 - 1], checked up front everywhere they enter -------------------------------------
@pytest.mark.parametrize("seed", ["-1", "4294967296"])
def test_a_seed_out_of_range_is_one_line_exit_2_and_leaves_no_work_folder(assets: Path, tmp_path: Path, seed: str):
    output = tmp_path / "out"
    stderr = one_error_line(cli("prune", assets / "bert", "--task", "sst2", "--data-dir", assets / "glue", "-o", output, "--seed", seed, *FAST))
    assert "--seed" in stderr and nothing_written(output)
    stderr = one_error_line(cli("score", assets / "bert", "--task", "sst2", "--data-dir", assets / "glue", "-o", output, "--seed", seed))
    assert "--seed" in stderr and nothing_written(output)


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_every_python_entry_point_refuses_a_seed_out_of_range(assets: Path, tmp_path: Path, seed: int):
    from hfprune.jobs.score import score_task
    from hfprune.scoring.methods import score_units

    expected = r"seed must be an integer in \[0, 4294967295\]"
    with pytest.raises(PipelineInputError, match=expected):
        prune_for_task(str(assets / "bert"), "sst2", output_dir=tmp_path / "out", data_dir=assets / "glue", seed=seed)
    with pytest.raises(PipelineInputError, match=expected):
        score_task(str(assets / "bert"), "sst2", output_dir=tmp_path / "out", data_kwargs={"data_dir": assets / "glue"}, seed=seed)
    assert nothing_written(tmp_path / "out")
    for field in ("seed", "data_seed"):
        with pytest.raises(PruningError, match=f"{field} must be an integer"):
            PruningConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **{field: seed})
    with pytest.raises(PruningError, match="seed must be an integer"):
        score_units(tiny_model("bert"), "random", ("heads",), seed=seed)


def tiny_dataset() -> list[dict]:
    inputs = tiny_inputs(batch=8, length=6)
    return [{"input_ids": ids, "attention_mask": mask, "labels": i % 3} for i, (ids, mask) in enumerate(zip(inputs["input_ids"], inputs["attention_mask"]))]


def test_the_largest_seed_seeds_every_pruning_step(tmp_path: Path):
    """Each pruning step is seeded `seed + step`: wrapped, so the largest seed still runs (numpy takes < 2**32)."""
    from hfprune.training.trainer import PruningTrainer

    assert offset_seed(SEED_MAX, 1) == 0 and offset_seed(7, 2) == 9
    data = tiny_dataset()
    args = tiny_pruning_args(
        tmp_path, seed=SEED_MAX, pruning_method="random", pruning_schedule="iterative", pruning_steps=2,
        target_head_sparsity=0.5, recovery_steps=1,
    )  # fmt: skip
    trainer = PruningTrainer(model=tiny_model("bert"), args=args, train_dataset=data, data_collator=transformers.default_data_collator)
    trainer.train()
    assert [entry["step"] for entry in trainer.pruning_history] == [0, 1, 2]


# ---- 3. a checkpoint with every head removed ---------------------------------------------------------------------
def headless_model():
    model = tiny_model("bert")
    hfprune.prune_heads(model, {layer: list(range(4)) for layer in range(3)})
    inputs = tiny_inputs(batch=4)
    return model, [{**inputs, "labels": torch.tensor([0, 1, 2, 0])}] * 2


@pytest.mark.parametrize("method", ["importance", "taylor", "fisher"])
def test_gradient_scores_of_a_model_without_heads_are_nan_for_heads_and_real_for_neurons(method):
    from hfprune.scoring.methods import score_units

    model, batches = headless_model()
    scores = score_units(model, method, ("heads", "ffn"), batches)
    assert scores["heads"].isnan().all()
    assert torch.isfinite(scores["ffn"]).all() and (scores["ffn"] > 0).any()
    assert hfprune.head_importance(model, batches).isnan().all()  # heads alone: nothing to differentiate, no error


def test_a_head_target_on_a_model_without_heads_is_refused_not_ignored(tmp_path: Path):
    from hfprune.planning.plan import final_targets

    model, _ = headless_model()
    args = tiny_pruning_args(tmp_path, target_head_sparsity=0.3, target_ffn_sparsity=0.2)
    with pytest.raises(PruningError, match="no attention heads left"):
        final_targets(args, model)
    assert final_targets(tiny_pruning_args(tmp_path, target_ffn_sparsity=0.2), model)["ffn"] == 0.2
    from hfprune.training.trainer import PruningTrainer

    gates = tiny_pruning_args(tmp_path, pruning_method="l0", target_head_sparsity=0.3, l0_steps=1)
    trainer = PruningTrainer(model=model, args=gates, train_dataset=tiny_dataset(), data_collator=transformers.default_data_collator)
    with pytest.raises(PruningError, match="no attention heads left"):
        trainer.train()


def test_onnx_export_of_a_model_without_heads_feeds_the_inputs_its_graph_declares(assets: Path, tmp_path: Path):
    pytest.importorskip("onnxruntime")
    from hfprune.export.onnx import export_onnx

    result = export_onnx(assets / "noheads", tmp_path / "onnx")
    assert result.passed and result.inputs == ["input_ids", "token_type_ids"]  # nothing attends: no attention_mask
    assert json.loads((tmp_path / "onnx" / "onnx_export.json").read_text())["inputs"] == result.inputs


@pytest.mark.parametrize("method", ["magnitude", "importance"])
def test_scoring_the_heads_of_a_model_without_heads_is_one_line_exit_2(assets: Path, tmp_path: Path, method: str):
    result = cli("score", assets / "noheads", "--task", "sst2", "--data-dir", assets / "glue", "-o", tmp_path / "s", "--method", method)
    assert "no attention heads left" in one_error_line(result) and not (tmp_path / "s").exists()


def test_prune_on_a_model_without_heads_prunes_what_is_left_and_refuses_heads_up_front(assets: Path, tmp_path: Path):
    base = ["prune", assets / "noheads", "--task", "sst2", "--data-dir", assets / "glue", *FAST]
    stderr = one_error_line(cli(*base, "-o", tmp_path / "heads", "--heads", "0.3"))
    assert "no attention heads left" in stderr and "--heads 0.3" in stderr and nothing_written(tmp_path / "heads")
    stderr = one_error_line(cli(*base, "-o", tmp_path / "none"))  # the fallback --heads 0.4 is skipped: nothing left
    assert stderr.startswith("Error: nothing to prune") and nothing_written(tmp_path / "none")

    result = cli(*base, "-o", tmp_path / "ffn", "--ffn", "0.5")
    assert result.exit_code == 0, result.stdout[-2000:] + result.stderr[-2000:]
    pruned = json.loads((tmp_path / "ffn" / "hfprune_results.json").read_text())
    assert pruned["settings"]["head_sparsity"] == 0.0 and pruned["sparsity"]["ffn_neurons"]["sparsity"] == pytest.approx(0.5)
    assert not work_dir_for(tmp_path / "ffn").exists()


# ---- 4. messages in the user's terms -----------------------------------------------------------------------------
def test_a_max_drop_beyond_the_scale_is_refused_up_front(tmp_path: Path):
    stderr = one_error_line(cli("prune", tmp_path / "missing", "--task", "sst2", "-o", tmp_path / "out", "--max-drop", "200"))
    assert "--max-drop" in stderr and "target_speedup" not in stderr
    with pytest.raises(PipelineInputError, match=r"^max_drop must be a number of points in \[0, 100\], got 200$"):
        prune_for_task(str(tmp_path / "missing"), "sst2", output_dir=tmp_path / "out", max_drop=200)


def test_a_max_drop_ceiling_out_of_reach_is_said_in_the_terms_of_the_run(assets: Path, tmp_path: Path):
    def overhead_timer(models):  # every model takes about the same time: no pruning makes it 4x faster
        return {name: 1.0 + 1e-9 * sum(p.numel() for p in model.parameters()) for name, model in models.items()}

    with pytest.raises(PipelineInputError) as error:
        prune_for_task(
            str(assets / "bert"), "sst2", output_dir=tmp_path / "out", data_dir=assets / "glue", max_drop=5,
            speed_timer=overhead_timer, max_train_samples=64, max_eval_samples=16, score_num_examples=16,
            recovery_epochs=0, max_length=16, bench=False, dense_control=False, allow_weak_baseline=True,
        )  # fmt: skip
    message, cli_message = str(error.value), error.value.cli_message
    assert message.startswith("max_drop=5 searches 6 ever faster pruning steps up to target_speedup=4 (its ceiling")
    assert "the drop allowed is not the limit" in message and "no pruning makes it more than" in message
    assert cli_message.startswith("--max-drop 5 searches") and "give a lower --speedup with --max-drop" in cli_message
    assert nothing_written(tmp_path / "out")


def test_a_budget_only_a_width_between_the_tried_fractions_reaches_is_reached(tmp_path: Path):
    """Embeddings (4000 x 32, twice) outweigh both layers: at 28 or 24 channels the layers, heads and neurons cannot
    make up the rest of a 70% budget, and 20 channels alone are already below it. 23 channels meet it."""
    from hfprune.planning.param_target import WIDTH_FRACTIONS
    from hfprune.training.trainer import PruningTrainer

    config = transformers.LlamaConfig(vocab_size=4000, hidden_size=32, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    ids = torch.randint(3, 4000, (16, 8), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": row, "attention_mask": torch.ones(8, dtype=torch.long), "labels": row.clone()} for row in ids]
    dense = sum(p.numel() for p in model.parameters())
    args = tiny_pruning_args(tmp_path, target_param_budget=0.7, prune_width=True, recovery_epochs=0)
    trainer = PruningTrainer(model=model, args=args, train_dataset=data, data_collator=transformers.default_data_collator)
    trainer.train()
    report = trainer.param_report
    assert 0.69 * dense < report["parameters"] <= 0.7 * dense
    assert report["hidden_size"] not in {round(32 * fraction) for fraction in WIDTH_FRACTIONS}


# the loopback Hub of tests/test_hub.py
from test_hub import hub, model_dir, no_backoff_sleep  # noqa: E402, F401  (fixtures)


def test_a_hub_outage_is_one_line_without_the_clients_retry_lines(hub, model_dir: Path, no_backoff_sleep, capfd):
    hub.fail_next(100, status=503, path_contains="/preupload/")
    result = cli("push", model_dir, "me/pruned")
    stderr = one_error_line(result, code=1)
    assert "HTTP 503" in stderr and len(no_backoff_sleep) == 5  # the client did retry, silently
    _, err = capfd.readouterr()
    assert "Retrying" not in err and "HTTP Error" not in err, err


def test_the_cli_silences_the_hub_clients_retry_lines_wherever_it_talks_to_the_hub(hub, no_backoff_sleep, capfd, caplog):
    """Loading a model or data set from a Hub id goes through the same client: the CLI lets only its errors print."""
    from hfprune.cli.common import quiet_libraries
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils._http import http_backoff

    hub.fail_next(100, status=503, path_contains="/api/whoami")
    quiet_libraries()
    with pytest.raises(HfHubHTTPError, match="503"):
        http_backoff("GET", f"{hub.url}/api/whoami-v2", max_retries=2, retry_on_status_codes=503)
    assert len(no_backoff_sleep) == 2
    _, err = capfd.readouterr()
    assert "Retrying" not in err and "HTTP Error" not in err, err
    assert "Retrying" in caplog.text  # still logged, for whoever listens: only the console is quiet
