"""PruningArguments / PruningTrainer: targets, methods, the optimizer trap, distillation, L0 gates, logging,
kill-and-resume in real processes, and two-process runs under torchrun and accelerate launch."""

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
import torch
from conftest import FAMILIES, VOCAB, tiny_inputs, tiny_model, tiny_pruning_args
from torch.utils.data import DataLoader
from transformers import HfArgumentParser, TrainerCallback, TrainingArguments, default_data_collator

import hfprune
from hfprune.engine.record import get_record, kept_ffn
from hfprune.engine.restore import restore_structure
from hfprune.errors import PruningError
from hfprune.planning.plan import ffn_to_prune, final_targets, heads_to_prune
from hfprune.pruning_config import PruningArguments
from hfprune.scoring.common import normalize_per_layer
from hfprune.scoring.loss import importance_scores
from hfprune.training.trainer import PruningTrainer

SCRIPTS = Path(__file__).parent / "scripts"
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}


def data(num_examples: int, seed: int = 0, length: int = 8) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (num_examples, length), generator=generator)
    return [
        {"input_ids": ids, "attention_mask": torch.ones(length, dtype=torch.long), "labels": int(ids[0] % 3)}
        for ids in input_ids
    ]


def lm_data(num_examples: int, seed: int = 0, length: int = 8) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (num_examples, length), generator=generator)
    mask = torch.ones(length, dtype=torch.long)
    return [{"input_ids": ids, "attention_mask": mask, "labels": ids} for ids in input_ids]


def make_args(tmp_path, **kwargs) -> PruningArguments:
    return tiny_pruning_args(tmp_path / "out", **{"recovery_steps": 0, "recovery_epochs": 0.0, **kwargs})


def make_trainer(model, args, train=None, **kwargs) -> PruningTrainer:
    return PruningTrainer(
        model=model,
        args=args,
        train_dataset=data(32) if train is None else train,
        data_collator=default_data_collator,
        **kwargs,
    )


class LogCapture(TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


# ---- arguments ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(target_head_sparsity=1.0), "target_head_sparsity must be a number in [0, 1)"),
        (dict(target_ffn_sparsity=-0.1), "target_ffn_sparsity"),
        (dict(target_layer_sparsity="0.5"), "target_layer_sparsity"),
        (dict(target_param_budget=0.0), "target_param_budget"),
        (dict(target_param_budget=1.5), "target_param_budget"),
        (dict(pruning_method="obd"), "pruning_method must be one of"),
        (dict(pruning_schedule="cyclic"), "pruning_schedule must be one of"),
        (dict(layer_strategy="middle"), "layer_strategy must be one of"),
        (dict(pruning_steps=3), "needs pruning_schedule='iterative'"),
        (dict(pruning_schedule="iterative", pruning_steps=0), "pruning_steps must be an integer >= 1"),
        (dict(pruning_method="l0", pruning_schedule="iterative", pruning_steps=2), "use pruning_schedule='one_shot'"),
        (dict(pruning_method="l0", target_ffn_sparsity=0.2), "leave the FFN and layer targets unset"),
        (dict(pruning_method="l0", target_head_sparsity=0.2, target_param_budget=0.5), "not both"),
        (dict(pruning_method="l0", l0_init_keep=1.0), "l0_init_keep"),
        (dict(distillation_alpha=1.5), "distillation_alpha"),
        (dict(distillation_temperature=0), "distillation_temperature"),
        (dict(distillation_layer_weight=-1), "distillation_layer_weight"),
        (dict(distillation_layer_weight=1, gradient_checkpointing=True), "gradient checkpointing"),
        (dict(recovery_steps=-1), "recovery_steps"),
        (dict(score_num_examples=0), "score_num_examples"),
        (dict(round_to_multiple=0), "round_to_multiple"),
        (dict(max_steps=10), "set recovery_steps"),
        (dict(num_train_epochs=2), "set recovery_epochs"),
    ],
)
def test_bad_arguments_raise_one_line_pruning_error(tmp_path, kwargs, fragment):
    with pytest.raises(PruningError) as error:
        PruningArguments(output_dir=str(tmp_path), report_to="none", **kwargs)
    assert isinstance(error.value, ValueError)
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_arguments_parse_from_the_command_line(tmp_path):
    parser = HfArgumentParser(PruningArguments)
    (args,) = parser.parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--pruning_method", "taylor", "--pruning_schedule", "iterative",
         "--pruning_steps", "4", "--target_head_sparsity", "0.3", "--target_param_budget", "0.8",
         "--per_layer_ranking", "--layer_strategy", "contribution", "--report_to", "none"]
    )
    assert (args.pruning_method, args.pruning_steps, args.num_pruning_steps) == ("taylor", 4, 4)
    assert (args.target_head_sparsity, args.target_param_budget, args.per_layer_ranking) == (0.3, 0.8, True)
    with pytest.raises(SystemExit):  # argparse knows the choices
        parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--pruning_method", "obd"])


