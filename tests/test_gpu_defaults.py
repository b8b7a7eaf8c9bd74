"""GPU-aware defaults (issue 28): the batch and precision training picks per device, and the half-precision rows
of a GPU speed table.

There is no GPU where these run: CUDA is faked by monkeypatching `torch.cuda.is_available` and the device's
compute capability, and only the settings chosen are checked (nothing trains or times on a fake GPU).
`benchmarks/gpu_check.sh` runs the same paths on a real one.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from cli_fixtures import one_error_line, write_tiny_bert
from conftest import tiny_model
from hfprune.cli import app
from transformers import HfArgumentParser
from typer.testing import CliRunner

import hfprune
from hfprune.constants import PRECISIONS, PRUNE_DEFAULTS
from hfprune.errors import PipelineInputError
from hfprune.export.card_sections import _fine_tuning
from hfprune.jobs.finetune import precision_of, resolve_precision, training_device, training_kwargs
from hfprune.jobs.prune import prune_for_task
from hfprune.jobs.prune_arguments import parse_prune_arguments
from hfprune.jobs.prune_job import PruneJob
from hfprune.measure import speed
from hfprune.measure.speed_report import SpeedReport
from hfprune.pruning_config import PruningConfig

GLUE_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


def fake_gpu(monkeypatch, capability: tuple[int, int] = (9, 0), name: str = "NVIDIA H100 80GB HBM3") -> None:
    """Make torch report one CUDA GPU of `capability` (Hopper by default) and no MPS."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def no_gpu(monkeypatch, mps: bool = False) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


def kwargs(device: str | None = None, precision: str = "auto", batch_size: int = 32) -> dict:
    return training_kwargs(Path("out"), batch_size=batch_size, learning_rate=5e-5, seed=0, quiet=True, device=device, precision=precision)


# ---- batches ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", [None, "cpu"])
def test_cpu_trains_in_micro_batches_in_fp32(monkeypatch, device):
    no_gpu(monkeypatch)
    settings = kwargs(device)
    assert (settings["per_device_train_batch_size"], settings["gradient_accumulation_steps"]) == (8, 4)
    assert settings["per_device_eval_batch_size"] == 16
    assert not settings["auto_find_batch_size"] and not settings["dataloader_pin_memory"]
    assert not settings["bf16"] and not settings["fp16"]
    assert training_device(device) == "cpu"


@pytest.mark.parametrize("device", [None, "cuda", "cuda:0"])
def test_cuda_trains_the_whole_batch_in_bf16_and_finds_a_batch_that_fits(monkeypatch, device):
    fake_gpu(monkeypatch)
    settings = kwargs(device)
    assert (settings["per_device_train_batch_size"], settings["gradient_accumulation_steps"]) == (32, 1)
    assert settings["per_device_eval_batch_size"] == 64
    assert settings["auto_find_batch_size"] and settings["dataloader_pin_memory"]
    assert settings["bf16"] and not settings["fp16"] and not settings["use_cpu"]
    assert training_device(device) == "cuda"


def test_cpu_wins_over_a_gpu_when_asked_for(monkeypatch):
    fake_gpu(monkeypatch)
    settings = kwargs("cpu")
    assert settings["use_cpu"] and settings["per_device_train_batch_size"] == 8 and not settings["auto_find_batch_size"]
    assert not settings["bf16"] and not settings["dataloader_pin_memory"]


def test_mps_keeps_micro_batches_and_fp32(monkeypatch):
    no_gpu(monkeypatch, mps=True)
    settings = kwargs(None)
    assert training_device(None) == "mps"
    assert (settings["per_device_train_batch_size"], settings["gradient_accumulation_steps"]) == (8, 4)
    assert not settings["auto_find_batch_size"] and not settings["bf16"] and not settings["fp16"]


# ---- precision ----------------------------------------------------------------------------------------
def test_auto_precision_per_device(monkeypatch):
    no_gpu(monkeypatch)
    assert resolve_precision("auto", None) == resolve_precision("auto", "cpu") == "fp32"
    fake_gpu(monkeypatch, capability=(8, 0))  # A100
    assert resolve_precision("auto", None) == "bf16"
    assert resolve_precision("auto", "cpu") == "fp32"
    fake_gpu(monkeypatch, capability=(7, 5))  # T4: bf16 only emulated; auto never picks fp16
    assert resolve_precision("auto", "cuda") == "fp32"
    assert resolve_precision("fp16", "cuda") == "fp16"
    settings = kwargs("cuda", "fp16")
    assert settings["fp16"] and not settings["bf16"]


