"""Stock shapes on request (`uniform=True`, `--uniform`): every planner keeps the same heads (KV groups) and FFN width
in every kept layer and never empties a block, so plain transformers reloads the result with the same logits."""

import json

import pytest
import torch
import transformers
from conftest import VOCAB, logits_of, tiny_inputs, tiny_model, tiny_pruning_args
from transformers import default_data_collator

import hfprune
from hfprune.engine.record import get_record, gqa_group_size, kept_ffn, kv_groups
from hfprune.errors import PruningError
from hfprune.export.card_sections import loading_section
from hfprune.measure.flops import count_flops
from hfprune.planning.param_target import parameter_cost_model
from hfprune.planning.plan import ffn_to_prune, heads_to_prune
from hfprune.planning.uniform import allowed_counts, uniform_counts, uniform_keep
from hfprune.training.gates import HeadGates
from hfprune.training.trainer import PruningTrainer

BATCH, SEQ = 2, 16


def flops_timer(models):
    """An exact, linear "timer": FLOPs (wall-clock timings of a tiny model decide nothing)."""
    return {name: float(count_flops(model, BATCH, SEQ)) for name, model in models.items()}


def lm_data(num_examples: int = 16, seed: int = 0) -> list[dict]:
    ids = torch.randint(3, VOCAB, (num_examples, 8), generator=torch.Generator().manual_seed(seed))
    return [{"input_ids": row, "attention_mask": torch.ones(8, dtype=torch.long), "labels": row.clone()} for row in ids]


def num_parameters(model) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def shapes(model) -> tuple[int, int, int]:
    """(query heads, KV groups, FFN width) of every kept layer, asserted equal and non-empty."""
    record = get_record(model)
    per_layer = {
        (len(heads), len(kv_groups(record, heads)), len(kept_ffn(record, position)))
        for position, heads in enumerate(record["kept_heads"])
    }
    assert len(per_layer) == 1 and min(next(iter(per_layer))) > 0, per_layer
    return per_layer.pop()


def assert_stock(model, folder) -> tuple[int, int, int]:
    """Uniform shapes, `stock_loadable`, and `AutoModelForCausalLM` (no hfprune) reloads exactly that model."""
    heads, kv, width = shapes(model)
    assert get_record(model)["stock_loadable"]
    model.save_pretrained(folder)
    reloaded, info = transformers.AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    config = reloaded.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.intermediate_size) == (heads, kv, width)
    assert config.num_hidden_layers == len(get_record(model)["kept_layers"])
    inputs = tiny_inputs()
    torch.testing.assert_close(logits_of(reloaded.eval(), inputs), logits_of(model.eval(), inputs), atol=1e-5, rtol=0)
    return heads, kv, width


def llama_trainer(tmp_path, timer=None, **overrides) -> tuple[PruningTrainer, torch.nn.Module]:
    args = tiny_pruning_args(tmp_path / "out", uniform=True, recovery_steps=1, **overrides)
    model = tiny_model("llama")  # 3 layers, 4 query heads in 2 KV groups, hidden 32, FFN 24
    trainer = PruningTrainer(model=model, args=args, train_dataset=lm_data(), data_collator=default_data_collator, speed_timer=timer)
    return trainer, model


# ---- the allowed counts and the sparsity planners ------------------------------------------------------------------
def test_allowed_counts_round_every_layer_alike_and_llama_heads_divide_the_width():
    assert allowed_counts(24, multiple_of=8) == [8, 16, 24]
    assert allowed_counts(6, multiple_of=4) == [4, 6]  # or every layer as it is
    assert allowed_counts(8, unit=2) == [2, 4, 6, 8]  # whole KV groups
    assert allowed_counts(12, divides=48) == [1, 2, 3, 4, 6, 8, 12]
    llama = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=40, num_hidden_layers=2, num_attention_heads=5, intermediate_size=16)
    )  # fmt: skip
    assert uniform_counts(llama, "heads") == [1, 2, 4, 5]  # 3 heads would not divide 40: transformers refuses that config
    assert uniform_counts(tiny_model("llama"), "heads") == [2, 4] and uniform_counts(tiny_model("bert"), "heads") == [1, 2, 3, 4]
    assert uniform_counts(tiny_model("llama"), "ffn", multiple_of=8) == [8, 16, 24]
    model = tiny_model("llama")
    hfprune.prune_ffn(model, {1: list(range(24))})  # a layer without MLP cannot be made uniform again
    with pytest.raises(PruningError, match="layer 1 of this model has none left"):
        uniform_counts(model, "ffn")


