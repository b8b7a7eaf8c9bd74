"""`hfprune.reconstruct`: layer-wise refits of what a pruned model kept, and `reconstruct=True` in the prune job."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import conftest
import pytest
import torch
import transformers
from cli_fixtures import VOCAB, write_sst2, write_tiny_bert
from conftest import FAMILIES, tiny_inputs, tiny_model

import hfprune
import hfprune.training.trainer
from hfprune.engine.arch import get_adapter
from hfprune.engine.arch.base import resolve
from hfprune.errors import PruningError
from hfprune.reconstruction.fits import bias_fit
from hfprune.reconstruction.statistics import BlockStatistics, ResidualStatistics
from hfprune.jobs.prune import prune_for_task

CALIBRATION = [tiny_inputs(8, 16, seed=seed) for seed in range(8)]
HELD_OUT = tiny_inputs(16, 16, seed=100)
KEPT_FFN = list(range(0, 24, 2))
REMOVED_FFN = list(range(1, 24, 2))
PRUNED_HEADS = {0: [0, 1], 1: [2, 3]}  # Llama: whole KV groups


def _pruned(dense: torch.nn.Module) -> torch.nn.Module:
    pruned = copy.deepcopy(dense)
    hfprune.prune_heads(pruned, PRUNED_HEADS)
    hfprune.prune_ffn(pruned, {layer: REMOVED_FFN for layer in range(3)})
    return pruned


def _zero_removed_columns(dense: torch.nn.Module) -> None:
    """Make the units `_pruned` removes contribute nothing, so that the pruned blocks can match exactly."""
    adapter, head_dim = get_adapter(dense), 8
    with torch.no_grad():
        for position, layer in enumerate(adapter.get_layers(dense)):
            for head in PRUNED_HEADS.get(position, []):
                resolve(layer, adapter.output).weight[:, head * head_dim : (head + 1) * head_dim] = 0
            resolve(layer, adapter.ffn_output).weight[:, REMOVED_FFN] = 0


def _assert_round_trips(pruned: torch.nn.Module, tmp_path: Path) -> None:
    """Saved and reloaded with hfprune, the model has the same parameters and computes the same logits."""
    shapes = {name: p.shape for name, p in pruned.named_parameters()}
    pruned.save_pretrained(tmp_path / "out")
    reloaded = hfprune.from_pretrained(tmp_path / "out").eval()
    assert {name: p.shape for name, p in reloaded.named_parameters()} == shapes
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**HELD_OUT).logits, pruned(**HELD_OUT).logits)


def _hidden_error(model: torch.nn.Module, dense: torch.nn.Module, inputs: dict) -> float:
    with torch.no_grad():
        pruned, reference = (m(**inputs, output_hidden_states=True).hidden_states[-1] for m in (model, dense))
    mask = inputs["attention_mask"].bool()
    return float((pruned - reference)[mask].pow(2).sum() / reference[mask].pow(2).sum())


@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize("method", ["least_squares", "scales"])
def test_a_block_that_can_match_exactly_is_recovered(family: str, method: str):
    """Removed units contribute nothing, so the pruned model equals the dense one; then its kept output projections
    are spoiled (columns scaled per unit, which both fits can undo) and the refit must restore them."""
    dense = tiny_model(family)
    _zero_removed_columns(dense)
    pruned = _pruned(dense)
    adapter = get_adapter(pruned)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in adapter.get_layers(pruned):
            for path, unit in ((adapter.output, 8), (adapter.ffn_output, 1)):
                weight = resolve(layer, path).weight
                scales = 1 + 0.5 * torch.rand(weight.shape[1] // unit, generator=generator)
                weight.mul_(scales.repeat_interleave(unit))
    assert _hidden_error(pruned, dense, HELD_OUT) > 1e-4

    report = hfprune.reconstruct(pruned, dense, CALIBRATION, method=method, damping=1e-10)

    assert len(report.blocks) == 6 and report.tokens == sum(int(b["attention_mask"].sum()) for b in CALIBRATION)
    for block in report.blocks:
        assert block.error_before > 1e-3 and block.error_after < 1e-9, block
    assert _hidden_error(pruned, dense, HELD_OUT) < 1e-9
    for position, (layer, dense_layer) in enumerate(zip(adapter.get_layers(pruned), adapter.get_layers(dense))):
        kept_columns = torch.cat([torch.arange(h * 8, h * 8 + 8) for h in range(4) if h not in PRUNED_HEADS.get(position, [])])
        torch.testing.assert_close(resolve(layer, adapter.output).weight, resolve(dense_layer, adapter.output).weight[:, kept_columns], atol=1e-5, rtol=0)
        torch.testing.assert_close(resolve(layer, adapter.ffn_output).weight, resolve(dense_layer, adapter.ffn_output).weight[:, KEPT_FFN], atol=1e-5, rtol=0)


def test_least_squares_also_refits_a_bias_that_is_off():
    dense = tiny_model("bert")
    _zero_removed_columns(dense)
    pruned = _pruned(dense)
    with torch.no_grad():
        for layer in pruned.bert.encoder.layer:
            layer.output.dense.bias.add_(0.3)
            layer.attention.output.dense.weight.mul_(1.2)
    hfprune.reconstruct(pruned, dense, CALIBRATION, damping=1e-10)
    for layer, dense_layer in zip(pruned.bert.encoder.layer, dense.bert.encoder.layer):
        torch.testing.assert_close(layer.output.dense.bias, dense_layer.output.dense.bias, atol=1e-5, rtol=0)


def _with_biases(family: str) -> torch.nn.Module:
    """The tiny model, a Llama given attention and MLP biases by its config (nonzero, like BERT's)."""
    if family == "bert":
        return tiny_model("bert")
    config = transformers.LlamaConfig(vocab_size=conftest.VOCAB, attention_bias=True, mlp_bias=True, **FAMILIES["llama"][1])
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_bias_compensation_restores_output_biases_that_are_off(family: str):
    """Removed units contribute nothing and the kept weights are the dense ones, so each block's output is off by
    exactly the bias that was zeroed: the bias fit must put the dense bias back, and leave the weights alone."""
    dense = _with_biases(family)
    _zero_removed_columns(dense)
    pruned = _pruned(dense)
    adapter = get_adapter(pruned)
    weights = {name: p.detach().clone() for name, p in pruned.named_parameters() if name.endswith("weight")}
    with torch.no_grad():
        for layer in adapter.get_layers(pruned):
            for path in (adapter.output, adapter.ffn_output):
                resolve(layer, path).bias.zero_()
    assert _hidden_error(pruned, dense, HELD_OUT) > 1e-4

    report = hfprune.reconstruct(pruned, dense, CALIBRATION, method="bias")

    assert len(report.blocks) == 6 and report.method == "bias"
    for block in report.blocks:
        assert block.error_before > 1e-4 and block.error_after < 1e-9, block
    assert _hidden_error(pruned, dense, HELD_OUT) < 1e-9
    for layer, dense_layer in zip(adapter.get_layers(pruned), adapter.get_layers(dense)):
        for path in (adapter.output, adapter.ffn_output):
            torch.testing.assert_close(resolve(layer, path).bias, resolve(dense_layer, path).bias, atol=1e-6, rtol=0)
    assert all(torch.equal(p, weights[name]) for name, p in pruned.named_parameters() if name.endswith("weight"))


def test_the_bias_fit_s_residual_statistics_agree_with_the_full_moments():
    """Bias compensation keeps only the residual's sum and norm: its errors and bias are those of X~'X~, X~'Y."""
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 50, 6, generator=generator), torch.randn(2, 50, 4, generator=generator)
    mask = (torch.rand(2, 50, generator=generator) > 0.3).long()
    weight, bias = torch.randn(4, 6, generator=generator), torch.randn(4, generator=generator)
    full, residual = BlockStatistics(6, 4, torch.device("cpu")), ResidualStatistics(weight, torch.device("cpu"))
    for stats in (full, residual):
        stats.add(x, y, mask)
    assert residual.tokens == full.tokens == int(mask.sum())
    for b in (bias, None):
        assert residual.relative_error(weight, b) == pytest.approx(full.relative_error(weight, b), rel=1e-12)
    _, fitted = bias_fit(residual, weight)
    expected = (full.xty[-1] - weight.double() @ full.xtx[:6, -1]) / full.tokens  # mean(Y) - W mean(X)
    torch.testing.assert_close(fitted, expected, rtol=1e-12, atol=1e-12)
    assert residual.relative_error(weight, fitted) < residual.relative_error(weight, bias)
    with pytest.raises(ValueError, match="the weight they were taken with"):
        residual.relative_error(weight + 1, bias)


