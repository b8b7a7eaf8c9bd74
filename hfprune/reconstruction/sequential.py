"""`reconstruct`: refit what a pruned model kept, layer by layer, so that each block's output matches the dense
model's on calibration data (Kwon et al. 2022's mask tuning, and a damped least-squares refit of the output
projections as in SparseGPT / llm-compressor's sequential pipeline).

Sequential: the calibration batches are run once up to the first layer (a pre-hook catches that layer's inputs);
then each layer runs on the hidden states the already-reconstructed layers before it produced. Within a layer the
attention block is fitted first, then the MLP on the inputs after the refitted attention; then the layer runs once
more to give the next layer its inputs. One block's statistics are in memory at a time (plus the cached hidden
states of the calibration batches).

The target of a block is the DENSE block (the same original layer, matched by `kept_layers`) applied to the input
the PRUNED block sees: the output of its output projection (`o_proj` / `down_proj`; BERT: `attention.output.dense`
/ `output.dense`, before the residual and the LayerNorm). Only the kept weights of those projections change, so the
result is an ordinary hfprune model. Not compensated: dropped layers and blocks removed whole (no weights left to
refit). Refused in one line: families other than BERT (RoBERTa, ELECTRA) and Llama (Mistral, Qwen2, Qwen3),
width-pruned models (the dense block works on other channels), and a dense model that lacks a kept layer.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..engine.arch import get_adapter
from ..engine.arch.base import ArchAdapter, resolve
from ..engine.arch.bert import BertAdapter
from ..engine.arch.llama import LlamaAdapter
from ..engine.record import get_record
from ..engine.structure import EmptyMLP
from ..errors import PruningError
from ..progress import Progress
from .fits import METHODS, least_squares_fit, scale_fit
from .statistics import BlockStatistics

DEFAULT_DAMPING = 0.01
"""lambda / mean(diag) of the normal matrix (SparseGPT's 1%): enough to keep a rarely excited direction put."""

# family -> block -> the module whose input is the block's input (its call is replayed on the dense layer)
BLOCK_MODULES: dict[type[ArchAdapter], dict[str, str]] = {
    BertAdapter: {"attention": "attention.self", "mlp": "intermediate"},
    LlamaAdapter: {"attention": "self_attn", "mlp": "mlp"},
}
NOT_MODEL_INPUTS = ("labels", "label", "idx")


@dataclass
class BlockFit:
    """One refitted block: its original layer id, what it keeps, and its relative output error
    ||Y - Y_pruned||^2 / ||Y||^2 on the calibration tokens before and after the refit."""

    layer: int
    block: str
    units: int
    error_before: float
    error_after: float
    seconds: float


@dataclass
class ReconstructionReport:
    """What `reconstruct` did: the method, its damping, the calibration tokens and every block's fit."""

    method: str
    damping: float
    tokens: int = 0
    seconds: float = 0.0
    blocks: list[BlockFit] = field(default_factory=list)

    @property
    def mean_error_before(self) -> float:
        return sum(b.error_before for b in self.blocks) / max(len(self.blocks), 1)

    @property
    def mean_error_after(self) -> float:
        return sum(b.error_after for b in self.blocks) / max(len(self.blocks), 1)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean_error_before": self.mean_error_before, "mean_error_after": self.mean_error_after}


class _Stop(Exception):
    """Raised by a hook once it has what it needs: the rest of the forward pass is not run."""


@dataclass
class _LayerInput:
    """One calibration batch as a layer receives it, and which of its tokens are real (not padding)."""

    args: tuple
    kwargs: dict[str, Any]
    mask: torch.Tensor | None


def reconstruct(
    pruned: nn.Module,
    dense: nn.Module,
    dataloader: Iterable[Mapping[str, Any]],
    *,
    method: str = "least_squares",
    damping: float = DEFAULT_DAMPING,
    max_batches: int | None = None,
    progress: Progress | None = None,
) -> ReconstructionReport:
    """Refit the kept units of every layer of `pruned` (in place) so that each block matches `dense`.

    Args:
        pruned: a model pruned with hfprune (heads, FFN neurons, layers); `dense`: the model it was pruned from.
        dataloader: batches of model inputs (an `attention_mask` marks the tokens that count; labels are ignored).
            Use training data: calibrating on the split you report would leak it into the weights.
        method: "least_squares" (every kept column of each output projection and its bias) or "scales" (one
            scale per kept head and FFN neuron, folded into the output projections' columns).
        damping: ridge towards the current weights, relative to the mean diagonal of the normal matrix.
        max_batches: use at most this many batches. progress: `progress("reconstruct", layers done, layers)`.
    """
    adapter = check_reconstructable(pruned, dense, method, damping)
    start, training = time.perf_counter(), (pruned.training, dense.training)
    pruned.eval(), dense.eval()
    report = ReconstructionReport(method=method, damping=damping)
    try:
        with torch.no_grad():
            cached = _first_layer_inputs(pruned, adapter, dataloader, max_batches)
            report.tokens = sum(_tokens(entry) for entry in cached)
            layers, dense_layers = adapter.get_layers(pruned), adapter.get_layers(dense)
            dense_position = {original: i for i, original in enumerate(get_record(dense)["kept_layers"])}
            for position, (layer, original) in enumerate(zip(layers, get_record(pruned)["kept_layers"])):
                dense_layer = dense_layers[dense_position[original]]
                for block in ("attention", "mlp"):
                    if _has_block(adapter, layer, block) and not _same_as_dense(adapter, layer, dense_layer, block):
                        report.blocks.append(_refit_block(pruned, adapter, layer, dense_layer, block, cached, original, method, damping))
                cached = [_next_input(layer, entry) for entry in cached]
                if progress is not None:
                    progress("reconstruct", position + 1, len(layers))
    finally:
        pruned.train(training[0]), dense.train(training[1])
    report.seconds = time.perf_counter() - start
    return report


def check_reconstructable(pruned: nn.Module, dense: nn.Module, method: str, damping: float) -> ArchAdapter:
    """Refuse, in one line and before any work, what `reconstruct` cannot refit; returns the family's adapter."""
    if method not in METHODS:
        raise PruningError(f"unknown reconstruction method {method!r}; choose from {', '.join(METHODS)}")
    if not damping >= 0 or damping == float("inf"):
        raise PruningError(f"damping must be a finite number >= 0, got {damping}")
    adapter = get_adapter(pruned)
    if type(adapter) not in BLOCK_MODULES:
        families = ", ".join(sorted(t for a in BLOCK_MODULES for t in a.model_types))
        raise PruningError(f"reconstruction supports {families}, not {pruned.config.model_type}")
    if dense.config.model_type != pruned.config.model_type:
        raise PruningError(f"the dense model is a {dense.config.model_type}, the pruned one a {pruned.config.model_type}")
    record, dense_record = get_record(pruned), get_record(dense)
    if record.get("kept_hidden") is not None or dense_record.get("kept_hidden") is not None:
        raise PruningError("reconstruction does not support width-pruned models (prune_hidden): the dense blocks "
                           "work on other channels; reconstruct before pruning the width")  # fmt: skip
    if dense.config.hidden_size != pruned.config.hidden_size or dense_record["original"] != record["original"]:
        raise PruningError("the dense model is not the model this one was pruned from (other original sizes)")
    missing = sorted(set(record["kept_layers"]) - set(dense_record["kept_layers"]))
    if missing:
        raise PruningError(f"the dense model lacks layers {missing} that the pruned model keeps")
    return adapter


def _has_block(adapter: ArchAdapter, layer: nn.Module, block: str) -> bool:
    """Whether the block still has an output projection to refit (not removed whole)."""
    if block == "attention":
        return adapter.has_attention(layer) and _in_features(resolve(layer, adapter.output)) > 0
    parent = layer.get_submodule(adapter.ffn_output.rpartition(".")[0])
    return not isinstance(parent, EmptyMLP) and _in_features(resolve(layer, adapter.ffn_output)) > 0


def _same_as_dense(adapter: ArchAdapter, layer: nn.Module, dense_layer: nn.Module, block: str) -> bool:
    """An untouched block (nothing pruned, nothing refitted) already is the dense block: nothing to fit."""
    path = adapter.output if block == "attention" else adapter.ffn_output
    weight, dense_weight = resolve(layer, path).weight, resolve(dense_layer, path).weight
    return weight.shape == dense_weight.shape and torch.equal(weight, dense_weight.to(weight))


def _in_features(projection: nn.Module) -> int:
    return projection.weight.shape[1] if isinstance(projection, nn.Linear) else 0


def _first_layer_inputs(
    model: nn.Module, adapter: ArchAdapter, dataloader: Iterable[Mapping[str, Any]], max_batches: int | None
) -> list[_LayerInput]:
    """Each calibration batch as the first layer receives it (the model runs only up to there)."""
    device = next(model.parameters()).device
    cached: list[_LayerInput] = []
    current: dict[str, torch.Tensor | None] = {}

    def catch(module, args, kwargs):
        cached.append(_LayerInput(args, kwargs, current["mask"]))
        raise _Stop

    handle = adapter.get_layers(model)[0].register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for number, batch in enumerate(dataloader):
            if max_batches is not None and number >= max_batches:
                break
            inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items() if k not in NOT_MODEL_INPUTS}
            current["mask"] = inputs.get("attention_mask")
            try:
                model(**inputs, use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    if not cached:
        raise PruningError("reconstruction needs calibration data: the dataloader gave no batch")
    return cached


def _tokens(entry: _LayerInput) -> int:
    hidden = _hidden(entry)
    return int(entry.mask.sum()) if entry.mask is not None else hidden.shape[0] * hidden.shape[1]


def _hidden(entry: _LayerInput) -> torch.Tensor:
    return entry.args[0] if entry.args else entry.kwargs["hidden_states"]


def _next_input(layer: nn.Module, entry: _LayerInput) -> _LayerInput:
    """The same batch as the next layer receives it: this (already refitted) layer's output."""
    output = layer(*entry.args, **entry.kwargs)
    hidden = output[0] if isinstance(output, tuple) else output
    if entry.args:
        return _LayerInput((hidden, *entry.args[1:]), entry.kwargs, entry.mask)
    return _LayerInput(entry.args, {**entry.kwargs, "hidden_states": hidden}, entry.mask)


def _refit_block(
    model: nn.Module, adapter: ArchAdapter, layer: nn.Module, dense_layer: nn.Module, block: str,
    cached: list[_LayerInput], original: int, method: str, damping: float,
) -> BlockFit:  # fmt: skip
    """Collect one block's statistics on the cached inputs, refit its output projection, write it back."""
    start = time.perf_counter()
    path = adapter.output if block == "attention" else adapter.ffn_output
    projection = resolve(layer, path)
    stats = _block_statistics(adapter, layer, dense_layer, block, path, cached)
    weight, bias = projection.weight, projection.bias
    if method == "scales":
        unit = adapter.head_dim(model.config) if block == "attention" else 1
        new_weight, new_bias = scale_fit(stats, weight, bias, unit, damping)
    else:
        new_weight, new_bias = least_squares_fit(stats, weight, bias, damping)
    before, after = stats.relative_error(weight, bias), stats.relative_error(new_weight, new_bias)
    weight.copy_(new_weight.to(weight))
    if bias is not None:
        bias.copy_(new_bias.to(bias))
    units = weight.shape[1] // (adapter.head_dim(model.config) if block == "attention" else 1)
    return BlockFit(original, block, units, before, after, time.perf_counter() - start)


def _block_statistics(
    adapter: ArchAdapter, layer: nn.Module, dense_layer: nn.Module, block: str, path: str, cached: list[_LayerInput]
) -> BlockStatistics:
    """Run the layer on every cached batch up to the block's output projection: X is what that projection
    receives, Y what the dense block gives for the same block input."""
    module_path = BLOCK_MODULES[type(adapter)][block]
    module, dense_module = layer.get_submodule(module_path), dense_layer.get_submodule(module_path)
    projection, dense_projection = resolve(layer, path), resolve(dense_layer, path)
    inside = path.startswith(f"{module_path}.")  # Llama: the block module ends with its projection; BERT: not
    stats = BlockStatistics(projection.weight.shape[1], projection.weight.shape[0], _statistics_device(projection))
    captured: dict[str, Any] = {}

    def add_when_ready() -> None:
        if "x" in captured and "y" in captured:
            stats.add(captured.pop("x"), captured.pop("y"), captured["mask"])
            raise _Stop  # the rest of the layer is not needed

    def catch_inputs(module, args):
        captured["x"] = args[0]
        add_when_ready()

    def dense_target(module, args, kwargs, output):
        target = dense_module(*args, **kwargs)
        target = target[0] if isinstance(target, tuple) else target
        captured["y"] = target if inside else dense_projection(target)
        add_when_ready()

    handles = [
        projection.register_forward_pre_hook(catch_inputs),
        module.register_forward_hook(dense_target, with_kwargs=True),
    ]
    try:
        for entry in cached:
            captured.clear()
            captured["mask"] = entry.mask
            try:
                layer(*entry.args, **entry.kwargs)
            except _Stop:
                pass
    finally:
        for handle in handles:
            handle.remove()
    return stats


def _statistics_device(projection: nn.Module) -> torch.device:
    """float64 statistics live beside the weights, except on MPS (no float64 there)."""
    device = projection.weight.device
    return torch.device("cpu") if device.type == "mps" else device


__all__ = ["BLOCK_MODULES", "DEFAULT_DAMPING", "BlockFit", "ReconstructionReport", "check_reconstructable", "reconstruct"]