def test_sparsities_spread_evenly_and_every_layer_keeps_its_best():
    scores = torch.tensor([[4.0, 3, 2, 1], [1, 1, 1, 4], [9, 5, 5, 9]])
    assert heads_to_prune(scores, 0.5) == {0: [1, 2, 3], 1: [0, 1, 2]}  # global ranking: uneven
    plan = {0: [2, 3], 1: [1, 2], 2: [1, 2]}
    assert heads_to_prune(scores, 0.5, uniform=True) == heads_to_prune(scores, 0.5, uniform=True, per_layer=True) == plan
    assert heads_to_prune(scores, count=12, uniform=True) == {0: [1, 2, 3], 1: [0, 1, 2], 2: [1, 2, 3]}  # never none
    assert heads_to_prune(scores, 0.5, uniform=True, gqa_group_size=2) == {0: [2, 3], 1: [0, 1], 2: [2, 3]}
    assert heads_to_prune(scores, 0.25, uniform=True, counts=[1, 2, 4]) == {}  # 3 per layer: 2 and 4 tie, 4 wins
    ffn = torch.randn(3, 24, generator=torch.Generator().manual_seed(0))
    plan = ffn_to_prune(ffn, 0.5, uniform=True, multiple_of=8)  # 12 per layer: 8 and 16 tie, 16 wins
    assert all(len(neurons) == 8 and set(neurons) == set(ffn[layer].argsort()[:8].tolist()) for layer, neurons in plan.items())


def test_fraction_targets_over_iterative_steps_give_stock_shapes(tmp_path):
    trainer, model = llama_trainer(
        tmp_path, target_head_sparsity=0.6, target_ffn_sparsity=0.5, target_layer_sparsity=0.34, round_to_multiple=8,
        pruning_schedule="iterative", pruning_steps=2,
    )  # fmt: skip
    trainer.train()
    # 1 of 3 layers; 5 heads left over 2 layers -> 2 each (whole KV groups); 36 neurons -> 18 each -> 16 (multiple of 8)
    assert assert_stock(model, tmp_path / "saved") == (2, 1, 16)
    assert len(get_record(model)["kept_layers"]) == 2 and len(trainer.pruning_history) == 3


# ---- the allocators: parameter budget and speed target -------------------------------------------------------------
def uniform_step(model) -> float:
    """The most one uniform move can remove: a layer, one KV group in every layer, or one neuron in every layer."""
    costs, record = parameter_cost_model(model), get_record(model)
    layers, heads = len(record["kept_layers"]), record["original"]["num_heads"]
    group = gqa_group_size(record)
    layer = costs.layer_seconds(heads, record["original"]["intermediate_size"])
    return max(layer, layers * group * costs.head, layers * costs.neuron)


def test_a_parameter_budget_is_met_within_one_uniform_step(tmp_path):
    trainer, model = llama_trainer(tmp_path, target_param_budget=0.7)
    dense, step = num_parameters(model), uniform_step(model)
    trainer.train()
    kept = num_parameters(model)
    assert 0.7 * dense - step < kept <= 0.7 * dense
    assert trainer.param_report["parameters"] == kept
    assert_stock(model, tmp_path / "saved")


def test_a_speed_target_is_met_with_stock_shapes(tmp_path):
    trainer, model = llama_trainer(tmp_path, flops_timer, target_speedup=1.6, speedup_batch_size=BATCH, speedup_seq_len=SEQ)
    trainer.train()
    report = trainer.speedup_report
    assert report["met"] and 1.6 * 0.97 <= report["measured_speedup"] < 1.6 * 1.6  # at most one big move past it
    assert report["predicted_speedup"] == pytest.approx(report["measured_speedup"])  # FLOPs: the latency model is exact
    assert_stock(model, tmp_path / "saved")


# ---- L0 gates ---------------------------------------------------------------------------------------------------------
def test_l0_gates_keep_the_most_open_units_alike_in_every_layer(tmp_path):
    model = tiny_model("llama")
    dense = num_parameters(model)
    with pytest.raises(PruningError, match="use blocks=False"):
        HeadGates(model, ffn=True, blocks=True, uniform=True)
    gates = HeadGates(model, ffn=True, param_budget=0.8, uniform=True)
    with torch.no_grad():
        for parameter in gates.gate_parameters():
            parameter.normal_(generator=torch.Generator().manual_seed(parameter.numel()))
    plan = gates.finalize(model)
    assert_stock(model, tmp_path / "budget")
    assert abs(num_parameters(model) - 0.8 * dense) <= uniform_step(tiny_model("llama"))
    with torch.no_grad():  # each layer closed its least open neurons
        for layer, neurons in plan["ffn"].items():
            kept = set(range(24)) - set(neurons)
            assert max(gates.ffn_log_alpha[layer, neurons]) <= min(gates.ffn_log_alpha[layer, sorted(kept)])

    # without a target: as many units as the open gates of all layers, spread evenly
    gates = HeadGates(tiny_model("llama"), uniform=True)
    with torch.no_grad():
        gates.log_alpha.copy_(torch.tensor([[1.0, 2.0], [-1.0, 3.0], [0.5, -2.0]]))  # 4 of 6 KV groups open
    assert gates.plan()["heads"] == {0: [0, 1], 1: [0, 1], 2: [2, 3]}  # 4 / 3 layers -> 1 group each, the most open
    keep = uniform_keep({"ffn": {0: {0: -1.0, 1: 2.0}, 1: {0: 3.0, 1: 1.0}}}, {"ffn": [1, 2]})
    assert keep == {"ffn": 2}  # 3 open of 4: 1.5 per layer, the tie keeps more


