"""hfprune.measure.speed: FLOPs counted on real forwards, and the structure of side-by-side speed reports.

No assertion here depends on a timing: only on counts, shapes, order of calls and files written.
"""

import copy
import json
import math

import pytest
import torch
from conftest import FAMILIES, tiny_model

import hfprune
import hfprune.measure.noise as noise_module
import hfprune.measure.speed as speed_module
from hfprune.measure.flops import count_flops
from hfprune.measure.noise import assess_noise, load_reasons, noise_reasons
from hfprune.measure.speed import measure_speed
from hfprune.measure.speed_report import SpeedReport

B, T = 2, 16
HIDDEN, LAYERS, HEADS, FFN = 32, 3, 4, 24  # the tiny BERT of conftest
HEAD_DIM = HIDDEN // HEADS
ROW_KEYS = {
    "model", "batch_size", "seq_len", "median_ms", "p25_ms", "p75_ms", "throughput",
    "flops", "params", "speedup", "ideal_speedup", "efficiency", "noise",
}  # fmt: skip


def test_tiny_bert_is_the_shape_these_counts_assume():
    _, kwargs, _ = FAMILIES["bert"]
    assert (kwargs["hidden_size"], kwargs["num_hidden_layers"], kwargs["num_attention_heads"], kwargs["intermediate_size"]) == (
        HIDDEN, LAYERS, HEADS, FFN
    )  # fmt: skip


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_half_the_ffn_removes_exactly_its_analytic_share(impl):
    model = tiny_model("bert", impl)
    dense = count_flops(model, B, T)
    hfprune.prune_ffn(model, {layer: range(0, FFN, 2) for layer in range(LAYERS)})
    # Each FFN neuron costs one multiply-add per token in the up and in the down projection.
    assert dense - count_flops(model, B, T) == LAYERS * (FFN // 2) * 2 * (2 * B * T * HIDDEN)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_pruned_heads_remove_projections_and_attention(impl):
    model = tiny_model("bert", impl)
    dense = count_flops(model, B, T)
    hfprune.prune_heads(model, {0: [1], 2: [0, 3]})
    projections = 4 * 2 * B * T * HIDDEN * HEAD_DIM  # q, k, v rows and output columns of one head
    attention = 2 * 2 * B * T * T * HEAD_DIM  # scores and weighted sum of one head
    assert dense - count_flops(model, B, T) == 3 * (projections + attention)


@pytest.mark.parametrize("family", [family for family in FAMILIES if family != "xlnet"])
def test_sdpa_and_eager_count_the_same(family):
    """The fused CPU attention kernel is counted (GQA included): without it sdpa would seem to skip attention."""
    assert count_flops(tiny_model(family, "sdpa"), B, T) == count_flops(tiny_model(family, "eager"), B, T)


def test_flops_scale_with_batch_and_layers():
    model = tiny_model("bert")
    one = count_flops(model, 1, T)
    assert count_flops(model, 4, T) == 4 * one
    assert count_flops(model, 1, 2 * T) > 2 * one  # attention is quadratic in the length
    per_layer_before = one
    hfprune.drop_layers(model, [1])
    dropped = per_layer_before - count_flops(model, 1, T)
    hfprune.drop_layers(model, [2])
    assert per_layer_before - count_flops(model, 1, T) == 2 * dropped > 0


def test_count_flops_on_a_decoder_restores_mode():
    model = tiny_model("llama").train()
    assert count_flops(model, 1, 8) > 0
    assert model.training


def tiny_pair():
    dense = tiny_model("bert", "sdpa")
    pruned = copy.deepcopy(dense)
    hfprune.prune_ffn(pruned, {layer: range(12) for layer in range(LAYERS)})
    hfprune.prune_heads(pruned, {0: [0, 1]})
    return {"dense": dense, "pruned": pruned}


@pytest.fixture(scope="module")
def report():
    models = tiny_pair()
    models["dense"].train()
    threads = torch.get_num_threads()
    calls = []
    result = measure_speed(
        models, batch_sizes=(1, 3), seq_lengths=(8, 12), warmup=1, repeats=3, num_threads=1, device="cpu",
        progress=lambda done, total, row: calls.append((done, total, row["model"])),
    )  # fmt: skip
    assert torch.get_num_threads() == threads  # restored
    assert models["dense"].training and not models["pruned"].training  # modes restored
    result.calls = calls
    return result


def test_report_has_one_row_per_model_and_shape(report):
    assert report.device.startswith("cpu (") and "1 thread" in report.device
    assert [(r["seq_len"], r["batch_size"], r["model"]) for r in report.rows] == [
        (seq, batch, name) for seq in (8, 12) for batch in (1, 3) for name in ("dense", "pruned")
    ]
    assert report.calls == [(i + 1, 8, ("dense", "pruned")[i % 2]) for i in range(8)]
    assert report.settings["num_threads"] == 1 and report.settings["repeats"] == 3


def test_report_rows_are_consistent(report):
    for row in report.rows:
        assert set(row) == ROW_KEYS
        assert set(row["noise"]) == {"noisy", "reasons"} and row["noise"]["noisy"] == bool(row["noise"]["reasons"])
        assert 0 < row["p25_ms"] <= row["median_ms"] <= row["p75_ms"]
        assert row["throughput"] == pytest.approx(row["batch_size"] * 1e3 / row["median_ms"])
        assert row["efficiency"] == pytest.approx(row["speedup"] / row["ideal_speedup"])
    by_key = {(r["model"], r["batch_size"], r["seq_len"]): r for r in report.rows}
    for (name, batch, seq), row in by_key.items():
        base = by_key[("dense", batch, seq)]
        assert row["speedup"] == pytest.approx(base["median_ms"] / row["median_ms"])
        assert row["ideal_speedup"] == pytest.approx(base["flops"] / row["flops"])
        if name == "dense":
            assert row["speedup"] == row["ideal_speedup"] == 1.0
        else:
            assert row["ideal_speedup"] > 1 and row["params"] < base["params"]
    dense = tiny_model("bert", "sdpa")
    assert by_key[("dense", 3, 12)]["flops"] == count_flops(dense, 3, 12)


def test_json_roundtrip(report, tmp_path):
    path = tmp_path / "sub" / "speed.json"
    report.save_json(path)
    loaded = SpeedReport.load_json(path)
    assert loaded.to_dict() == report.to_dict()
    assert json.loads(path.read_text())["rows"][0]["model"] == "dense"


def test_table_lists_every_row(report):
    lines = report.table().splitlines()
    body = [line for line in lines if line.startswith("| ") and not line.startswith("| model")]
    assert len(body) == len(report.rows)
    assert report.device in lines[0]
    assert all(line.count("|") == 12 for line in body)
    assert [line.rsplit("|", 2)[1].strip() for line in body] == [
        "NOISY" if row["noise"]["noisy"] else "ok" for row in report.rows
    ]


def test_plot_writes_a_png(report, tmp_path):
    path = tmp_path / "speed.png"
    report.plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_models_are_interleaved_with_rotating_order():
    models = tiny_pair()
    order = []
    for name, model in models.items():
        model.register_forward_pre_hook(lambda module, args, name=name: order.append(name))
    measure_speed(models, batch_sizes=(2,), warmup=1, repeats=3, device="cpu")
    # one FLOP-counting forward each, then rounds A B | B A | A B | B A
    assert order == ["dense", "pruned"] + ["dense", "pruned", "pruned", "dense"] * 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(models={}), "non-empty"),
        (dict(batch_sizes=()), "batch_sizes is empty"),
        (dict(batch_sizes=(8, 0)), "batch_sizes must be positive"),
        (dict(seq_lengths=(-1,)), "seq_lengths must be positive"),
        (dict(batch_sizes=8), "list of positive integers"),
        (dict(repeats=0), "repeats must be an integer >= 1"),
        (dict(warmup=-1), "warmup must be an integer >= 0"),
        (dict(num_threads=0), "num_threads"),
        (dict(dtype="fp16"), "dtype must be a torch.dtype"),
        (dict(models={"x": torch.nn.Linear(2, 2)}), "PreTrainedModel"),
        (dict(device="not-a-device"), "not a torch device"),
    ],
)
def test_bad_input_is_one_line_pruning_error(kwargs, message):
    kwargs = {"models": {"dense": tiny_model("bert")}, **kwargs}
    with pytest.raises(hfprune.PruningError, match=message) as info:
        measure_speed(**kwargs)
    assert "\n" not in str(info.value)


