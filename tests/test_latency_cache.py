"""The latency-model cache: a fit is reused for the same shapes, timing setup and machine, and only then."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_model, tiny_pruning_args

from hfprune.engine.surgery import prune_heads
from hfprune.export import card_sections
from hfprune.measure.flops import count_flops
from hfprune.measure.latency import LatencyModel
from hfprune.measure.latency_cache import ENV_VAR, cached_latency_model, default_latency_cache, latency_key
from hfprune.planning import speed_target

SETUP = {"batch_size": 4, "seq_len": 16, "device": "cpu", "num_threads": 1}


class Fits:
    """A stand-in for `measure_latency_model` that counts its calls and returns a new model each time."""

    def __init__(self):
        self.calls = 0

    def __call__(self) -> LatencyModel:
        self.calls += 1
        return LatencyModel(
            fixed=0.001, layer=0.0001, attention=0.0002 * self.calls, head=0.00003, mlp=0.0001, neuron=1e-6,
            dense_seconds=0.01, batch_size=4, seq_len=16, device="cpu", measured={"half_heads": 0.008},
        )  # fmt: skip


def test_the_first_fit_is_kept_and_reused(tmp_path):
    model, fits = tiny_model("bert"), Fits()
    first, source = cached_latency_model(model, fits, cache_dir=tmp_path, **SETUP)
    assert source is None and fits.calls == 1
    (path,) = tmp_path.iterdir()
    assert json.loads(path.read_text())["latency_model"] == first.to_dict()
    again, source = cached_latency_model(tiny_model("bert", seed=1), fits, cache_dir=tmp_path, **SETUP)
    assert fits.calls == 1 and source == path and again == first  # other weights, same shapes: the same costs


def test_name_and_labels_do_not_change_the_key():
    model, renamed = tiny_model("bert"), tiny_model("bert")
    renamed.config._name_or_path = "someone/else"
    renamed.config.id2label = {0: "a", 1: "b", 2: "c"}
    assert latency_key(model, **SETUP) == latency_key(renamed, **SETUP)


@pytest.mark.parametrize("change", ["pruned", "batch_size", "seq_len", "num_threads", "family"])
def test_anything_the_timings_depend_on_changes_the_key(change):
    model, setup = tiny_model("bert"), dict(SETUP)
    other = tiny_model("bert")
    if change == "pruned":
        prune_heads(other, {0: [0]})
    elif change == "family":
        other = tiny_model("roberta")
    else:
        setup[change] += 1
    assert latency_key(model, **SETUP) != latency_key(other, **setup)


def test_an_unreadable_file_is_measured_again_and_replaced(tmp_path):
    model, fits = tiny_model("bert"), Fits()
    path = tmp_path / f"{latency_key(model, **SETUP)}.json"
    path.write_text("{not json")
    latency, source = cached_latency_model(model, fits, cache_dir=tmp_path, **SETUP)
    assert source is None and fits.calls == 1
    assert LatencyModel.from_dict(json.loads(path.read_text())["latency_model"]) == latency
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_a_folder_that_cannot_be_written_is_no_error(tmp_path):
    (tmp_path / "a-file").write_text("")  # a file where the folder should be: no folder can be made there
    fits = Fits()
    latency, source = cached_latency_model(tiny_model("bert"), fits, cache_dir=tmp_path / "a-file" / "cache", **SETUP)
    assert source is None and fits.calls == 1 and latency.attention == 0.0002


def test_the_default_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "elsewhere"))
    assert default_latency_cache() == tmp_path / "elsewhere"
    monkeypatch.delenv(ENV_VAR)
    assert default_latency_cache().parts[-2:] == ("hfprune", "latency")


# ---- a speed target plans with the cached latency model ----------------------------------------------------------
def _speed_target(tmp_path, monkeypatch, **overrides):
    """A `SpeedTarget` of a tiny BERT at 2 x 8 tokens; returns it and how many latency models were measured so far."""
    calls = []
    measure = speed_target.measure_latency_model

    def counting(*args, **kwargs):
        calls.append(1)
        return measure(*args, **kwargs)

    monkeypatch.setattr(speed_target, "measure_latency_model", counting)
    args = tiny_pruning_args(
        tmp_path, target_speedup=1.2, speedup_batch_size=2, speedup_seq_len=8, speedup_num_threads=1, **overrides
    )
    return speed_target.SpeedTarget(tiny_model("bert"), args), calls


def test_a_second_speed_target_plans_with_the_first_ones_latency_model(tmp_path, monkeypatch):
    first, calls = _speed_target(tmp_path, monkeypatch)
    assert first.latency_source == "measured" and len(calls) == 1
    (kept,) = default_latency_cache().iterdir()
    second, calls = _speed_target(tmp_path, monkeypatch)
    assert not calls and second.latency == first.latency
    assert second.latency_source == f"cached ({kept.name})" == second.report()["latency_source"]
    assert "earlier run on this machine" in card_sections._speed_target_info({**second.report(), "measured_speedup": 1.3, "predicted_speedup": 1.25})["latency"]


def test_without_the_cache_the_latency_model_is_measured_and_not_kept(tmp_path, monkeypatch):
    _speed_target(tmp_path, monkeypatch)
    target, calls = _speed_target(tmp_path, monkeypatch, latency_cache=False)
    assert len(calls) == 1 and target.latency_source == "measured"
    assert len(list(default_latency_cache().iterdir())) == 1


def test_a_timer_of_your_own_is_never_cached(tmp_path, monkeypatch):
    args = tiny_pruning_args(tmp_path, target_speedup=1.2, speedup_batch_size=2, speedup_seq_len=8)
    flops = lambda models: {name: float(count_flops(model, 2, 8)) for name, model in models.items()}  # noqa: E731
    target = speed_target.SpeedTarget(tiny_model("bert"), args, timer=flops)
    assert target.latency_source == "measured" and not list(default_latency_cache().iterdir())
