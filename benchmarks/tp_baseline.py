"""Torch-Pruning (TP 1.6) as a peer baseline: Taylor global structured pruning of a BERT classifier to a FLOPs target.

The point is to run TP the way its own documentation does, not a re-implementation of it: TP's
`GroupTaylorImportance`, `global_pruning=True`, gradients accumulated with `loss.backward()` before one
`pruner.step()`, TP's dependency graph deciding which channels are coupled. What this module adds is only what a
fair FLOPs-matched comparison needs and TP does not do itself:

* a bisection on TP's single knob (`pruning_ratio`, with `head_pruning_ratio` tied to it) until the model's
  forward FLOPs, counted by `hfprune.measure.speed.count_flops`, are `1 / target_flops_ratio` of the dense model's;
* the attribute fix-up after surgery that transformers' `BertSelfAttention.forward` needs
  (`attention_head_size` is read to reshape q/k/v; the head counts are kept in step for anyone reading them).

TP options used (see `SETTINGS`): whole heads are removed (`prune_num_heads=True, prune_head_dims=False`, as in
TP's `examples/transformers/prune_hf_bert.py`), so every kept head keeps its 32 dims and the attention scaling
`1/sqrt(head_dim)` stays right; FFN neurons and the hidden (residual) width are pruned, the hidden width because
TP couples and prunes it by default; the pooler's width is pruned too (it is an ordinary coupled group); only
the classifier is in `ignored_layers`, so `num_labels` stays.

Torch-Pruning is a benchmark-only dependency, installed beside the benchmarks and never into hfprune's
environment: `pip install --no-deps --target benchmarks/.cache/torch-pruning torch-pruning==1.6.1`. It is imported
from the environment, else from `$TORCH_PRUNING_PATH`, else from that folder (`/tmp/tp` as a last resort).
"""

from __future__ import annotations

import copy
import importlib
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from hfprune.measure.flops import count_flops

DEFAULT_TP_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache", "torch-pruning")
FALLBACK_TP_PATH = "/tmp/tp"
FLOPS_TOLERANCE = 0.03  # |measured / target - 1| accepted for the FLOPs ratio
BISECTION_TOLERANCE = 0.01  # the bisection stops early once this close, leaving room under FLOPS_TOLERANCE
MAX_BISECTION_STEPS = 24
MAX_PRUNING_RATIO = 0.95  # upper end of the bisection; a trial that empties a layer counts as too much pruning

# What TP is told, besides the model-specific num_heads / ignored_layers / example inputs.
SETTINGS: dict[str, Any] = {
    "pruner": "tp.pruner.BasePruner (MetaPruner)",
    "importance": "tp.importance.GroupTaylorImportance(group_reduction='mean', normalizer='mean')",
    "global_pruning": True,
    "iterative_steps": 1,
    "prune_num_heads": True,  # whole heads (TP's HF-BERT example); head dims stay 32
    "prune_head_dims": False,
    "head_pruning_ratio": "= pruning_ratio",  # one knob for the bisection
    "hidden_pruned": True,  # TP's default: the residual width is one coupled group in the global ranking
    "ffn_pruned": True,
    "pooler_pruned": True,
    "ignored_layers": ["classifier"],
    "round_to": None,
    "isomorphic": False,
    "output_transform": "lambda out: out.logits.sum()",
    "gradients": "model.eval() (no dropout), loss.backward() summed over all batches, then one pruner.step()",
}


# ---- Torch-Pruning import -----------------------------------------------------------------------------
def import_torch_pruning():
    """`torch_pruning`, from the environment or else from `$TORCH_PRUNING_PATH` / benchmarks/.cache (benchmark only)."""
    try:
        return importlib.import_module("torch_pruning")
    except ImportError:
        pass
    for folder in (os.environ.get("TORCH_PRUNING_PATH"), DEFAULT_TP_PATH, FALLBACK_TP_PATH):
        if folder and os.path.isdir(os.path.join(folder, "torch_pruning")) and folder not in sys.path:
            sys.path.insert(0, folder)
    try:
        return importlib.import_module("torch_pruning")
    except ImportError as error:
        raise ImportError(
            f"Torch-Pruning is not installed: `pip install --no-deps --target {DEFAULT_TP_PATH} torch-pruning==1.6.1` "
            "(or another folder, with TORCH_PRUNING_PATH=DIR)"
        ) from error


def _tp_version(tp) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch_pruning")
    except PackageNotFoundError:
        return getattr(tp, "__version__", "unknown")