def test_pruning_config_is_the_arguments_class_and_parses(tmp_path):
    from hfprune.pruning_config import PruningConfig

    assert PruningConfig is PruningArguments is hfprune.PruningConfig is hfprune.PruningArguments
    (args,) = HfArgumentParser(PruningConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--pruning_method", "magnitude", "--target_ffn_sparsity", "0.5",
         "--report_to", "none"]
    )
    assert isinstance(args, PruningConfig)
    assert (args.pruning_method, args.target_ffn_sparsity, args.num_pruning_steps) == ("magnitude", 0.5, 1)


def test_trainer_rejects_what_cannot_follow_surgery(tmp_path):
    model = tiny_model("bert")
    with pytest.raises(PruningError, match="needs PruningArguments"):
        PruningTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to="none"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(PruningError, match="optimizer_cls_and_kwargs"):
        PruningTrainer(model=model, args=make_args(tmp_path), optimizers=(optimizer, None))


# ---- pruning to targets ------------------------------------------------------------------------------
def test_one_shot_prunes_heads_ffn_and_layers_and_logs_every_step(tmp_path):
    model, capture = tiny_model("bert"), LogCapture()
    original_params = sum(p.numel() for p in model.parameters())
    args = make_args(
        tmp_path, target_head_sparsity=0.5, target_ffn_sparsity=0.5, target_layer_sparsity=0.34,
        recovery_steps=2, layer_strategy="top",
    )
    # a datasets.Dataset with a text column, as a tokenized GLUE split is: unused columns are dropped for scoring too
    train = datasets.Dataset.from_list(
        [{"input_ids": row["input_ids"].tolist(), "label": row["labels"], "sentence": "text"} for row in data(32)]
    )
    trainer = make_trainer(model, args, train=train, eval_dataset=data(16, seed=1), callbacks=[capture])
    output = trainer.train()

    record = get_record(model)
    assert record["kept_layers"] == [0, 1]  # "top": the last layer goes
    assert sum(map(len, record["kept_heads"])) == 6  # 12 heads, half gone (the dropped layer's 4 count)
    assert hfprune.head_sparsity(model) == 0.5
    assert sum(len(kept_ffn(record, position)) for position in range(2)) == 36  # 72 neurons, half gone
    history = trainer.pruning_history
    assert [entry["step"] for entry in history] == [0, 1]
    assert history[0]["num_parameters"] == original_params
    assert history[1]["num_parameters"] == sum(p.numel() for p in model.parameters()) < original_params
    assert (history[1]["head_sparsity"], history[1]["ffn_sparsity"]) == (0.5, 0.5)
    assert history[1]["layer_sparsity"] == pytest.approx(1 / 3)
    assert history[1]["train_steps"] == 2 == output.global_step
    assert "eval_loss" in history[0] and "eval_loss" in history[1]
    # every history entry went through Trainer.log (so report_to integrations see it), step -> pruning_step
    logged = [log for log in capture.logs if "pruning_step" in log]
    assert [log["pruning_step"] for log in logged] == [0, 1]
    for log, entry in zip(logged, history):
        assert {k: v for k, v in log.items() if k not in ("pruning_step", "epoch")} == {
            k: v for k, v in entry.items() if k != "step"
        }
    # the recovery's own training logs are there too, and trainer.state keeps the whole run's history
    assert any("loss" in log for log in capture.logs)
    assert [log["pruning_step"] for log in trainer.state.log_history if "pruning_step" in log] == [0, 1]

    # the pruned model saves and reloads like any other
    trainer.save_model(str(tmp_path / "final"))
    reloaded = hfprune.from_pretrained(str(tmp_path / "final")).eval()
    inputs = tiny_inputs()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits)


def test_iterative_schedule_reaches_the_targets_in_equal_steps(tmp_path):
    model = tiny_model("bert")
    args = make_args(
        tmp_path, pruning_schedule="iterative", pruning_steps=3, target_head_sparsity=0.5,
        target_ffn_sparsity=0.5,
    )
    trainer = make_trainer(model, args)
    trainer.train()
    history = trainer.pruning_history
    assert [entry["head_sparsity"] for entry in history] == [0.0, 1 / 6, 1 / 3, 0.5]  # 2 of 12 heads per step
    assert [entry["ffn_sparsity"] for entry in history] == pytest.approx([0.0, 1 / 6, 1 / 3, 0.5])
    assert [entry["num_parameters"] for entry in history] == sorted(
        (entry["num_parameters"] for entry in history), reverse=True
    )


def test_per_layer_ranking_and_round_to_multiple_give_even_hardware_friendly_shapes(tmp_path):
    model = tiny_model("bert")
    args = make_args(
        tmp_path, target_head_sparsity=0.5, target_ffn_sparsity=0.5, per_layer_ranking=True, round_to_multiple=8
    )
    make_trainer(model, args).train()
    assert [len(heads) for heads in get_record(model)["kept_heads"]] == [2, 2, 2]
    # 24 neurons, 12 kept per layer, rounded to a multiple of 8: 8 and 16 tie, and ties keep more
    assert [len(kept) for kept in get_record(model)["kept_ffn"]] == [16, 16, 16]