def test_l0_training_with_a_budget_gives_stock_shapes(tmp_path):
    trainer, model = llama_trainer(
        tmp_path, pruning_method="l0", target_param_budget=0.8, l0_steps=4, l0_learning_rate=0.1, l0_init_keep=0.87
    )
    dense = num_parameters(model)
    trainer.train()
    assert abs(num_parameters(model) - 0.8 * dense) <= uniform_step(tiny_model("llama"))
    assert_stock(model, tmp_path / "saved")


# ---- the card and the command line ---------------------------------------------------------------------------------
def test_the_card_names_the_engines_from_the_saved_record(tmp_path):
    stock = tiny_model("llama")
    hfprune.prune_ffn(stock, {layer: [0, 1] for layer in range(3)})
    engines = loading_section(stock, get_record(stock), "me/x", tmp_path)["engines"]
    assert engines == (
        "transformers (no hfprune needed), vLLM, TGI, SGLang, llama.cpp (`llama` architecture via `hfprune export --format gguf`)"
    )
    uneven = tiny_model("llama")
    hfprune.prune_ffn(uneven, {0: [0, 1]})
    engines = loading_section(uneven, get_record(uneven), "me/x", tmp_path)["engines"]
    assert "`deci` architecture" in engines and engines.endswith("not vLLM/TGI/SGLang: prune with --uniform for those")
    bert = tiny_model("bert")
    engines = loading_section(bert, get_record(bert), "me/x", tmp_path)["engines"]
    assert engines == "transformers (no hfprune needed), ONNX (`hfprune export --format onnx`)"  # an encoder
    hfprune.prune_heads(bert, {0: [1]})
    assert loading_section(bert, get_record(bert), "me/x", tmp_path)["engines"].startswith("hfprune.from_pretrained, ONNX")


def test_cli_uniform_with_max_drop_gives_uniform_shapes_and_says_so(tmp_path, monkeypatch):
    """`--uniform` reaches the speed-target allocation of a max-drop run; its timer is FLOPs (see test_speed_target)."""
    from cli_fixtures import write_sst2, write_tiny_bert
    from test_cli_commands import cli

    import hfprune.planning.speed_target

    monkeypatch.setattr(hfprune.planning.speed_target, "speed_timer", lambda *args, **kwargs: flops_timer)
    write_tiny_bert(tmp_path / "clf", with_head=True)
    write_sst2(tmp_path / "glue", n_train=128)
    result = cli(
        "prune", tmp_path / "clf", "-o", tmp_path / "out", "--task", "sst2", "--data-dir", tmp_path / "glue", "--uniform",
        "--max-drop", "100", "--steps", "2", "--speedup", "1.5", "--lr", "1e-3", "--batch-size", "16", "--max-length", "16",
        "--score-examples", "32", "--allow-weak-baseline", "--no-bench", "--no-dense-control", "--quiet",
        "--speedup-batch-size", str(BATCH), "--speedup-seq-len", str(SEQ),
    )  # fmt: skip
    assert result.exit_code == 0, result.stdout[-3000:] + result.stderr[-3000:]
    saved = json.loads((tmp_path / "out" / "hfprune_results.json").read_text())
    assert saved["settings"]["uniform"] is True and saved["selection"]["chosen_step"] == 2
    model = hfprune.from_pretrained(tmp_path / "out")
    heads, _, _ = shapes(model)  # tiny BERT: 2 layers of 4 heads, FFN 48
    record = get_record(model)
    # BERT's head size is hidden / heads: fewer heads stay per-layer shapes to transformers; FFN and layers are stock
    assert record["stock_loadable"] == (heads == 4)
    card = (tmp_path / "out" / "README.md").read_text()
    loads = "transformers (no hfprune needed)" if record["stock_loadable"] else "hfprune.from_pretrained"
    assert f"**Loads in**: {loads}, ONNX (`hfprune export --format onnx`)." in card
    assert "| uniform | True |" in card
