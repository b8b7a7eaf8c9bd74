"""A parameter budget without a sparsity mix: allocated across layers, heads, FFN neurons and (optionally) width."""

import pytest
import torch
from conftest import FAMILIES, VOCAB, tiny_model, tiny_pruning_args
from transformers import default_data_collator

from hfprune import drop_layers, prune_ffn, prune_heads, prune_hidden
from hfprune.engine.record import get_record, gqa_group_size
from hfprune.errors import PruningError, TargetOutOfReachError
from hfprune.planning.param_target import WIDTH_FRACTIONS, parameter_cost_model
from hfprune.pruning_config import PruningArguments
from hfprune.training.trainer import PruningTrainer


def num_parameters(model) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_the_parameter_cost_model_counts_any_pruned_structure_exactly(family):
    model = tiny_model(family)
    if family != "xlnet":  # XLNet ties its head size to the width: no width pruning to measure at
        prune_hidden(model, [0, 5, 9, 30])
    costs = parameter_cost_model(model)
    assert costs.dense_seconds == num_parameters(model)
    group = gqa_group_size(get_record(model))
    prune_heads(model, {0: list(range(group)), 2: list(range(4))})  # layer 2 loses its whole attention block
    prune_ffn(model, {1: [0, 3, 7], 2: list(range(24))})
    drop_layers(model, [1])
    assert costs.predict(model) == pytest.approx(num_parameters(model), abs=0.5)


def lm_data(num_examples: int, seed: int = 0) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (num_examples, 8), generator=generator)
    return [{"input_ids": row, "attention_mask": torch.ones(8, dtype=torch.long), "labels": row.clone()} for row in ids]


def budget_trainer(tmp_path, family: str, **overrides):
    args = tiny_pruning_args(tmp_path / "out", **{"target_param_budget": 0.6, "recovery_steps": 1, **overrides})
    data = lm_data(16)
    if family == "bert":
        data = [{**row, "labels": int(row["input_ids"][0] % 3)} for row in data]
    model = tiny_model(family)
    return PruningTrainer(model=model, args=args, train_dataset=data, data_collator=default_data_collator), model


def test_a_budget_alone_is_allocated_and_met_exactly_to_the_smallest_unit(tmp_path):
    trainer, model = budget_trainer(tmp_path, "bert", pruning_schedule="iterative", pruning_steps=2)
    dense = num_parameters(model)
    trainer.train()
    report, kept = trainer.param_report, num_parameters(trainer.model)
    assert report["dense_parameters"] == dense and report["parameters"] == kept
    # at most the budget, and short of it by less than the biggest unit (a layer) could remove
    layer = sum(p.numel() for p in tiny_model("bert").bert.encoder.layer[0].parameters())
    assert 0.6 * dense - layer < kept <= 0.6 * dense
    steps = report["steps"]
    assert [step["target_parameters"] for step in steps] == [round(0.8 * dense), round(0.6 * dense)]
    assert [step["hidden_size"] for step in steps] == [32, 32]  # no width pruning unless asked
    assert set(trainer.pruning_scores[1]) == {"heads", "ffn", "layers"}
    assert all(step["calibration"] is not None for step in steps)  # the kinds were put on one scale
    assert trainer.pruning_history[-1]["num_parameters"] == kept


def test_prune_width_keeps_the_width_whose_whole_plan_loses_least(tmp_path, monkeypatch):
    from hfprune.planning import param_target

    losses = []
    real = param_target._masked_loss

    def recording(model, plan, dataloader):
        loss = real(model, plan, dataloader)
        losses.append((len(get_record(model).get("kept_hidden") or range(32)), loss))
        return loss

    monkeypatch.setattr(param_target, "_masked_loss", recording)
    trainer, model = budget_trainer(tmp_path, "llama", prune_width=True, target_param_budget=0.7)
    dense = num_parameters(model)
    trainer.train()
    step = trainer.param_report["steps"][0]
    tried = [candidate["hidden_size"] for candidate in step["candidates"]]
    assert tried == [hidden for hidden, _ in losses]
    assert tried[0] == 32 and len(tried) >= 2  # the full width and at least one cut compete
    assert set(tried) <= {round(32 * fraction) for fraction in WIDTH_FRACTIONS}
    best = min(losses, key=lambda pair: pair[1])
    assert step["hidden_size"] == best[0] == trainer.model.config.hidden_size
    assert num_parameters(trainer.model) <= 0.7 * dense
    assert "hidden" in trainer.pruning_scores[1]


def test_a_width_pruned_allocation_reloads_identically(tmp_path, monkeypatch):
    from transformers import LlamaForCausalLM

    from hfprune import from_pretrained
    from hfprune.planning import param_target

    monkeypatch.setattr(param_target, "WIDTH_FRACTIONS", (0.75,))  # the only candidate: the width must go
    trainer, _ = budget_trainer(tmp_path, "llama", prune_width=True, target_param_budget=0.5)
    trainer.train()
    model = trainer.model.eval()
    model.save_pretrained(tmp_path / "saved")
    reloaded = from_pretrained(tmp_path / "saved", model_class=LlamaForCausalLM, attn_implementation="eager").eval()
    ids = torch.randint(3, VOCAB, (2, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reloaded(input_ids=ids).logits)
    assert reloaded.config.hidden_size == trainer.param_report["hidden_size"] == 24


def test_an_unreachable_budget_fails_before_anything_is_removed(tmp_path):
    trainer, model = budget_trainer(tmp_path, "bert", target_param_budget=0.05)  # the embeddings alone are more
    with pytest.raises(TargetOutOfReachError, match="target_param_budget=0.05 is out of reach"):
        trainer.train()
    assert get_record(trainer.model)["kept_layers"] == [0, 1, 2]


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"prune_width": True}, "prune_width needs a target_param_budget"),
        ({"prune_width": True, "target_param_budget": 0.5, "target_head_sparsity": 0.5}, "without sparsity targets"),
        ({"prune_width": True, "target_param_budget": 0.5, "pruning_method": "random"}, "got method 'random'"),
    ],
)
def test_prune_width_without_an_allocated_budget_is_refused(tmp_path, kwargs, fragment):
    with pytest.raises(PruningError, match=fragment):
        PruningArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, **kwargs)