def _expected_plan(method, model, dataset, batch_size, seed, heads, ffn):
    """What the trainer should plan, computed directly with hfprune.scoring.loss / hfprune.planning.plan on a copy."""
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=default_data_collator)
    if method in ("importance", "taylor", "fisher"):
        per_example = method != "importance"
        scores = importance_scores(model, loader, ("heads", "ffn"), normalize=False, per_example=per_example, squared=method == "fisher")
        if method == "importance":
            scores = {kind: normalize_per_layer(value) for kind, value in scores.items()}
    elif method == "magnitude":
        scores = {"heads": hfprune.magnitude_head_scores(model), "ffn": hfprune.magnitude_ffn_scores(model)}
    else:
        present = hfprune.magnitude_ffn_scores(model)
        noise = torch.rand(present.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
        scores = {"heads": hfprune.random_head_scores(model, seed=seed + 1), "ffn": noise}
    return heads_to_prune(scores["heads"], count=heads), ffn_to_prune(scores["ffn"], count=ffn, per_layer=False)


@pytest.mark.parametrize("method", ["importance", "taylor", "fisher", "magnitude", "random"])
def test_each_method_prunes_what_its_scores_rank_lowest(tmp_path, method):
    model, dataset = tiny_model("bert"), data(12)
    reference = copy.deepcopy(model)
    args = make_args(
        tmp_path, pruning_method=method, target_head_sparsity=0.5, target_ffn_sparsity=0.25,
        score_num_examples=12, per_device_eval_batch_size=4, seed=5,
    )
    make_trainer(model, args, train=dataset).train()
    head_plan, ffn_plan = _expected_plan(method, reference, dataset, 4, 5, heads=6, ffn=18)
    expected = hfprune.prune_ffn(hfprune.prune_heads(reference, head_plan), ffn_plan)
    assert get_record(model)["kept_heads"] == get_record(expected)["kept_heads"]
    assert get_record(model)["kept_ffn"] == get_record(expected)["kept_ffn"]


def test_contribution_layer_strategy_drops_the_most_redundant_layer(tmp_path):
    model, dataset = tiny_model("bert"), data(12)
    loader = DataLoader(dataset, batch_size=8, collate_fn=default_data_collator)
    redundant = int(torch.argmax(hfprune.layer_cosine_scores(model, loader)))
    args = make_args(tmp_path, target_layer_sparsity=0.34, layer_strategy="contribution", score_num_examples=12)
    make_trainer(model, args, train=dataset).train()
    assert get_record(model)["kept_layers"] == [layer for layer in range(3) if layer != redundant]


def test_grouped_query_attention_loses_whole_kv_groups(tmp_path):
    model = tiny_model("llama")
    args = make_args(tmp_path, target_head_sparsity=0.5, per_device_eval_batch_size=4)
    make_trainer(model, args, train=lm_data(8)).train()
    kept = get_record(model)["kept_heads"]
    assert sum(map(len, kept)) == 6
    assert all(heads in ([0, 1], [2, 3]) for heads in kept)  # one whole KV group per layer
    model(**tiny_inputs())  # runs


def test_param_budget_scales_the_sparsities_to_meet_it(tmp_path):
    model = tiny_model("bert")
    original = sum(p.numel() for p in model.parameters())
    args = make_args(tmp_path, target_param_budget=0.85, pruning_method="magnitude")
    targets = final_targets(args, model)
    assert targets["heads"] == pytest.approx(targets["ffn"]) and targets["layers"] == 0  # default mix: equal
    trainer = make_trainer(model, args)
    trainer.train()
    kept = trainer.pruning_history[-1]["num_parameters"] / original
    assert kept == pytest.approx(0.85, abs=0.02)  # whole heads and neurons: close, not exact
    # the sparsities given only set the mix: heads twice as sparse as the FFN
    args = make_args(tmp_path, target_param_budget=0.85, target_head_sparsity=0.2, target_ffn_sparsity=0.1)
    targets = final_targets(args, tiny_model("bert"))
    assert targets["heads"] == pytest.approx(2 * targets["ffn"]) and targets["heads"] > 0.2
    with pytest.raises(PruningError, match="out of reach"):  # embeddings and pooler alone are 45%
        final_targets(make_args(tmp_path, target_param_budget=0.3), tiny_model("bert"))


# ---- the optimizer trap ------------------------------------------------------------------------------
class OptimizerProbe(TrainerCallback):
    """At the start of each recovery: which tensors the optimizer holds; at the end: which of them changed."""

    def __init__(self):
        self.phases = []

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        optimizer_params = [p for group in optimizer.param_groups for p in group["params"]]
        self.phases.append({
            "same": {id(p) for p in optimizer_params} == {id(p) for p in model.parameters()}
            and len(optimizer_params) == len(list(model.parameters())),
            "ids": {id(p) for p in model.parameters()},
            "before": {name: p.detach().clone() for name, p in model.named_parameters()},
        })

    def on_train_end(self, args, state, control, model=None, **kwargs):
        before = self.phases[-1]["before"]
        self.phases[-1]["unchanged"] = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]