def test_bias_compensation_gives_a_llama_zero_biases_first_and_the_result_round_trips(tmp_path: Path):
    dense = tiny_model("llama")
    pruned = _pruned(dense)
    hfprune.prune_ffn(pruned, {1: KEPT_FFN})  # layer 1's MLP removed whole (zero-width projections): not refitted
    hfprune.drop_layers(pruned, [2])
    plain = copy.deepcopy(pruned)
    with_zero_biases = copy.deepcopy(pruned)
    # q k v o gate up down in both layers, the zero-width ones too, so that a reload builds the same modules
    assert hfprune.reconstruction.add_output_biases(with_zero_biases, get_adapter(with_zero_biases)) == 2 * 7
    with torch.no_grad():
        assert torch.equal(with_zero_biases(**HELD_OUT).logits, plain(**HELD_OUT).logits)

    report = hfprune.reconstruct(pruned, dense, CALIBRATION, method="bias")

    assert pruned.config.attention_bias and pruned.config.mlp_bias
    assert [(b.layer, b.block) for b in report.blocks] == [(0, "attention"), (0, "mlp"), (1, "attention")]
    for block in report.blocks:
        assert block.error_after < block.error_before, block
    assert _hidden_error(pruned, dense, HELD_OUT) < _hidden_error(plain, dense, HELD_OUT)
    layers = pruned.model.layers
    for layer in layers:
        for name in ("q_proj", "k_proj", "v_proj"):
            assert torch.count_nonzero(getattr(layer.self_attn, name).bias) == 0
        assert torch.count_nonzero(layer.self_attn.o_proj.bias) > 0
    assert torch.count_nonzero(layers[0].mlp.gate_proj.bias) == torch.count_nonzero(layers[0].mlp.up_proj.bias) == 0
    assert torch.count_nonzero(layers[0].mlp.down_proj.bias) > 0 and torch.count_nonzero(layers[1].mlp.down_proj.bias) == 0
    _assert_round_trips(pruned, tmp_path)