def test_count_flops_rejects_bad_shapes():
    with pytest.raises(hfprune.PruningError, match="batch_size"):
        count_flops(tiny_model("bert"), 0, T)
    with pytest.raises(hfprune.PruningError, match="seq_len"):
        count_flops(tiny_model("bert"), 1, 2.5)


# ---- noise: crafted numbers, a fake timer and a fake load average; never real timings -------------------
@pytest.mark.parametrize(
    "row, expected",
    [
        (dict(median_ms=10.0, p25_ms=9.5, p75_ms=10.5), []),  # 10% spread: quiet
        (dict(median_ms=10.0, p25_ms=9.0, p75_ms=11.0), []),  # exactly 20%: at the limit, not above it
        (dict(median_ms=10.0, p25_ms=8.0, p75_ms=12.5), ["p25-p75 spread is 45% of the median (limit 20%)"]),
        (dict(median_ms=10.0, p25_ms=10.0, p75_ms=10.0, speedup=1.58, ideal_speedup=1.44), []),  # +9.7%
        (
            dict(median_ms=10.0, p25_ms=10.0, p75_ms=10.0, speedup=1.76, ideal_speedup=1.44),  # issue 11's run
            ["measured speedup 1.76x is more than 10% above the FLOPs ideal 1.44x"],
        ),
        (dict(median_ms=10.0, p25_ms=10.0, p75_ms=10.0, speedup=3.0, ideal_speedup=math.inf), []),  # no FLOPs left
        (dict(median_ms=10.0, p25_ms=10.0, p75_ms=10.0, times_ms=[10.0, 10.0, 11.4, 11.4]), []),  # 14% drift
        (
            dict(median_ms=10.0, p25_ms=10.0, p75_ms=10.0, times_ms=[10.0, 10.0, 10.0, 12.0, 12.0, 12.0]),
            ["timings drifted 20% between the first and second half of the rounds (limit 15%)"],
        ),
        (dict(median_ms=10.0, p25_ms=10.0, p75_ms=10.0, times_ms=[10.0, 20.0, 30.0]), []),  # < 4 rounds: no verdict
    ],
)
def test_noise_reasons_from_crafted_numbers(row, expected):
    median, p25, p75 = row.pop("median_ms"), row.pop("p25_ms"), row.pop("p75_ms")
    assert noise_reasons(median, p25, p75, **row) == expected


