"""What every scorer shares: batches moved to the model's device, the loss of a batch, eval mode with frozen
parameters, and the original-index layout of each unit kind.

Every score tensor is in ORIGINAL indices (`[num_layers, num_heads]`, `[num_layers, intermediate_size]` or
`[num_layers]` of the unpruned model), so scores of an already-pruned model line up with its record. Units
that no longer exist (pruned heads and neurons, dropped layers) score NaN rather than 0: a 0 would read as
"least important" and a ranking would pick the same unit again. For head, FFN and MLP scores higher means
more important (for ablation with a metric other than the loss, see `head_ablation_scores`); for the layer
scores see each function.

Batches are dicts of model keyword arguments (what a `DataLoader` over a tokenized dataset yields); they are
moved to the model's device. A dataloader is iterated once per pass, so it must be re-iterable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from ..engine.record import kept_ffn
from ..errors import PruningError

Batch = Mapping[str, Any]


LossFn = Callable[[Any, Batch], torch.Tensor]


GATE_KINDS = ("heads", "ffn", "mlp")


# ---- shared plumbing ---------------------------------------------------------------------------------
def model_device(model: nn.Module) -> torch.device:
    return getattr(model, "device", None) or next(model.parameters()).device


def gate_dtype(model: nn.Module) -> torch.dtype:
    """float32, or float64 for a float64 model: gradients of half-precision gates would be too coarse."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return torch.promote_types(dtype, torch.float32)


@contextmanager
def scoring_mode(model: nn.Module, grad: bool = False) -> Iterator[None]:
    """Eval mode (no dropout) and frozen parameters; every module's mode and `requires_grad` restored after."""
    modes = [(module, module.training) for module in model.modules()]
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    model.eval()
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        with torch.set_grad_enabled(grad):
            yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        for module, training in modes:
            module.training = training


def to_device(batch: Batch, device: torch.device) -> dict[str, Any]:
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}


def batch_size_of(batch: Batch) -> int:
    return next(value.shape[0] for value in batch.values() if isinstance(value, torch.Tensor) and value.dim())


def examples_of(batch: Batch) -> Iterator[dict[str, Any]]:
    """Split a batch into batches of one example (tensors sliced on dim 0, other values shared)."""
    size = batch_size_of(batch)
    for index in range(size):
        yield {
            key: value[index : index + 1] if isinstance(value, torch.Tensor) and value.dim() else value
            for key, value in batch.items()
        }


def is_causal_lm(model: nn.Module) -> bool:
    return type(model).__name__ in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def batch_loss(model: nn.Module, batch: Batch, loss_fn: LossFn | None) -> torch.Tensor:
    """`loss_fn(outputs, batch)`, else the model's own loss; a causal LM without `labels` predicts its input."""
    causal_lm = is_causal_lm(model)
    no_cache = {"use_cache": False} if causal_lm else {}  # scoring never generates: no KV cache to build
    if loss_fn is not None:
        return loss_fn(model(**batch, **no_cache), batch)
    if "labels" not in batch and causal_lm:
        labels = batch["input_ids"]
        if batch.get("attention_mask") is not None:
            labels = labels.masked_fill(batch["attention_mask"] == 0, -100)
        batch = {**batch, "labels": labels}
    loss = model(**batch, **no_cache).loss
    if loss is None:
        raise PruningError("the model returned no loss: give the batches 'labels' or pass loss_fn")
    return loss


def unit_shape(record: dict, kind: str) -> tuple[int, ...]:
    """The original-index shape of one kind of score ("heads", "ffn" or "mlp")."""
    original = record["original"]
    return {
        "heads": (original["num_layers"], original["num_heads"]),
        "ffn": (original["num_layers"], original["intermediate_size"]),
        "mlp": (original["num_layers"],),
    }[kind]


def present_units(record: dict, kind: str) -> torch.Tensor:
    """Boolean mask, in original indices, of the heads / neurons / MLPs that still exist."""
    present = torch.zeros(unit_shape(record, kind), dtype=torch.bool)
    for position, layer in enumerate(record["kept_layers"]):
        if kind == "heads":
            present[layer, record["kept_heads"][position]] = True
        elif kind == "ffn":
            present[layer, kept_ffn(record, position)] = True
        else:
            present[layer] = bool(kept_ffn(record, position))
    return present


def missing_as_nan(scores: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    return scores.masked_fill(~present.to(scores.device), float("nan"))


def normalize_per_layer(scores: torch.Tensor) -> torch.Tensor:
    """Divide each layer's row by its L2 norm (NaN entries ignored), as Michel et al. (2019) do before ranking
    heads globally: raw gradient magnitudes differ a lot between layers."""
    norms = scores.nan_to_num(0.0).norm(dim=-1, keepdim=True)
    return scores / norms.clamp_min(torch.finfo(scores.dtype).tiny)


# ---- ablation ----------------------------------------------------------------------------------------
def mean_loss(model: nn.Module, dataloader: Iterable[Batch]) -> float:
    """The model's loss averaged over examples (batches weighted by size)."""
    device, total, examples = model_device(model), 0.0, 0
    for batch in dataloader:
        batch = to_device(batch, device)
        size = batch_size_of(batch)
        total += batch_loss(model, batch, None).item() * size
        examples += size
    if examples == 0:
        raise PruningError("the dataloader gave no batches to score")
    return total / examples