def test_optimizer_is_rebuilt_on_the_pruned_parameters_and_trains_them(tmp_path):
    model, probe = tiny_model("bert"), OptimizerProbe()
    args = make_args(
        tmp_path, pruning_schedule="iterative", pruning_steps=2, target_head_sparsity=0.5,
        target_ffn_sparsity=0.5, recovery_steps=2, learning_rate=1e-2,
    )
    make_trainer(model, args, callbacks=[probe]).train()
    assert len(probe.phases) == 2
    # surgery replaced tensors between the two recoveries: a reused optimizer would hold the old ones
    assert probe.phases[0]["ids"] != probe.phases[1]["ids"]
    for phase in probe.phases:
        assert phase["same"]  # exactly the model's current parameters, nothing stale
        assert phase["unchanged"] == []  # and every one of them moved during recovery
    assert {id(p) for p in model.parameters()} == probe.phases[1]["ids"]


# ---- distillation ------------------------------------------------------------------------------------
def test_distillation_loss_mixes_task_loss_and_tempered_kl(tmp_path):
    student, teacher = tiny_model("bert", seed=0), tiny_model("bert", seed=1)
    args = make_args(tmp_path, distillation_alpha=0.4, distillation_temperature=3.0)
    trainer = make_trainer(student, args, teacher_model=teacher)
    batch = default_data_collator(data(4))
    student.train()
    loss, outputs = trainer.compute_loss(student, batch, return_outputs=True)
    with torch.no_grad():
        teacher_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    kl = torch.nn.functional.kl_div(
        torch.log_softmax(outputs.logits / 3.0, -1), torch.log_softmax(teacher_logits / 3.0, -1),
        log_target=True, reduction="batchmean",
    )
    torch.testing.assert_close(loss, 0.6 * outputs.loss + 0.4 * 9.0 * kl)
    student.eval()  # evaluation reports the task loss alone
    torch.testing.assert_close(trainer.compute_loss(student, batch), student(**batch).loss)


def test_default_teacher_is_the_unpruned_model(tmp_path):
    model = tiny_model("bert")
    original = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = make_args(tmp_path, target_head_sparsity=0.5, distillation_alpha=0.5, recovery_steps=2, learning_rate=1e-2)
    trainer = make_trainer(model, args)
    trainer.train()
    teacher = trainer.teacher_model
    assert teacher is not model and hfprune.head_sparsity(teacher) == 0.0
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    for name, parameter in teacher.named_parameters():
        assert torch.equal(parameter, original[name])  # never trained


def layer_distilled_pair():
    """A teacher and a student pruned from it: layer 1 of 3 dropped and 24 of 32 residual channels kept."""
    teacher = tiny_model("bert", seed=0)
    student = copy.deepcopy(teacher)
    hfprune.drop_layers(student, [1])
    removed = torch.randperm(32, generator=torch.Generator().manual_seed(3))[:8].tolist()
    hfprune.prune_hidden(student, removed)
    return teacher, student, [channel for channel in range(32) if channel not in removed]


def test_layer_pairs_follow_the_original_layers_and_channels():
    from hfprune.training.distill import layer_pairs

    teacher, student, channels = layer_distilled_pair()
    pairs, index = layer_pairs(student, teacher)
    assert pairs == [(0, 0), (1, 2)]  # student layer 1 is original layer 2
    assert index.tolist() == channels  # the teacher is unpruned: positions are the original channel ids
    # a teacher pruned too: positions in ITS residual stream, and only the layers it still has
    half_pruned = copy.deepcopy(teacher)
    hfprune.prune_hidden(half_pruned, [0])
    hfprune.drop_layers(half_pruned, [0])
    hfprune.prune_hidden(student, [0])
    pairs, index = layer_pairs(student, half_pruned)
    assert pairs == [(1, 1)]
    assert index.tolist() == [channel - 1 for channel in channels if channel != 0]
    with pytest.raises(PruningError, match="channels the teacher no longer has"):
        layer_pairs(half_pruned, student)
    with pytest.raises(PruningError, match="original shape"):
        layer_pairs(student, tiny_model("llama"))


