"""hfprune.speed: FLOPs counted on real forwards, and the structure of side-by-side speed reports.

No assertion here depends on a timing: only on counts, shapes, order of calls and files written.
"""

import copy
import json

import pytest
import torch

import hfprune
from conftest import FAMILIES, tiny_model
from hfprune.speed import SpeedReport, count_flops, measure_speed

B, T = 2, 16
HIDDEN, LAYERS, HEADS, FFN = 32, 3, 4, 24  # the tiny BERT of conftest
HEAD_DIM = HIDDEN // HEADS
ROW_KEYS = {
    "model", "batch_size", "seq_len", "median_ms", "p25_ms", "p75_ms", "throughput",
    "flops", "params", "speedup", "ideal_speedup", "efficiency",
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
    assert all(line.count("|") == 11 for line in body)


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