def test_bias_compensation_is_refused_where_no_bias_can_be_carried(tmp_path: Path):
    dense = tiny_model("mistral")  # its projections are bias-free, and its config cannot change that
    with pytest.raises(PruningError, match="bias compensation needs output projections with a bias: mistral") as error:
        hfprune.reconstruct(_pruned(dense), dense, CALIBRATION, method="bias")
    assert "\n" not in str(error.value)
    args = hfprune.PruningConfig(output_dir=str(tmp_path / "trainer"), reconstruct=True, reconstruct_method="bias", report_to=[])
    with pytest.raises(PruningError, match="bias compensation needs"):  # the trainer refuses before any training
        hfprune.PruningTrainer(model=dense, args=args)
    llama = tiny_model("llama")  # streamed: the shards would need tensors they do not have
    llama.save_pretrained(tmp_path / "dense")
    _pruned(llama).save_pretrained(tmp_path / "pruned")
    before = {path.name: path.read_bytes() for path in (tmp_path / "pruned").iterdir()}
    with pytest.raises(PruningError, match="cannot add them yet") as error:
        hfprune.stream_reconstruct(tmp_path / "pruned", tmp_path / "dense", CALIBRATION, method="bias")
    assert "\n" not in str(error.value)
    assert {path.name: path.read_bytes() for path in (tmp_path / "pruned").iterdir()} == before


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_reconstruction_lowers_every_block_error_and_the_held_out_error(family: str):
    dense = tiny_model(family)
    pruned = _pruned(dense)
    before = _hidden_error(pruned, dense, HELD_OUT)
    report = hfprune.reconstruct(pruned, dense, CALIBRATION, target="block")
    after = _hidden_error(pruned, dense, HELD_OUT)
    print(f"{family}: blocks", [(b.layer, b.block, round(b.error_before, 4), round(b.error_after, 4)) for b in report.blocks])
    print(f"{family}: held-out last hidden state, relative error {before:.4f} -> {after:.4f}")
    assert len(report.blocks) == 5  # layer 2 keeps every head: its attention is the dense one, nothing to fit
    for block in report.blocks:
        assert block.error_after < 0.95 * block.error_before, block
    if family == "bert":  # post-LN: each block's output is the residual stream's update, so the model follows
        assert after < 0.5 * before
    else:  # pre-norm: the refit blocks only add to the stream, whose error they shrink less (0.482 -> 0.456)
        assert after < before