def test_noise_reasons_lists_every_sign_at_once():
    reasons = noise_reasons(10.0, 5.0, 20.0, speedup=2.0, ideal_speedup=1.2, times_ms=[5.0, 5.0, 20.0, 20.0])
    assert [reason.split(" ")[0] for reason in reasons] == ["p25-p75", "timings", "measured"]


@pytest.mark.parametrize(
    "load, cpus, threads, expected",
    [
        (0.3, 2, 1, []),
        (2.5, 2, 1, []),  # this process's own 2-thread training just before: not above the CPUs (+ margin)
        (2.6, 2, 1, ["1-minute load average 2.6 before the measurement, above the 2 CPUs"]),
        (3.0, 16, 1, []),  # a many-core machine with a few other jobs still has free cores
        (0.2, 1, 2, ["2 timing threads on 1 CPU"]),
    ],
)
def test_load_reasons_compare_the_load_with_the_cpus(load, cpus, threads, expected):
    assert load_reasons(load, cpus, threads, "before") == expected


def _row(model, batch, median, p25, p75, speedup=1.0, ideal=1.0):
    return dict(model=model, batch_size=batch, seq_len=8, median_ms=median, p25_ms=p25, p75_ms=p75,
                speedup=speedup, ideal_speedup=ideal)  # fmt: skip


def test_assess_noise_marks_rows_and_a_noisy_baseline_marks_its_shape():
    rows = [
        _row("dense", 1, 10.0, 9.9, 10.1), _row("pruned", 1, 8.0, 7.9, 8.1, speedup=1.25, ideal=1.3),
        _row("dense", 4, 40.0, 30.0, 50.0), _row("pruned", 4, 30.0, 29.9, 30.1, speedup=1.33, ideal=1.3),
    ]  # fmt: skip
    verdict = assess_noise(rows, machine_reasons=["1-minute load average 5.0 after the measurement, above the 2 CPUs"])
    assert [row["noise"]["noisy"] for row in rows] == [False, False, True, True]
    assert rows[3]["noise"]["reasons"] == ["its baseline (dense) timing at this shape is noisy"]
    assert verdict == {
        "noisy": True,
        "reasons": [
            "1-minute load average 5.0 after the measurement, above the 2 CPUs",
            "dense at batch 4 x 8: p25-p75 spread is 50% of the median (limit 20%)",
        ],
    }
    assert assess_noise(rows[:2]) == {"noisy": False, "reasons": []}