# ---- model helpers ------------------------------------------------------------------------------------
def _self_attentions(model: nn.Module) -> list[nn.Module]:
    """The `BertSelfAttention` blocks, in layer order (any module with query/key/value Linears and a head count)."""
    return [
        module
        for module in model.modules()
        if all(isinstance(getattr(module, name, None), nn.Linear) for name in ("query", "key", "value"))
        and hasattr(module, "num_attention_heads")
    ]


def _check_bert(model: nn.Module) -> None:
    if not hasattr(model, "bert") or not isinstance(getattr(model, "classifier", None), nn.Linear):
        raise TypeError(f"expected a transformers BertForSequenceClassification, got {type(model).__name__}")
    if not _self_attentions(model):
        raise TypeError("found no BertSelfAttention blocks (query/key/value Linears) to tell TP the heads of")


def _model_inputs(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    keys = ("input_ids", "attention_mask", "token_type_ids")
    return {key: batch[key].to(device) for key in keys if key in batch and batch[key] is not None}


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def accumulate_taylor_gradients(model: nn.Module, batches: Sequence[Mapping[str, torch.Tensor]]) -> int:
    """`loss.backward()` over every batch (gradients summed, as in TP's Taylor examples); returns the examples seen.

    Eval mode, so that dropout does not add noise to the importance; the model's mode is restored."""
    if not batches:
        raise ValueError("batches is empty: the Taylor importance needs gradients from at least one batch")
    device, training = _device(model), model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    examples = 0
    try:
        for batch in batches:
            if "labels" not in batch:
                raise ValueError("every batch needs `labels` for the Taylor loss")
            output = model(**_model_inputs(batch, device), labels=batch["labels"].to(device))
            output.loss.backward()
            examples += int(batch["labels"].shape[0])
    finally:
        model.train(training)
    return examples


def _copy_with_grads(model: nn.Module) -> nn.Module:
    """A deep copy that also carries `.grad` (`Parameter.__deepcopy__` drops it), for trial prunings."""
    clone = copy.deepcopy(model)
    for source, target in zip(model.parameters(), clone.parameters()):
        if source.grad is not None:
            target.grad = source.grad.detach().clone()
    return clone


def fix_attention_attributes(model: nn.Module, num_heads: Mapping[nn.Module, int]) -> None:
    """Make each `BertSelfAttention` agree with its new Linear shapes.

    transformers 5 reshapes q/k/v with `view(..., -1, attention_head_size)`; `num_attention_heads` and
    `all_head_size` are not read by forward but are kept true. `scaling` is left as it was: whole heads were
    removed, so the head width (and 1/sqrt(head_dim)) did not change."""
    for attention in _self_attentions(model):
        heads = int(num_heads[attention.query])
        width = attention.query.out_features
        if heads < 1 or width == 0:
            raise RuntimeError("Torch-Pruning removed every head of a layer; the BERT forward cannot run without one")
        if width % heads or attention.key.out_features != width or attention.value.out_features != width:
            raise RuntimeError(
                f"inconsistent attention after pruning: q/k/v widths {attention.query.out_features}/"
                f"{attention.key.out_features}/{attention.value.out_features} for {heads} heads"
            )
        attention.num_attention_heads = heads
        attention.attention_head_size = width // heads
        attention.all_head_size = width


def _fix_config(model: nn.Module) -> None:
    """`config.hidden_size` follows the new residual width (the embeddings' width). Per-layer head counts and FFN
    widths differ after global pruning, so `num_attention_heads` / `intermediate_size` keep the dense values:
    forward reads neither (the modules carry their own sizes). The config is not meant for saving this model."""
    model.config.hidden_size = model.bert.embeddings.word_embeddings.embedding_dim


def structure(model: nn.Module) -> dict[str, Any]:
    """Hidden width, heads and FFN neurons per layer, and the parameter count."""
    layers = model.bert.encoder.layer
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "hidden_size": model.bert.embeddings.word_embeddings.embedding_dim,
        "heads": [int(layer.attention.self.num_attention_heads) for layer in layers],
        "head_dim": [int(layer.attention.self.attention_head_size) for layer in layers],
        "ffn": [layer.intermediate.dense.out_features for layer in layers],
        "pooler": model.bert.pooler.dense.out_features if model.bert.pooler is not None else None,
    }