def test_scales_lower_the_error_less_than_least_squares_but_still_lower_it():
    dense = tiny_model("bert")
    scales, full = _pruned(dense), _pruned(dense)
    by_scales = hfprune.reconstruct(scales, dense, CALIBRATION, method="scales")
    by_least_squares = hfprune.reconstruct(full, dense, CALIBRATION)
    assert by_least_squares.mean_error_after < by_scales.mean_error_after < by_scales.mean_error_before
    assert _hidden_error(scales, dense, HELD_OUT) < _hidden_error(_pruned(dense), dense, HELD_OUT)


def test_layers_are_fitted_on_the_inputs_the_reconstructed_layers_before_them_produce():
    """The inputs the second layer is fitted on are the refitted first layer's outputs, and the result is a fixed
    point: reconstructing again changes nothing (a fit on the unrefitted inputs would not be one)."""
    dense = tiny_model("bert")
    pruned = _pruned(dense)
    layers = pruned.bert.encoder.layer
    seen: list[torch.Tensor] = []
    handle = layers[1].register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    hfprune.reconstruct(pruned, dense, CALIBRATION[:1], target="block", damping=1e-10)
    handle.remove()
    produced: list[torch.Tensor] = []
    handle = layers[0].register_forward_hook(lambda module, args, output: produced.append(output.clone()))
    with torch.no_grad():
        pruned(**CALIBRATION[0])
    handle.remove()
    assert all(torch.equal(inputs, produced[0]) for inputs in seen) and len(seen) >= 2

    again = hfprune.reconstruct(pruned, dense, CALIBRATION[:1], target="block", damping=1e-10)
    for block in again.blocks:  # each layer is already the least-squares fit for the inputs it now sees
        assert block.error_after == pytest.approx(block.error_before, rel=1e-6, abs=1e-9)


def test_dropped_layers_are_skipped_and_the_result_round_trips(tmp_path: Path):
    dense = tiny_model("llama")
    pruned = _pruned(dense)
    hfprune.drop_layers(pruned, [1])
    report = hfprune.reconstruct(pruned, dense, CALIBRATION, method="scales", target="block", max_batches=2)
    assert [b.layer for b in report.blocks] == [0, 0, 2]  # original ids; layer 1 is gone, layer 2's attention whole
    assert report.tokens == sum(int(b["attention_mask"].sum()) for b in CALIBRATION[:2])
    _assert_round_trips(pruned, tmp_path)
    assert json.loads(json.dumps(report.to_dict()))["method"] == "scales"


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_the_stream_target_makes_up_for_a_dropped_layer_that_block_targets_cannot(family: str):
    """Fitted to the dense model's own residual stream, the layer after a dropped one takes over part of its work:
    the final hidden state's error on held-out inputs falls far more than with per-block targets (measured:
    BERT 0.019 -> 0.0019 against 0.0193, Llama 0.758 -> 0.374 against 0.734)."""
    dense = tiny_model(family)
    errors = {}
    for target in ("block", "stream"):
        pruned = _pruned(dense)
        hfprune.drop_layers(pruned, [1])
        before = _hidden_error(pruned, dense, HELD_OUT)
        report = hfprune.reconstruct(pruned, dense, CALIBRATION, target=target)
        errors[target] = _hidden_error(pruned, dense, HELD_OUT)
        assert report.target == target
    # "stream" also refits layer 2's unpruned attention: it is where the dropped layer's error can be made up
    assert [(b.layer, b.block) for b in report.blocks] == [(0, "attention"), (0, "mlp"), (2, "attention"), (2, "mlp")]
    assert errors["stream"] < 0.6 * min(errors["block"], before), errors