def _fake_timing(monkeypatch, times, load):
    """measure_speed with `times` as its timer (one value per timed call, in call order; cycled), a fixed load
    average and 2 CPUs: the timer does not run the models, so nothing depends on this machine."""
    import itertools

    values = itertools.cycle(times)
    monkeypatch.setattr(speed_module, "device_timer", lambda device: lambda fn: next(values))
    monkeypatch.setattr(noise_module.os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(noise_module, "_cpu_count", lambda: 2)


def test_measure_speed_on_a_quiet_machine_is_not_noisy(monkeypatch, tmp_path):
    _fake_timing(monkeypatch, [10.0], load=0.4)
    report = measure_speed(tiny_pair(), batch_sizes=(1, 2), seq_lengths=(8,), warmup=1, repeats=6, num_threads=1, device="cpu")
    assert report.noise == {"noisy": False, "reasons": []} and not report.noisy
    assert all(row["noise"] == {"noisy": False, "reasons": []} for row in report.rows)
    assert report.settings["load_average"] == {"before": 0.4, "after": 0.4, "cpus": 2}
    assert report.noise_warning() is None and "Warning" not in report.table()


def test_measure_speed_under_load_is_noisy_in_the_report_json_and_table(monkeypatch, tmp_path):
    _fake_timing(monkeypatch, [10.0], load=5.0)
    report = measure_speed(tiny_pair(), batch_sizes=(1,), seq_lengths=(8,), warmup=0, repeats=4, num_threads=1, device="cpu")
    assert report.noise == {
        "noisy": True,
        "reasons": [
            "1-minute load average 5.0 before the measurement, above the 2 CPUs",
            "1-minute load average 5.0 after the measurement, above the 2 CPUs",
        ],
    }
    assert not any(row["noise"]["noisy"] for row in report.rows)  # the rows themselves look fine
    report.save_json(tmp_path / "speed.json")
    assert json.loads((tmp_path / "speed.json").read_text())["noise"]["noisy"] is True
    assert SpeedReport.load_json(tmp_path / "speed.json").to_dict() == report.to_dict()
    warning = report.noise_warning()
    assert "\n" not in warning and "--threads 1" in warning and "--repeats" in warning and "quiet machine" in warning
    assert f"Warning: {warning}" in report.table().splitlines()


def test_measure_speed_with_drifting_timings_is_noisy(monkeypatch):
    # 2 models x 8 rounds: the first 4 rounds (8 calls) take 10 ms, the last 4 take 12 ms. The p25-p75 spread
    # (18% of the median) passes; the 20% drift between the halves does not.
    _fake_timing(monkeypatch, [10.0] * 8 + [12.0] * 8, load=0.0)
    report = measure_speed(tiny_pair(), batch_sizes=(1,), seq_lengths=(8,), warmup=0, repeats=8, num_threads=1, device="cpu")
    drift = "timings drifted 20% between the first and second half of the rounds (limit 15%)"
    baseline = "its baseline (dense) timing at this shape is noisy"
    assert [row["noise"]["reasons"] for row in report.rows] == [[drift], [drift, baseline]]
    assert report.noise == {"noisy": True, "reasons": [f"dense at batch 1 x 8: {drift}", f"pruned at batch 1 x 8: {drift}"]}


def test_old_json_without_noise_loads_and_gets_the_checks_its_rows_allow():
    old = {
        "device": "cpu (old, 1 thread)",
        "rows": [_row("dense", 8, 494.0, 480.0, 500.0), _row("pruned", 8, 280.0, 279.0, 281.0, speedup=1.76, ideal=1.44)],
        "settings": {"repeats": 10},
    }
    report = SpeedReport.from_dict(old)
    assert [row["noise"]["noisy"] for row in report.rows] == [False, True]
    assert report.noise["reasons"] == ["pruned at batch 8 x 8: measured speedup 1.76x is more than 10% above the FLOPs ideal 1.44x"]
    assert "noise" not in old["rows"][1]  # the input is not changed
    assert SpeedReport.from_dict(report.to_dict()).to_dict() == report.to_dict()


def test_plot_ticks_are_the_measured_batch_sizes(monkeypatch):
    _fake_timing(monkeypatch, [10.0], load=0.0)
    report = measure_speed(tiny_pair(), batch_sizes=(1, 3, 12), seq_lengths=(8,), warmup=0, repeats=1, device="cpu")
    figure = report._figure()
    for axis in figure.axes:
        assert list(axis.get_xticks()) == [1, 3, 12]
        assert [label.get_text() for label in axis.get_xticklabels()] == ["1", "3", "12"]
        assert list(axis.get_xticks(minor=True)) == []