def test_layer_distillation_adds_the_relative_error_of_each_kept_layer(tmp_path):
    """loss = (1 - alpha) task + alpha KL + w * mean over kept layers of ||s - t[kept channels]||^2 / ||t||^2 over
    real tokens, checked against hidden states computed independently (`output_hidden_states`)."""
    teacher, student, channels = layer_distilled_pair()
    args = make_args(tmp_path, distillation_alpha=0.4, distillation_temperature=2.0, distillation_layer_weight=3.0)
    trainer = make_trainer(student, args, teacher_model=teacher)
    batch = default_data_collator(data(4))
    batch["attention_mask"][0, -3:] = 0  # padding is left out of the layer term
    student.train()
    torch.manual_seed(0)
    loss, outputs = trainer.compute_loss(student, batch, return_outputs=True)

    torch.manual_seed(0)  # the same dropout masks as in compute_loss
    student_states = student(**batch, output_hidden_states=True).hidden_states
    with torch.no_grad():
        teacher_out = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    mask = batch["attention_mask"].float()
    terms = []
    for student_layer, teacher_layer in [(0, 0), (1, 2)]:  # hidden_states[k + 1] is layer k's output
        s, t = student_states[student_layer + 1], teacher_out.hidden_states[teacher_layer + 1][..., channels]
        terms.append(((s - t).pow(2).sum(-1) * mask).sum() / (t.pow(2).sum(-1) * mask).sum())
    kl = torch.nn.functional.kl_div(
        torch.log_softmax(outputs.logits / 2.0, -1), torch.log_softmax(teacher_out.logits / 2.0, -1),
        log_target=True, reduction="batchmean",
    )
    expected = 0.6 * outputs.loss + 0.4 * 4.0 * kl + 3.0 * torch.stack(terms).mean()
    torch.testing.assert_close(loss, expected)
    assert torch.stack(terms).mean() > 1e-3  # the term is really there
    loss.backward()  # and it trains the student
    assert all(p.grad is not None for p in student.bert.encoder.layer.parameters() if p.requires_grad)


def layer_error(student, teacher, batch) -> torch.Tensor:
    """The layer-wise distillation term of `student` against `teacher` on `batch`, in eval mode."""
    from hfprune.training.distill import layer_distillation_loss, layer_outputs, layer_pairs

    with torch.no_grad(), layer_outputs(student) as student_states, layer_outputs(teacher) as teacher_states:
        student.eval()(**batch), teacher.eval()(**batch)
    pairs, channels = layer_pairs(student, teacher)
    return layer_distillation_loss(student_states, teacher_states, pairs, channels, batch["attention_mask"])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_layer_outputs_are_read_in_every_family(family):
    """Each family's layers return their hidden states differently (a tensor, a tuple); the term reads them all:
    zero for an exact copy, above zero once a head is gone."""
    teacher = tiny_model(family)
    student = copy.deepcopy(teacher)
    inputs = tiny_inputs()
    assert layer_error(student, teacher, inputs) == 0
    hfprune.prune_heads(student, {1: [0, 1]})  # a whole KV group in the grouped-query families
    assert layer_error(student, teacher, inputs) > 1e-5


def test_layer_distillation_alone_makes_its_own_teacher_and_recovers(tmp_path):
    """Without the logit term, `distillation_layer_weight` still copies the unpruned model as the teacher, and
    recovery brings the kept layers' outputs closer to the teacher's than the same pruning without recovery."""
    model = tiny_model("bert")
    untrained = copy.deepcopy(model)
    args = make_args(
        tmp_path, target_layer_sparsity=1 / 3, layer_strategy="bottom", distillation_layer_weight=10.0, recovery_steps=8, learning_rate=3e-3,
        per_device_train_batch_size=16,
    )  # fmt: skip
    trainer = make_trainer(model, args, train=data(64))
    trainer.train()
    teacher = trainer.teacher_model
    assert teacher is not model and len(teacher.bert.encoder.layer) == 3 and len(model.bert.encoder.layer) == 2
    hfprune.drop_layers(untrained, [layer for layer in range(3) if layer not in get_record(model)["kept_layers"]])
    batch = default_data_collator(data(16, seed=5))
    assert layer_error(model, teacher, batch) < 0.5 * layer_error(untrained, teacher, batch)


# ---- L0 gates ----------------------------------------------------------------------------------------
class GateProbe(TrainerCallback):
    def __init__(self):
        self.extra = []

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        model_ids = {id(p) for p in model.parameters()}
        held = [p for group in optimizer.param_groups for p in group["params"]]
        self.extra.append([tuple(p.shape) for p in held if id(p) not in model_ids])


def _l0_run(tmp_path, l0_lambda):
    model, probe, capture = tiny_model("bert"), GateProbe(), LogCapture()
    args = make_args(
        tmp_path, pruning_method="l0", l0_lambda=l0_lambda, l0_steps=12, l0_learning_rate=0.1, l0_init_keep=0.87,
        recovery_steps=1, seed=2,
    )
    trainer = make_trainer(model, args, callbacks=[probe, capture])
    trainer.train()
    return model, trainer, probe, capture