def test_too_few_calibration_tokens_for_the_widest_projection_are_warned_about(caplog):
    dense = tiny_model("llama")  # its widest projection has 32 inputs: 8 x 8 x 16 tokens are enough, 2 x 4 are not
    with caplog.at_level("WARNING", logger="hfprune.reconstruction.sequential"):
        hfprune.reconstruct(_pruned(dense), dense, CALIBRATION)
    assert not caplog.records
    with caplog.at_level("WARNING", logger="hfprune.reconstruction.sequential"):
        hfprune.reconstruct(_pruned(dense), dense, [tiny_inputs(2, 4, seed=0)])
    assert len(caplog.records) == 1 and "fewer than 4 per input of the widest refitted projection (32)" in caplog.text


def test_the_stream_target_leaves_a_model_equal_to_the_dense_one_unchanged():
    dense = tiny_model("llama")
    same = copy.deepcopy(dense)
    report = hfprune.reconstruct(same, dense, CALIBRATION, target="stream", damping=1e-10)
    assert len(report.blocks) == 6 and all(block.error_before < 1e-8 for block in report.blocks)
    for (name, parameter), reference in zip(same.named_parameters(), dense.parameters()):
        torch.testing.assert_close(parameter, reference, atol=1e-5, rtol=0, msg=name)


def test_what_cannot_be_reconstructed_is_refused_in_one_line():
    bert = tiny_model("bert")
    cases = [
        (tiny_model("gpt2"), tiny_model("gpt2"), {}, "reconstruction supports"),
        (_pruned(bert), bert, {"method": "obs"}, "unknown reconstruction method"),
        (_pruned(bert), bert, {"damping": -1.0}, "damping"),
        (_pruned(bert), bert, {"target": "logits"}, "unknown reconstruction target"),
        (_pruned(bert), tiny_model("roberta"), {}, "the dense model is a roberta"),
    ]
    widened = _pruned(bert)
    hfprune.prune_hidden(widened, [0, 1])
    cases.append((widened, bert, {}, "width-pruned"))
    thinner = copy.deepcopy(bert)
    hfprune.drop_layers(thinner, [0])
    cases.append((_pruned(bert), thinner, {}, "lacks layers"))
    for pruned, dense, kwargs, message in cases:
        with pytest.raises(PruningError, match=message) as error:
            hfprune.reconstruct(pruned, dense, CALIBRATION, **kwargs)
        assert "\n" not in str(error.value)