def test_precision_refusals_are_one_line(monkeypatch):
    no_gpu(monkeypatch)
    with pytest.raises(PipelineInputError, match=r"^precision must be auto, fp32, bf16 or fp16, got 'fp8'$"):
        resolve_precision("fp8", None)
    with pytest.raises(PipelineInputError, match="^precision 'fp16' needs a GPU") as error:
        resolve_precision("fp16", None)
    assert error.value.cli_message.startswith("--precision fp16 needs a GPU")
    fake_gpu(monkeypatch, capability=(7, 0), name="Tesla V100-SXM2-16GB")
    with pytest.raises(PipelineInputError, match="^precision 'bf16': Tesla V100-SXM2-16GB does not compute bf16") as error:
        kwargs("cuda", "bf16")
    assert "\n" not in str(error.value)


def test_bf16_on_the_cpu_is_allowed_and_tells_the_trainer(monkeypatch, tmp_path):
    """The Trainer autocasts bf16 on a CPU only with `use_cpu`; without it, it refuses at length."""
    no_gpu(monkeypatch)
    settings = kwargs(None, "bf16")
    assert settings["bf16"] and settings["use_cpu"]
    config = PruningConfig(**{**settings, "output_dir": str(tmp_path)})
    assert config.bf16 and precision_of(config) == "bf16"


def test_precision_default_and_choices_are_one_table():
    assert PRUNE_DEFAULTS["precision"] == "auto" and PRECISIONS == ("auto", "fp32", "bf16", "fp16")


def test_pruning_config_parses_the_trainers_own_precision_flags(tmp_path):
    """`PruningConfig` holds precision as TrainingArguments' bf16/fp16, with no second name, and still parses."""
    (config,) = HfArgumentParser(PruningConfig).parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--use_cpu", "--bf16"])
    assert config.bf16 and not config.fp16 and precision_of(config) == "bf16"
    assert not hasattr(config, "precision")


def test_prune_for_task_refuses_an_unknown_precision_before_any_work(tmp_path):
    with pytest.raises(PipelineInputError, match=r"^precision must be auto, fp32, bf16 or fp16, got 'half'$"):
        prune_for_task("no/such-model", "sst2", output_dir=tmp_path / "out", precision="half")
    assert not (tmp_path / "out").exists()


def test_cli_refuses_an_unknown_precision_in_one_line(tmp_path):
    result = CliRunner().invoke(app, ["prune", "no/such-model", "--task", "sst2", "--precision", "half", "-o", str(tmp_path / "out")])
    assert one_error_line(result) == "Error: --precision must be auto, fp32, bf16 or fp16, got 'half'"


def test_card_says_what_precision_recovery_trained_in():
    assert _fine_tuning(False, {"recovery_epochs": 1.0, "precision": "bf16"})["recovery_words"] == "1 epoch, trained in bf16 mixed precision"
    assert _fine_tuning(False, {"recovery_epochs": 2.0, "precision": "fp32"})["recovery_words"] == "2 epochs, trained in fp32"
    assert _fine_tuning(False, {"recovery_epochs": 1.0})["recovery_words"] == "1 epoch"  # a card from before
    assert _fine_tuning(False, {"recovery_epochs": 0.0, "precision": "bf16"})["recovery_words"] is None


# ---- GPU timing in half precision ------------------------------------------------------------------------
def test_half_precisions_only_on_a_cuda_gpu(monkeypatch):
    assert speed.half_precisions(torch.device("cpu")) == []
    assert speed.half_precisions(torch.device("mps")) == []
    monkeypatch.setattr(speed, "cuda_computes_bf16", lambda device=None: True)
    assert speed.half_precisions(torch.device("cuda", 0)) == ["fp16", "bf16"]
    assert speed.half_precisions(torch.device("cuda", 0), torch.bfloat16) == ["fp16"]  # a bf16 model: its own rows
    monkeypatch.setattr(speed, "cuda_computes_bf16", lambda device=None: False)
    assert speed.half_precisions(torch.device("cuda", 0)) == ["fp16"]