def test_l0_gates_train_with_the_penalty_and_remove_closed_heads(tmp_path):
    runs = {l0_lambda: _l0_run(tmp_path / str(l0_lambda), l0_lambda) for l0_lambda in (0.0, 50.0)}
    for model, trainer, probe, capture in runs.values():
        # gate phase: log_alpha [layers, heads] trained alongside the model; recovery: the model alone
        assert probe.extra == [[(3, 4)], []]
        assert any("l0_expected_heads" in log for log in capture.logs)
        gates = trainer.l0_gate_values
        expected_kept = [[head for head in range(4) if gates[layer, head] > 0.5] for layer in range(3)]
        assert hfprune.get_record(model)["kept_heads"] == expected_kept  # exactly the open gates stay
        assert trainer.pruning_history[-1]["head_sparsity"] == int((gates <= 0.5).sum()) / 12
        model(**tiny_inputs())  # the pruned model runs
    weak, strong = (runs[l0_lambda][1] for l0_lambda in (0.0, 50.0))
    # without a penalty the task alone closes a few gates; a strong one closes more (here, with Adam, all)
    assert 0 < weak.pruning_history[-1]["head_sparsity"] < strong.pruning_history[-1]["head_sparsity"]
    assert strong.l0_gate_values.mean() < weak.l0_gate_values.mean()


def test_l0_run_resumes_from_a_gate_training_checkpoint(tmp_path):
    def run(**kwargs):
        args = make_args(
            tmp_path, pruning_method="l0", l0_lambda=0.0, l0_steps=4, l0_learning_rate=0.1, l0_init_keep=0.87,
            recovery_steps=2, save_strategy="steps", save_steps=2, seed=2,
        )
        trainer = make_trainer(tiny_model("bert"), args)
        trainer.train(**kwargs)
        return trainer

    straight = run()
    checkpoint = tmp_path / "out" / "pruning-step-1-l0" / "checkpoint-2"  # halfway through the gate training
    assert (checkpoint / "l0_gates.pt").is_file()
    resumed = run(resume_from_checkpoint=str(checkpoint))
    assert torch.equal(resumed.l0_gate_values, straight.l0_gate_values)
    assert get_record(resumed.model) == get_record(straight.model)
    for (name, a), (_, b) in zip(resumed.model.state_dict().items(), straight.model.state_dict().items()):
        assert torch.equal(a, b), name


# ---- checkpoints and resume --------------------------------------------------------------------------
def test_restore_structure_rebuilds_a_pruned_checkpoint_before_loading(tmp_path):
    for family in ("bert", "llama"):
        pruned = tiny_model(family)
        hfprune.prune_heads(pruned, {0: [0, 1], 2: [2, 3]})
        hfprune.prune_ffn(pruned, {1: range(0, 24, 3)})
        hfprune.drop_layers(pruned, [1] if family == "bert" else [])
        fresh = restore_structure(tiny_model(family, seed=3), get_record(pruned))
        assert get_record(fresh) == get_record(pruned)
        fresh.load_state_dict(pruned.state_dict())  # strict: every shape fits
        inputs = tiny_inputs()
        torch.testing.assert_close(fresh.eval()(**inputs).logits, pruned.eval()(**inputs).logits)
    with pytest.raises(PruningError, match="already lost"):
        restore_structure(pruned, get_record(tiny_model("llama")))


def test_resume_refuses_other_pruning_arguments(tmp_path):
    args = make_args(tmp_path, target_head_sparsity=0.5, recovery_steps=1, save_strategy="steps", save_steps=1)
    make_trainer(tiny_model("bert"), args).train()
    assert (tmp_path / "out" / "pruning-step-1" / "checkpoint-1" / "pruning_state.json").is_file()
    other = make_args(tmp_path, target_head_sparsity=0.25, recovery_steps=1, save_strategy="steps", save_steps=1)
    with pytest.raises(PruningError, match="target_head_sparsity"):
        make_trainer(tiny_model("bert"), other).train(resume_from_checkpoint=True)
    with pytest.raises(PruningError, match="no complete PruningTrainer checkpoint"):
        make_trainer(tiny_model("bert"), make_args(tmp_path / "empty")).train(resume_from_checkpoint=True)


def test_checkpoints_without_recovery_resume_and_rotate(tmp_path):
    args = make_args(
        tmp_path, pruning_schedule="iterative", pruning_steps=2, target_head_sparsity=0.5, save_strategy="steps",
        save_total_limit=1, pruning_method="magnitude",
    )
    model = tiny_model("bert")
    make_trainer(model, args).train()
    # no recovery: each step still checkpoints the pruned model; save_total_limit drops the earlier steps
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["pruning-step-2"]
    assert [p.name for p in (tmp_path / "out" / "pruning-step-2").iterdir()] == ["checkpoint-0"]
    fresh = tiny_model("bert", seed=9)  # other weights: the structure comes from the record, the weights load
    resumed = make_trainer(fresh, args)
    resumed.train(resume_from_checkpoint=True)
    assert get_record(fresh) == get_record(model)
    for (name, a), (_, b) in zip(fresh.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), name
    assert [entry["step"] for entry in resumed.pruning_history] == [0, 1, 2]