def test_a_job_with_reconstruction_and_no_training_calibrates_on_train_only(tmp_path: Path, monkeypatch):
    """`reconstruct=True, recovery_epochs=0`: nothing is trained, no dense control, the card says so, and every
    calibration example is a training example (the dev sentences carry a word train never has)."""
    write_tiny_bert(tmp_path / "clf", with_head=True)
    glue = write_sst2(tmp_path / "glue", n_train=64)
    dev = glue / "SST-2" / "dev.tsv"
    dev.write_text("sentence\tlabel\n" + "".join(f"'' the film '' {'good' if i % 2 else 'bad'} .\t{i % 2}\n" for i in range(24)))
    marker = VOCAB.index("''")
    seen: list[torch.Tensor] = []
    real = hfprune.training.trainer.reconstruct

    def spy(pruned, dense, dataloader, **kwargs):
        batches = list(dataloader)
        seen.extend(batch["input_ids"] for batch in batches)
        return real(pruned, dense, batches, **kwargs)

    monkeypatch.setattr(hfprune.training.trainer, "reconstruct", spy)
    result = prune_for_task(
        str(tmp_path / "clf"), "sst2", data_dir=glue, output_dir=tmp_path / "out", head_sparsity=0.5, ffn_sparsity=0.5,
        reconstruct=True, reconstruct_method="scales", recovery_epochs=0.0, allow_weak_baseline=True, batch_size=16,
        max_length=32, bench=False, score_num_examples=32,
    )  # fmt: skip
    assert sum(len(ids) for ids in seen) == 32 and not any((ids == marker).any() for ids in seen)
    assert result.dense_control is None and all(entry["train_steps"] == 0 for entry in result.pruning_history)
    assert result.settings["reconstruct"] is True and result.timings["reconstruct"] > 0
    (report,) = result.reconstruction
    assert result.settings["reconstruct_method"] == report["method"] == "scales" and report["target"] == "stream"
    assert report["mean_error_after"] < report["mean_error_before"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "no dense control was trained: the results compare with the dense model as given" in card
    assert "layer-wise reconstruction" in card and "reconstruction_minutes" in card
    saved = json.loads((tmp_path / "out" / "hfprune_results.json").read_text())
    assert saved["reconstruction"][0]["blocks"] and "reconstruct" in saved["timings_s"]


def test_the_trainer_reconstructs_without_distillation_and_the_default_job_does_not(tmp_path: Path):
    from conftest import tiny_pruning_args

    from hfprune.training.trainer import PruningTrainer

    dense = tiny_model("bert")
    args = tiny_pruning_args(tmp_path, target_ffn_sparsity=0.5, pruning_method="magnitude", recovery_epochs=0.0, reconstruct=True)
    assert args.card_settings()["reconstruct"] is True and not args.distills
    examples = [{"input_ids": ids, "attention_mask": mask} for ids, mask in zip(HELD_OUT["input_ids"], HELD_OUT["attention_mask"])]
    trainer = PruningTrainer(model=dense, args=args, train_dataset=examples)
    trainer.train()
    assert trainer.teacher_model is not None and len(trainer.reconstruction_reports) == 1
    plain = tiny_pruning_args(tmp_path, target_ffn_sparsity=0.5, pruning_method="magnitude", recovery_epochs=0.0)
    trainer = PruningTrainer(model=tiny_model("bert"), args=plain)
    trainer.train()
    assert trainer.teacher_model is None and trainer.reconstruction_reports == []


def test_the_cli_option_reaches_the_job(monkeypatch, tmp_path: Path):
    from typer.testing import CliRunner

    import hfprune.jobs.prune
    from cli.app import app

    calls = []

    def record(*args, **kwargs):
        calls.append(kwargs)
        raise PruningError("recorded")

    monkeypatch.setattr(hfprune.jobs.prune, "prune_for_task", record)
    command = ["prune", "model", "--task", "sst2", "--epochs", "0", "--reconstruct", "-o", str(tmp_path / "out"), "-q"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2 and "recorded" in result.output
    assert calls[0]["reconstruct"] is True and calls[0]["recovery_epochs"] == 0
    assert calls[0]["reconstruct_method"] == "least_squares"
    CliRunner().invoke(app, [*command[:-1], "--reconstruct-method", "scales", "-q"])
    assert calls[1]["reconstruct_method"] == "scales"
    help_text = CliRunner().invoke(app, ["prune", "--help"], terminal_width=200).output
    assert "--reconstruct" in help_text and "--reconstruct-method" in help_text


def test_a_bad_reconstruction_method_is_refused_before_any_weights_load(tmp_path: Path):
    write_tiny_bert(tmp_path / "clf", with_head=True)
    glue = write_sst2(tmp_path / "glue", n_train=16)
    with pytest.raises(hfprune.PipelineInputError, match="reconstruct_method must be one of") as error:
        prune_for_task(
            str(tmp_path / "clf"), "sst2", data_dir=glue, output_dir=tmp_path / "out", head_sparsity=0.5,
            reconstruct=True, reconstruct_method="obs", recovery_epochs=0.0,
        )  # fmt: skip
    assert "\n" not in str(error.value) and not (tmp_path / "out").exists()