# ---- one TP pruning -----------------------------------------------------------------------------------
def _tp_prune(model: nn.Module, example_inputs: dict[str, torch.Tensor], pruning_ratio: float) -> None:
    """One Torch-Pruning step on `model` (in place), from the gradients it already holds."""
    tp = import_torch_pruning()
    num_heads = {}
    for attention in _self_attentions(model):
        for linear in (attention.query, attention.key, attention.value):
            num_heads[linear] = int(attention.num_attention_heads)
    pruner = tp.pruner.BasePruner(
        model,
        example_inputs,
        importance=tp.importance.GroupTaylorImportance(group_reduction="mean", normalizer="mean"),
        global_pruning=True,
        pruning_ratio=pruning_ratio,
        iterative_steps=1,
        num_heads=num_heads,
        prune_num_heads=True,
        prune_head_dims=False,
        head_pruning_ratio=pruning_ratio,
        ignored_layers=[model.classifier],
        output_transform=lambda out: out.logits.sum(),
    )
    pruner.step()
    fix_attention_attributes(model, pruner.num_heads)
    _fix_config(model)


def _trial(model: nn.Module, example_inputs: dict[str, torch.Tensor], ratio: float, seq_len: int) -> int:
    """FLOPs (batch 1: FLOPs are linear in the batch size) of a copy of `model` pruned at `ratio`."""
    clone = _copy_with_grads(model)
    _tp_prune(clone, example_inputs, ratio)
    return count_flops(clone, 1, seq_len)


# ---- public -------------------------------------------------------------------------------------------
def bisect_pruning_ratio(
    measure: Callable[[float], float],
    target: float,
    *,
    start: tuple[float, float],
    grows_with_ratio: bool,
    tolerance: float,
    steps: int = MAX_BISECTION_STEPS,
) -> tuple[tuple[float, float], list[str]]:
    """Bisect TP's `pruning_ratio` in [0, MAX_PRUNING_RATIO] until `measure(ratio)` is within `tolerance` of `target`.

    `start` is (ratio, value) of the unpruned model; `grows_with_ratio` says which way the value moves (a FLOPs ratio
    grows, a parameter count shrinks). A ratio at which TP fails (an emptied layer, a broken shape) counts as too
    much pruning. Returns the (ratio, value) closest to the target, and the failures.
    """
    best, failures = start, []
    low, high = 0.0, MAX_PRUNING_RATIO
    for _ in range(steps):
        middle = (low + high) / 2
        try:
            value = measure(middle)
        except Exception as error:  # noqa: BLE001 - TP emptied a layer or broke a shape: prune less; reported by the caller
            failures.append(f"pruning_ratio={middle:.4f}: {type(error).__name__}: {error}")
            high = middle
            continue
        if abs(value / target - 1) < abs(best[1] / target - 1):
            best = (middle, value)
        if abs(value / target - 1) <= tolerance:
            break
        too_little = value < target if grows_with_ratio else value > target
        low, high = (middle, high) if too_little else (low, middle)
    return best, failures