def _latest_checkpoint(run_dir: Path, step: int):
    done = sorted(
        run_dir.glob(f"pruning-step-{step}/checkpoint-*/trainer_state.json"),
        key=lambda path: int(path.parent.name.removeprefix("checkpoint-")),
    )
    return done[-1].parent if done else None


def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(tmp_path):
    script = str(SCRIPTS / "trainer_resume.py")
    run = lambda *extra: [sys.executable, script, *extra]  # noqa: E731
    straight = subprocess.Popen(run(str(tmp_path / "a"), str(tmp_path / "final-a")), env=SUBPROCESS_ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    victim = subprocess.Popen(run(str(tmp_path / "b"), str(tmp_path / "final-b"), "--slow"), env=SUBPROCESS_ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _latest_checkpoint(tmp_path / "b", 2) is None:  # a checkpoint of the SECOND pruning step
        assert victim.poll() is None, victim.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint of pruning step 2 appeared"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "final-b").exists()  # killed mid-run
    step = max(step for step in (2, 3) if _latest_checkpoint(tmp_path / "b", step) is not None)
    record = json.loads((_latest_checkpoint(tmp_path / "b", step) / "config.json").read_text())["hfprune"]
    assert sum(map(len, record["kept_heads"])) == 12 - 2 * step  # a pruned structure the resume must rebuild

    resumed = subprocess.run(run(str(tmp_path / "b"), str(tmp_path / "final-b"), "--resume"), env=SUBPROCESS_ENV,
                             capture_output=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    assert straight.wait(timeout=120) == 0, straight.stderr.read().decode()[-2000:]

    a = json.loads((tmp_path / "final-a" / "history.json").read_text())
    b = json.loads((tmp_path / "final-b" / "history.json").read_text())
    assert a["history"] == b["history"]  # sparsities, parameter counts, train and eval losses of every step
    assert a["state_hash"] == b["state_hash"]  # bit-identical weights
    config_a = json.loads((tmp_path / "final-a" / "config.json").read_text())
    config_b = json.loads((tmp_path / "final-b" / "config.json").read_text())
    assert config_a["hfprune"] == config_b["hfprune"] and sum(map(len, config_a["hfprune"]["kept_heads"])) == 6


# ---- many processes ----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_prune_identically(tmp_path, launcher):
    script, port = str(SCRIPTS / "trainer_distributed.py"), str(_free_port())
    if launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                   "127.0.0.1", "--master_port", port]
    else:  # `--cpu --num_processes 2` would run ONE process; --multi_gpu + use_cpu=True runs two on gloo
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_ip", "127.0.0.1", "--main_process_port", port]
    env = {**SUBPROCESS_ENV, "HF_HOME": str(tmp_path / "hf")}  # no accelerate config file from the user
    result = subprocess.run([*command, script, str(tmp_path)], env=env, capture_output=True, timeout=150)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    runs = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    for method in ("importance", "l0"):
        ranks = [run[method] for run in runs]
        assert [r["world_size"] for r in ranks] == [2, 2] and [r["torch_world_size"] for r in ranks] == [2, 2]
        assert [r["wrapper"] for r in ranks] == ["DistributedDataParallel"] * 2
        assert ranks[0]["record"] == ranks[1]["record"]
        assert ranks[0]["history"] == ranks[1]["history"]
        assert ranks[0]["state_hash"] == ranks[1]["state_hash"]  # identical weights after DDP training
    importance, l0 = runs[0]["importance"], runs[0]["l0"]
    # each rank scored its own shard (different local scores), the averaged scores gave one plan
    assert runs[0]["importance"]["local_scores"] != runs[1]["importance"]["local_scores"]
    assert len(importance["local_scores"]) == 4  # heads and FFN, two steps
    assert sum(map(len, importance["record"]["kept_heads"])) == 6  # half of the 12 heads
    assert 0 < l0["history"][-1]["head_sparsity"] < 1  # the gates closed some heads, the same on both ranks


def test_activation_method_prunes_the_heads_with_the_smallest_normalised_activation_scores(tmp_path):
    from hfprune.scoring.activations import activation_scores

    model = tiny_model("bert")
    train = data(16)
    loader = DataLoader(train, batch_size=8, collate_fn=default_data_collator)
    expected = normalize_per_layer(activation_scores(copy.deepcopy(model), loader, kinds="heads")["heads"])
    args = make_args(tmp_path, pruning_method="activation", target_head_sparsity=0.5, score_num_examples=16)
    trainer = make_trainer(model, args, train=train)
    trainer.train()

    scored = trainer.pruning_scores[1]["heads"]
    assert torch.allclose(scored, expected.to(scored.dtype), atol=1e-6)
    order = sorted(range(scored.numel()), key=lambda i: float(scored.flatten()[i]))
    heads_per_layer = scored.shape[1]
    removed = {(i // heads_per_layer, i % heads_per_layer) for i in order[: scored.numel() // 2]}
    kept = {(layer, head) for layer, heads in enumerate(get_record(model)["kept_heads"]) for head in heads}
    assert kept.isdisjoint(removed) and len(kept) == scored.numel() // 2


def test_l0_with_a_param_budget_gates_heads_ffn_and_blocks_and_lands_on_the_budget(tmp_path):
    """CoFi: one Lagrangian over the expected parameters of heads, FFN neurons and whole blocks."""
    model, capture = tiny_model("bert"), LogCapture()
    dense = sum(p.numel() for p in model.parameters())
    args = make_args(
        tmp_path, pruning_method="l0", target_param_budget=0.8, l0_steps=40, l0_learning_rate=0.05, l0_warmup_steps=20, l0_init_keep=0.87,
        recovery_steps=1, seed=2,
    )  # fmt: skip
    trainer = make_trainer(model, args, callbacks=[capture])
    trainer.train()
    report = trainer.param_report
    parameters = sum(p.numel() for p in model.parameters())
    assert report["method"] == "l0" and report["parameters"] == parameters and report["dense_parameters"] == dense
    neuron = 2 * 32 + 1  # one FFN neuron of the tiny BERT: a row and a bias in, a column out
    assert abs(parameters - 0.8 * dense) <= neuron  # the budget, to within the smallest unit
    # the Lagrangian pulled the expected sparsity of the gated parameters from where the gates start (0.25) to the
    # target (0.45); in 40 steps it overshoots a little (Adam keeps closing gates for a few steps after the gap
    # changes sign), which the final decision does not inherit: it removes exactly the budget
    expected = [log["l0_expected_sparsity"] for log in capture.logs if "l0_expected_sparsity" in log]
    target = (1 - 0.8) * dense / report["gated_parameters"]
    assert expected[0] < target - 0.15 and max(expected) >= target and abs(expected[-1] - target) < 0.1
    record = get_record(model)
    assert any(kept is not None for kept in record["kept_ffn"])  # FFN neurons went, not only heads
    model(**tiny_inputs())


@pytest.mark.parametrize("target, removed, learning_rate, warmup", [(0.5, 6, 0.1, 0), (0.25, 3, 0.05, 20)])
def test_l0_with_a_target_sparsity_pulls_the_gates_to_it_and_removes_exactly_that_many_heads(
    tmp_path, target, removed, learning_rate, warmup
):
    model, capture = tiny_model("bert"), LogCapture()
    args = make_args(
        tmp_path, pruning_method="l0", target_head_sparsity=target, l0_steps=40, l0_learning_rate=learning_rate,
        l0_warmup_steps=warmup, l0_init_keep=0.87, recovery_steps=1, seed=2,
    )  # fmt: skip
    trainer = make_trainer(model, args, callbacks=[capture])
    trainer.train()
    kept = hfprune.get_record(model)["kept_heads"]
    assert 12 - sum(len(heads) for heads in kept) == removed  # exact, whatever the gates' learning rate
    expected = [log["l0_expected_heads"] for log in capture.logs if "l0_expected_heads" in log]
    # the Lagrangian pulls the expected number of open heads from about 10.4 to within a head of the target
    assert abs(expected[-1] - (12 - removed)) < 0.5 < abs(expected[0] - (12 - removed))
    gates = trainer.l0_gate_values
    closed = sorted(((float(gates[layer, head]), layer, head) for layer in range(3) for head in range(4)))[:removed]
    assert all(head not in kept[layer] for _, layer, head in closed)  # the least open gates are the ones removed
    model(**tiny_inputs())


def test_micro_batches_train_a_classifier_on_the_mean_loss_of_the_whole_batch(tmp_path):
    """A classification head's loss is its micro-batch's mean and ignores `num_items_in_batch`, so the Trainer must
    divide it by the accumulation steps: 2 micro-batches of 4 log (and step on) the loss of one batch of 8, not twice it."""
    losses = {}
    for micro_batch, accumulation in ((8, 1), (4, 2)):
        model = tiny_model("bert")
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        capture = LogCapture()
        args = make_args(tmp_path / str(micro_batch), per_device_train_batch_size=micro_batch, gradient_accumulation_steps=accumulation, recovery_steps=1)
        trainer = make_trainer(model, args, train=data(8), callbacks=[capture])
        assert not trainer.model_accepts_loss_kwargs
        trainer.train()
        losses[accumulation] = next(log["loss"] for log in capture.logs if "loss" in log)
    assert losses[2] == pytest.approx(losses[1], rel=1e-4)
    causal = make_trainer(tiny_model("llama"), make_args(tmp_path / "lm"), train=lm_data(8))
    assert causal.model_accepts_loss_kwargs  # its loss divides by the tokens of the whole batch itself
