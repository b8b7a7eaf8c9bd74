"""HeadMaskCallback and LayerDropCallback, alone and inside a stock transformers.Trainer."""

import copy
import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import FAMILIES, VOCAB, tiny_inputs, tiny_model
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.training_args import ParallelMode

import hfprune
from hfprune.training.callbacks import HeadMaskCallback, LayerDropCallback

SCRIPTS = Path(__file__).parent / "scripts"
HEADS = {0: [1, 3], 2: [0]}


def hook_count(model: nn.Module) -> int:
    """Forward hooks of every module (but transformers' own, e.g. gradient checkpointing's input hook),
    plus XLNet's instance-level `post_attention` mask wrapper."""

    def ours(hook) -> bool:
        return not getattr(hook, "__qualname__", "").startswith("PreTrainedModel.")

    return sum(
        sum(map(ours, [*m._forward_pre_hooks.values(), *m._forward_hooks.values()])) + ("post_attention" in m.__dict__)
        for m in model.modules()
    )


def no_dropout(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name in ("dropout_prob", "attention_dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)
    return model


def dataset(n: int = 16, length: int = 8, causal: bool = False, seed: int = 2) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        input_ids = torch.randint(3, VOCAB, (length,), generator=generator)
        row = {"input_ids": input_ids, "attention_mask": torch.ones(length, dtype=torch.long)}
        row["labels"] = input_ids.clone() if causal else torch.tensor(i % 3)
        rows.append(row)
    return rows


def training_args(tmp_path, **overrides) -> TrainingArguments:
    kwargs = dict(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        max_steps=4,
        learning_rate=1e-2,
        disable_tqdm=True,
        seed=0,
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def train_losses(trainer: Trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def fake_args(**fields) -> types.SimpleNamespace:
    defaults = dict(seed=0, world_size=1, parallel_mode=ParallelMode.NOT_DISTRIBUTED, ddp_find_unused_parameters=None)
    return types.SimpleNamespace(**{**defaults, **fields})


# ---- HeadMaskCallback ------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILIES))
def test_head_mask_callback_masks_eval_only(family):
    model, inputs = tiny_model(family), tiny_inputs()
    with torch.no_grad():
        plain = model(**inputs).logits
        with hfprune.apply_masks(model, head_mask=hfprune.make_head_mask(model, HEADS)):
            masked = model(**inputs).logits
    callback = HeadMaskCallback(HEADS)
    callback.on_init_end(None, None, None, model=model)
    assert callback.attached
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, masked, atol=1e-6)
        assert not torch.allclose(masked, plain, atol=1e-4)
        model.train()
        torch.manual_seed(0)
        trained = model(**inputs).logits
    callback.remove()
    with torch.no_grad():
        torch.manual_seed(0)
        assert torch.equal(trained, model(**inputs).logits)
    assert hook_count(model) == 0


@pytest.mark.parametrize("as_tensor", [False, True])
def test_head_mask_callback_evaluate_and_predict_without_training(tmp_path, as_tensor):
    model, data = tiny_model("bert"), dataset()
    mask = hfprune.make_head_mask(model, HEADS)
    callback = HeadMaskCallback(mask if as_tensor else HEADS)
    trainer = Trainer(model=model, args=training_args(tmp_path), eval_dataset=data, callbacks=[callback])
    predictions = trainer.predict(data)
    metrics = trainer.evaluate()
    callback.remove()
    assert hook_count(model) == 0

    batch = {key: torch.stack([row[key] for row in data]) for key in data[0]}
    with torch.no_grad():
        plain = model(**batch)
        with hfprune.apply_masks(model, head_mask=mask):
            reference = model(**batch)
    assert torch.allclose(torch.as_tensor(predictions.predictions), reference.logits, atol=1e-5)
    assert metrics["eval_loss"] == pytest.approx(reference.loss.item(), abs=1e-5)
    assert abs(metrics["eval_loss"] - plain.loss.item()) > 1e-4


def test_head_mask_callback_leaves_training_untouched(tmp_path):
    data = dataset()
    runs = {}
    for name in ("plain", "masked"):
        model = tiny_model("bert")
        callbacks = [HeadMaskCallback(HEADS)] if name == "masked" else []
        args = training_args(tmp_path / name, max_steps=2, eval_strategy="steps", eval_steps=2)
        trainer = Trainer(model=model, args=args, train_dataset=data, eval_dataset=data, callbacks=callbacks)
        trainer.train()
        eval_loss = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
        after_train = trainer.evaluate()["eval_loss"]  # still masked after train()
        for callback in callbacks:
            callback.remove()
        runs[name] = (model, train_losses(trainer), eval_loss, after_train)
    (plain, plain_losses, plain_eval, _), (masked, masked_losses, masked_eval, masked_after) = runs["plain"], runs["masked"]
    assert plain_losses == masked_losses
    for (name, a), b in zip(plain.named_parameters(), masked.parameters()):
        assert torch.equal(a, b), name
    assert hook_count(masked) == 0

    batch = {key: torch.stack([row[key] for row in data]) for key in data[0]}
    masked.eval()
    with torch.no_grad(), hfprune.apply_masks(masked, head_mask=hfprune.make_head_mask(masked, HEADS)):
        reference = masked(**batch).loss.item()
    assert masked_eval[0] == pytest.approx(reference, abs=1e-5)
    assert masked_after == pytest.approx(reference, abs=1e-5)
    assert abs(plain_eval[0] - reference) > 1e-4


def test_head_mask_callback_refuses_an_unmasked_evaluation(tmp_path):
    data = dataset(n=4)
    trainer = Trainer(model=tiny_model("bert"), args=training_args(tmp_path), eval_dataset=data)
    trainer.add_callback(HeadMaskCallback(HEADS))  # after __init__: on_init_end never reaches it
    with pytest.raises(hfprune.PruningError, match="not attached"):
        trainer.evaluate()


def test_head_mask_callback_bad_input():
    with pytest.raises(hfprune.PruningError, match="heads_to_mask"):
        HeadMaskCallback([[0, 1]])
    with pytest.raises(hfprune.PruningError, match="out of range"):
        HeadMaskCallback({7: [0]}).attach(tiny_model("bert"))
    with pytest.raises(hfprune.PruningError, match="shape"):
        HeadMaskCallback(torch.ones(2, 4)).attach(tiny_model("bert"))


# ---- LayerDropCallback: one step, every family -----------------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILIES))
def test_layerdrop_step_skips_layers(family):
    model, inputs = no_dropout(tiny_model(family)), tiny_inputs()
    adapter = hfprune.get_adapter(model)
    layers = adapter.get_layers(model)
    layer_types = copy.copy(getattr(model.config, "layer_types", None))
    callback = LayerDropCallback(p=0.5, seed=1)
    callback.on_train_begin(fake_args(), None, None, model=model)
    step = next(s for s in range(100) if 0 < len(callback.draw(s)) < len(layers))
    calls = [0] * len(layers)
    counters = [layer.register_forward_pre_hook(lambda m, a, i=i: calls.__setitem__(i, calls[i] + 1)) for i, layer in enumerate(layers)]

    model.train()
    callback.on_step_begin(fake_args(), types.SimpleNamespace(global_step=step), None)
    dropped = callback.dropped_layers
    assert dropped == callback.draw(step)
    logits = model(**inputs).logits
    # Put back right after the forward: backward, optimizer and evaluation see the whole model.
    assert adapter.get_layers(model) is layers
    assert getattr(model.config, "layer_types", None) == layer_types
    logits.square().sum().backward()
    callback.on_step_end(fake_args(), None, None)
    for handle in counters:
        handle.remove()
    assert hook_count(model) == 0

    assert [i for i, n in enumerate(calls) if n == 0] == dropped  # really skipped, not an identity
    for i, layer in enumerate(layers):
        grads = [p.grad for p in layer.parameters() if p.requires_grad]
        if i in dropped:
            assert all(g is None for g in grads)
        else:
            assert any(g is not None and g.abs().sum() > 0 for g in grads)
    with torch.no_grad():
        with hfprune.skip_layers(model, dropped):
            skipped = model(**inputs).logits
        pruned = hfprune.drop_layers(copy.deepcopy(model), dropped)(**inputs).logits
    assert torch.allclose(logits, skipped, atol=1e-5)
    assert torch.allclose(logits, pruned, atol=1e-5)
    # layer_idx is renumbered only during the step
    for i, layer in enumerate(layers):
        assert all(m.layer_idx == i for m in layer.modules() if getattr(m, "layer_idx", None) is not None)


def test_layerdrop_draws_are_a_function_of_seed_and_step():
    first, second, other = LayerDropCallback(0.3, seed=5), LayerDropCallback(0.3, seed=5), LayerDropCallback(0.3, seed=6)
    for callback in (first, second, other):  # separate model instances, like separate ranks
        callback.on_train_begin(fake_args(), None, None, model=tiny_model("llama"))
    draws = [first.draw(step) for step in range(300)]
    assert draws == [second.draw(step) for step in reversed(range(300))][::-1]
    assert draws != [other.draw(step) for step in range(300)]
    rate = sum(map(len, draws)) / (3 * len(draws))
    assert 0.25 < rate < 0.35
    assert any(len(d) == 0 for d in draws) and any(len(d) >= 2 for d in draws)

    only_middle = LayerDropCallback(0.5, seed=None, layers=[1])
    only_middle.on_train_begin(fake_args(seed=3), None, None, model=tiny_model("bert"))
    middle = [only_middle.draw(step) for step in range(50)]
    assert {tuple(d) for d in middle} == {(), (1,)}


def test_layerdrop_bad_arguments():
    for p in (1.0, -0.1, "0.2", True):
        with pytest.raises(hfprune.PruningError, match="probability"):
            LayerDropCallback(p=p)
    with pytest.raises(hfprune.PruningError, match="out of range"):
        LayerDropCallback(layers=[-1])
    model = tiny_model("bert")
    with pytest.raises(hfprune.PruningError, match=r"layers \[5\]"):
        LayerDropCallback(layers=[5]).on_train_begin(fake_args(), None, None, model=model)
    hfprune.drop_layers(model, [1])
    with pytest.raises(hfprune.PruningError, match=r"layers \[1\]"):
        LayerDropCallback(layers=[1]).on_train_begin(fake_args(), None, None, model=model)
    with pytest.raises(hfprune.PruningError, match="needs the model"):
        LayerDropCallback().draw(0)


def test_layerdrop_on_a_pruned_model_uses_original_ids():
    model = hfprune.drop_layers(tiny_model("gpt2"), [0])
    callback = LayerDropCallback(p=0.5, seed=0, layers=[2])
    callback.on_train_begin(fake_args(), None, None, model=model)
    assert {tuple(callback.draw(step)) for step in range(40)} == {(), (2,)}


def test_layerdrop_refuses_ddp_without_unused_parameters():
    model = tiny_model("bert")
    ddp = dict(parallel_mode=ParallelMode.DISTRIBUTED, world_size=2)
    with pytest.raises(hfprune.PruningError, match="ddp_find_unused_parameters=True"):
        LayerDropCallback().on_train_begin(fake_args(**ddp, ddp_find_unused_parameters=False), None, None, model=model)
    LayerDropCallback().on_train_begin(fake_args(**ddp), None, None, model=model)  # Trainer's default: True
    LayerDropCallback(p=0.0).on_train_begin(fake_args(**ddp, ddp_find_unused_parameters=False), None, None, model=model)
    model.gradient_checkpointing_enable()  # Trainer then defaults find_unused_parameters to False
    with pytest.raises(hfprune.PruningError, match="ddp_find_unused_parameters=True"):
        LayerDropCallback().on_train_begin(fake_args(**ddp), None, None, model=model)
    LayerDropCallback().on_train_begin(fake_args(**ddp, ddp_find_unused_parameters=True), None, None, model=model)


def test_layerdrop_under_torch_compile():
    """The draw lives outside the compiled forward; dynamo guards on the swapped layer list and recompiles."""
    model, inputs = no_dropout(tiny_model("bert")), tiny_inputs()
    compiled = torch.compile(model, backend="eager")
    callback = LayerDropCallback(p=0.5, seed=3)
    callback.on_train_begin(fake_args(), None, None, model=model)
    model.train()
    seen = set()
    for step in range(5):
        callback.on_step_begin(fake_args(), types.SimpleNamespace(global_step=step), None)
        logits = compiled(**inputs).logits
        callback.on_step_end(fake_args(), None, None)
        seen.add(tuple(callback.dropped_layers))
        with torch.no_grad(), hfprune.skip_layers(model, callback.dropped_layers):
            assert torch.allclose(logits, model(**inputs).logits, atol=1e-6)
    assert len(seen) >= 3


# ---- LayerDropCallback inside Trainer ------------------------------------------------------------------


class StepSpy(TrainerCallback):
    """Checks, step by step, that the layers LayerDrop skipped did not change and the others did."""

    def __init__(self, layerdrop: LayerDropCallback, layers: nn.ModuleList):
        self.layerdrop, self.layers, self.outcomes, self.eval_depths = layerdrop, layers, [], []

    def on_step_begin(self, args, state, control, **kwargs):
        self.before = [[p.detach().clone() for p in layer.parameters()] for layer in self.layers]

    def on_step_end(self, args, state, control, model=None, **kwargs):
        for i, (layer, before) in enumerate(zip(self.layers, self.before)):
            unchanged = all(torch.equal(p, b) for p, b in zip(layer.parameters(), before))
            self.outcomes.append((i in self.layerdrop.dropped_layers, unchanged))

    def on_prediction_step(self, args, state, control, model=None, **kwargs):
        self.eval_depths.append(len(hfprune.get_adapter(model).get_layers(model)))


def test_layerdrop_p0_trains_exactly_like_no_callback(tmp_path):
    data, runs = dataset(), []
    for callbacks in ([], [LayerDropCallback(p=0.0)]):
        model = tiny_model("bert")
        trainer = Trainer(model=model, args=training_args(tmp_path), train_dataset=data, callbacks=callbacks)
        trainer.train()
        runs.append((model, train_losses(trainer)))
    assert runs[0][1] == runs[1][1] and len(runs[0][1]) == 4
    for a, b in zip(runs[0][0].parameters(), runs[1][0].parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "gradient_checkpointing"])
def test_layerdrop_in_trainer(tmp_path, checkpointing):
    data, model = dataset(n=32), tiny_model("bert")
    layers = hfprune.get_adapter(model).get_layers(model)
    layerdrop = LayerDropCallback(p=0.4, seed=0)
    spy = StepSpy(layerdrop, layers)
    args = training_args(
        tmp_path,
        max_steps=6,
        gradient_accumulation_steps=2,
        gradient_checkpointing=checkpointing,
        eval_strategy="steps",
        eval_steps=3,
        weight_decay=0.01,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data, eval_dataset=data[:8], callbacks=[layerdrop, spy])
    trainer.train()
    assert model.is_gradient_checkpointing == checkpointing

    assert len(layerdrop.history) == 6 and any(dropped for _, dropped in layerdrop.history)
    assert (True, False) not in spy.outcomes  # a skipped layer never changes in its step
    assert (False, True) not in spy.outcomes  # a kept layer always does
    assert spy.eval_depths and set(spy.eval_depths) == {3}  # evaluation is never dropped
    assert hfprune.get_adapter(model).get_layers(model) is layers and hook_count(model) == 0
    eval_loss = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry][-1]
    assert trainer.evaluate()["eval_loss"] == pytest.approx(eval_loss, abs=1e-6)  # full depth, same model

    hfprune.drop_layers(model, [1])  # any depth can be kept afterwards
    assert len(hfprune.get_adapter(model).get_layers(model)) == 2


def test_layerdrop_leaves_the_model_clean_when_training_raises(tmp_path):
    model = tiny_model("qwen2")
    adapter, layer_types = hfprune.get_adapter(model), list(model.config.layer_types)
    layers = adapter.get_layers(model)
    layerdrop = LayerDropCallback(p=0.5, seed=0)
    calls = []

    def explode(module, args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")

    handle = model.lm_head.register_forward_pre_hook(explode)  # inside the model forward, after the layers
    trainer = Trainer(model=model, args=training_args(tmp_path), train_dataset=dataset(causal=True), callbacks=[layerdrop])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train()
    handle.remove()
    assert layerdrop.history[-1] == (2, [1])  # a layer was skipped when the forward raised
    assert adapter.get_layers(model) is layers and len(layers) == 3
    assert model.config.layer_types == layer_types
    assert [layer.self_attn.layer_idx for layer in layers] == [0, 1, 2]
    assert hook_count(model) == 0


def test_layerdrop_ddp_two_processes(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [*torchrun, "--master_port", str(port), str(SCRIPTS / "layerdrop_ddp.py"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    assert ranks[0]["world_size"] == 2
    assert ranks[0]["history"] == ranks[1]["history"] and len(ranks[0]["history"]) == 6
    assert any(dropped for _, dropped in ranks[0]["history"])
    for name, tensor in ranks[0]["state"].items():
        assert torch.equal(tensor, ranks[1]["state"][name]), name