def torch_pruning_prune(
    model: nn.Module,
    batches: Sequence[Mapping[str, torch.Tensor]],
    target_flops_ratio: float,
    *,
    seq_len: int = 128,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Prune `model` (a transformers BertForSequenceClassification, e.g. MiniLM-L6) IN PLACE with Torch-Pruning's
    Taylor global pruning until its forward FLOPs at batch_size x seq_len are about 1/target_flops_ratio of the
    dense model's.

    `batches`: a list of dict batches (input_ids, attention_mask, token_type_ids optional, labels) used for the
    Taylor gradients. `pruning_ratio` is found by bisection on copies (the FLOPs ratio grows with it), then the
    model itself is pruned once at that ratio; its gradients are cleared afterwards.

    Returns {"pruning_ratio", "flops_ratio" (measured dense/pruned at batch_size x seq_len), "params",
    "hidden_size", "heads", "head_dim", "ffn", "pooler", "settings"}. Raises ValueError for a target below 1, or one that
    no pruning_ratio reaches within 3% (trials where TP empties a layer count as too much pruning; the error lists
    the trials). MiniLM-L6 reaches about 44x before a layer loses its last head.
    """
    start = time.perf_counter()
    _check_bert(model)
    if not (isinstance(target_flops_ratio, (int, float)) and math.isfinite(target_flops_ratio)):
        raise ValueError(f"target_flops_ratio must be a number, got {target_flops_ratio!r}")
    if target_flops_ratio < 1:
        raise ValueError(f"target_flops_ratio must be >= 1 (dense / pruned FLOPs), got {target_flops_ratio}")
    tp = import_torch_pruning()
    examples = accumulate_taylor_gradients(model, batches)
    example_inputs = {key: value[:1] for key, value in _model_inputs(batches[0], _device(model)).items()}

    dense_flops_1 = count_flops(model, 1, seq_len)
    steps: list[tuple[float, float]] = []  # (pruning_ratio, flops ratio) per trial

    def ratio_at(r: float) -> float:
        value = dense_flops_1 / _trial(model, example_inputs, r, seq_len)
        steps.append((round(r, 5), round(value, 4)))
        return value

    best, failures = bisect_pruning_ratio(
        ratio_at, target_flops_ratio, start=(0.0, 1.0), grows_with_ratio=True, tolerance=BISECTION_TOLERANCE,
        steps=MAX_BISECTION_STEPS if target_flops_ratio > 1 else 0,
    )  # fmt: skip
    if abs(best[1] / target_flops_ratio - 1) > FLOPS_TOLERANCE:
        reached = max((value for _, value in steps), default=1.0)
        raise ValueError(
            f"Torch-Pruning cannot reach {target_flops_ratio}x fewer FLOPs within {FLOPS_TOLERANCE:.0%}: closest "
            f"{best[1]:.3f}x at pruning_ratio={best[0]:.4f}, most reached {reached:.3f}x; trials {steps}"
            + (f"; failed: {failures}" if failures else "")
        )

    pruning_ratio = best[0]
    dense_flops = count_flops(model, batch_size, seq_len)
    if pruning_ratio > 0:
        _tp_prune(model, example_inputs, pruning_ratio)
    model.zero_grad(set_to_none=True)
    pruned_flops = count_flops(model, batch_size, seq_len)
    flops_ratio = dense_flops / pruned_flops
    if abs(flops_ratio / target_flops_ratio - 1) > FLOPS_TOLERANCE:  # the final pruning must repeat the trial
        raise RuntimeError(f"pruned model has {flops_ratio:.3f}x fewer FLOPs, the trial said {best[1]:.3f}x")

    return {
        "pruning_ratio": round(pruning_ratio, 5),
        "flops_ratio": round(flops_ratio, 4),
        "target_flops_ratio": target_flops_ratio,
        "dense_flops": dense_flops,
        "pruned_flops": pruned_flops,
        **structure(model),
        "settings": {
            **SETTINGS,
            "torch_pruning_version": _tp_version(tp),
            "gradient_batches": len(batches),
            "gradient_examples": examples,
            "flops_counted_at": [batch_size, seq_len],
            "flops_counter": "hfprune.measure.speed.count_flops",
            "bisection_trials": steps,
            "bisection_failures": failures,
            "seconds": round(time.perf_counter() - start, 1),
        },
    }


# ---- smoke run ----------------------------------------------------------------------------------------
def _sst2_batches(tokenizer, n_batches: int = 4, size: int = 16, max_length: int = 64) -> list[dict]:
    """The first `n_batches * size` SST-2 training sentences, tokenized (enough for a smoke test's gradients)."""
    import csv
    from pathlib import Path

    glue = Path(os.environ.get("GLUE_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"))
    with open(glue / "SST-2" / "train.tsv", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[1 : 1 + n_batches * size]
    batches = []
    for i in range(0, len(rows), size):
        chunk = rows[i : i + size]
        encoded = tokenizer([r[0] for r in chunk], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        batches.append({**encoded, "labels": torch.tensor([int(r[1]) for r in chunk])})
    return batches


def _smoke(targets: Sequence[float]) -> None:
    """Prune MiniLM-L6 to each target, then check a 2x128 forward and one AdamW step on the pruned model."""
    import json

    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from hfprune.jobs.demo import default_model_path

    hf_logging.set_verbosity_error()
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    batches = _sst2_batches(tokenizer)
    for target in targets:
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(default_model_path(), num_labels=2)
        start = time.perf_counter()
        info = torch_pruning_prune(model, batches, target)
        seconds = time.perf_counter() - start
        inputs = {"input_ids": torch.randint(0, model.config.vocab_size, (2, 128)), "attention_mask": torch.ones(2, 128, dtype=torch.long)}
        model.train()
        loss = model(**inputs, labels=torch.tensor([0, 1])).loss
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        loss.backward()
        optimizer.step()
        info["smoke"] = {"wall_s": round(seconds, 1), "forward_2x128_loss": round(loss.item(), 4), "optimizer_step": "ok"}
        print(
            f"target {target}x: pruning_ratio {info['pruning_ratio']}, FLOPs ratio {info['flops_ratio']}, "
            f"hidden {info['hidden_size']}, heads {info['heads']}, ffn {info['ffn']}, {seconds:.1f} s"
        )
        print(json.dumps(info, default=str), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _smoke([float(arg) for arg in sys.argv[1:]] or [2.0, 4.0])