def fake_measure(calls: list):
    """A `measure_speed` that times nothing: one row per model, 10 ms for fp32 and 4 ms in half precision
    (the pruned model twice as fast), recording each model's dtype."""

    def measure(models, progress=None, **kwargs):
        calls.append({name: next(model.parameters()).dtype for name, model in models.items()})
        rows = []
        for name, model in models.items():
            ms = (10.0 if next(model.parameters()).dtype == torch.float32 else 4.0) / (2 if name.startswith("pruned") else 1)
            base = rows[0]["median_ms"] if rows else ms
            row = {"model": name, "batch_size": 1, "seq_len": 8, "median_ms": ms, "p25_ms": ms, "p75_ms": ms, "throughput": 1e3 / ms}
            row.update(flops=10, params=10, speedup=base / ms, ideal_speedup=1.0, efficiency=base / ms, noise={"noisy": False, "reasons": []})
            rows.append(row)
            if progress is not None:
                progress(len(rows), len(models), rows[-1])
        reasons = [f"{name} drifted" for name in models if name.startswith("pruned")]
        noise = {"noisy": bool(reasons), "reasons": reasons}
        return SpeedReport(device="NVIDIA H100 80GB HBM3 (cuda:0)", rows=rows, settings={"repeats": 1, "warmup": 0}, noise=noise)

    return measure


def tiny_pair():
    dense = tiny_model("bert")
    pruned = copy.deepcopy(dense)
    hfprune.prune_heads(pruned, {0: [0, 1]})
    return dense, pruned


def test_a_gpu_speed_table_adds_fp16_and_bf16_rows_on_copies(monkeypatch):
    calls, stages = [], []
    monkeypatch.setattr(speed, "measure_speed", fake_measure(calls))
    monkeypatch.setattr(speed, "resolve_device", lambda device: torch.device("cuda", 0))
    monkeypatch.setattr(speed, "cuda_computes_bf16", lambda device=None: True)
    dense, pruned = tiny_pair()
    report = speed.time_against_dense(pruned, dense, progress=lambda stage, done, total: stages.append(stage))
    assert report.models() == ["dense", "pruned", "dense fp16", "pruned fp16", "dense bf16", "pruned bf16"]
    assert calls == [
        {"dense": torch.float32, "pruned": torch.float32},
        {"dense fp16": torch.float16, "pruned fp16": torch.float16},
        {"dense bf16": torch.bfloat16, "pruned bf16": torch.bfloat16},
    ]
    assert next(dense.parameters()).dtype == next(pruned.parameters()).dtype == torch.float32  # cast copies only
    speedups = {row["model"]: row["speedup"] for row in report.rows}
    assert speedups["pruned bf16"] == speedups["pruned"] == 2.0  # against dense in the same dtype
    assert report.settings["precisions"] == ["fp32", "fp16", "bf16"]
    assert report.noise["reasons"] == ["pruned drifted", "pruned fp16 drifted", "pruned bf16 drifted"]
    assert set(stages) == {"time dense vs pruned", "time dense vs pruned (fp16)", "time dense vs pruned (bf16)"}
    table = report.table()
    assert "Device: NVIDIA H100 80GB HBM3 (cuda:0)" in table and "Timed in fp32, fp16, bf16" in table
    assert SpeedReport.from_dict(report.to_dict()).to_dict() == report.to_dict()


@pytest.mark.parametrize("case", ["cpu", "dtype", "off"])
def test_no_half_precision_rows_off_the_gpu_or_when_told(monkeypatch, case):
    calls = []
    monkeypatch.setattr(speed, "measure_speed", fake_measure(calls))
    if case != "cpu":
        monkeypatch.setattr(speed, "resolve_device", lambda device: torch.device("cuda", 0))
        monkeypatch.setattr(speed, "cuda_computes_bf16", lambda device=None: True)
    dense, pruned = tiny_pair()
    extra = {"dtype": {"dtype": torch.float32}, "off": {"half_precision": False}}.get(case, {})
    report = speed.time_against_dense(pruned, dense, device="cpu" if case == "cpu" else None, **extra)
    assert report.models() == ["dense", "pruned"] and len(calls) == 1
    assert "precisions" not in report.settings and "Timed in" not in report.table()


def test_the_job_records_the_precision_auto_resolves_to(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = write_tiny_bert(tmp_path / "bert")
    job = PruneJob(*parse_prune_arguments(dict(model_name_or_path=str(model), task="sst2", output_dir=tmp_path / "out", data_dir=GLUE_DIR, max_train_samples=64)))
    job.load_and_validate()
    assert job.settings["precision"] == "fp32" and not job.pruning_args.bf16


def test_fp16_on_the_cpu_is_refused_before_any_work(tmp_path):
    model = write_tiny_bert(tmp_path / "bert")
    with pytest.raises(PipelineInputError, match="^precision 'fp16' needs a GPU"):
        prune_for_task(str(model), "sst2", output_dir=tmp_path / "out", data_dir=GLUE_DIR, device="cpu", precision="fp16")
    assert not (tmp_path / "out").exists()
