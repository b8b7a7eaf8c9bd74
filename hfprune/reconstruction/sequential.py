"""`reconstruct`: refit what a pruned model kept, layer by layer, so that each block's output matches the dense
model's on calibration data (Kwon et al. 2022's mask tuning, and a damped least-squares refit of the output
projections as in SparseGPT / llm-compressor's sequential pipeline).

Sequential: the calibration batches are run once up to the first layer (a pre-hook catches that layer's inputs);
then each layer runs on the hidden states the already-reconstructed layers before it produced. Within a layer the
attention block is fitted first, then the MLP on the inputs after the refitted attention; then the layer runs once
more to give the next layer its inputs. One block's statistics are in memory at a time (plus the cached hidden
states of the calibration batches, twice with the "stream" target: the pruned model's and the dense model's).

Two targets (`TARGETS`). "stream" (the default): the dense model runs beside the pruned one, and each block's
output projection is fitted so that it plus the residual it is added to lands where the dense model's residual
stream is after the same block: Y = Y_dense + R_dense - R_pruned. So a block also makes up for the error the layers
before it left, dropped layers and whole removed blocks included (SmolLM2-135M at 85% of its parameters, 8,192
calibration tokens: perplexity 105.6 -> 75.9, against 96.3 with "block"). "block": the DENSE block of the same
original layer (matched by `kept_layers`) applied to the input the PRUNED block sees, as SparseGPT does; it cannot
make up for dropped layers, and it is the default of the bias-only fit (`default_target`). Both fit the output
projections' outputs (`o_proj` / `down_proj`; BERT: `attention.output.dense` / `output.dense`, before the residual
and the LayerNorm) and change only their kept weights, so the result is an ordinary hfprune model (method "bias" on Llama first gives the projections zero biases
and turns on the config's flags for them: `biases`).

Calibration tokens matter: a refit of a projection with n inputs on few more than n tokens follows those tokens
(SmolLM2 at 2,048 tokens with 1,536-wide down projections: 142.7 with "stream", worse than no refit), so
`reconstruct` warns below `MIN_TOKENS_PER_INPUT` tokens per input. Refused in one line: families other than BERT
(RoBERTa, ELECTRA) and Llama (Mistral, Qwen2, Qwen3), width-pruned models (the dense block works on other channels),
and a dense model that lacks a kept layer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..constants import RECONSTRUCTION_METHODS
from ..engine.arch import get_adapter
from ..engine.arch.base import ArchAdapter, resolve
from ..engine.arch.bert import BertAdapter
from ..engine.arch.llama import LlamaAdapter
from ..engine.layer_inputs import LayerInput, StopForward, first_layer_inputs, next_input
from ..engine.record import get_record
from ..engine.structure import EmptyMLP
from ..errors import PruningError
from ..progress import Progress
from .biases import add_output_biases, check_biases
from .fits import bias_fit, least_squares_fit, scale_fit
from .statistics import BlockStatistics, ResidualStatistics

logger = logging.getLogger(__name__)

DEFAULT_DAMPING = 0.01
"""lambda / mean(diag) of the normal matrix (SparseGPT's 1%): enough to keep a rarely excited direction put."""

# family -> block -> the module whose input is the block's input (its call is replayed on the dense layer)
BLOCK_MODULES: dict[type[ArchAdapter], dict[str, str]] = {
    BertAdapter: {"attention": "attention.self", "mlp": "intermediate"},
    LlamaAdapter: {"attention": "self_attn", "mlp": "mlp"},
}
# family -> block -> the module whose first input is the residual stream the block's output projection is added to
RESIDUAL_MODULES: dict[type[ArchAdapter], dict[str, str]] = {
    BertAdapter: {"attention": "attention.self", "mlp": "intermediate"},
    LlamaAdapter: {"attention": "input_layernorm", "mlp": "post_attention_layernorm"},
}
MIN_TOKENS_PER_INPUT = 4
"""Below this many calibration tokens per input of the widest refitted projection, `reconstruct` warns."""
TARGETS = ("block", "stream")
"""What a block is fitted to (`reconstruct(target=...)`): the dense block on the pruned model's input ("block"),
or the dense model's own residual stream ("stream")."""


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
    target: str = "stream"
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


def reconstruct(
    pruned: nn.Module,
    dense: nn.Module,
    dataloader: Iterable[Mapping[str, Any]],
    *,
    method: str = "least_squares",
    target: str | None = None,
    damping: float = DEFAULT_DAMPING,
    max_batches: int | None = None,
    progress: Progress | None = None,
) -> ReconstructionReport:
    """Refit the kept units of every layer of `pruned` (in place) so that each block matches `dense`.

    Args:
        pruned: a model pruned with hfprune (heads, FFN neurons, layers); `dense`: the model it was pruned from.
        dataloader: batches of model inputs (an `attention_mask` marks the tokens that count; labels are ignored).
            Use training data: calibrating on the split you report would leak it into the weights.
        method: "least_squares" (every kept column of each output projection and its bias), "scales" (one
            scale per kept head and FFN neuron, folded into the output projections' columns) or "bias" (the output
            projections' biases alone, FLAP's compensation; a Llama model gets zero biases first, its config's
            `attention_bias` and `mlp_bias` turned on: see `reconstruction.biases`).
        target: "block": each block matches the dense block run on the input the pruned block sees; "stream": each
            block's output projection plus the residual it is added to matches the dense model's own residual
            stream at that point, so the block also makes up for the error of the layers before it, dropped
            layers included (the dense model runs beside the pruned one). Default (None): `default_target(method)`.
        damping: ridge towards the current weights, relative to the mean diagonal of the normal matrix.
        max_batches: use at most this many batches. progress: `progress("reconstruct", layers done, layers)`.
    """
    target = default_target(method) if target is None else target
    adapter = check_reconstructable(pruned, dense, method, damping, target)
    if method == "bias":
        add_output_biases(pruned, adapter)
    start, training = time.perf_counter(), (pruned.training, dense.training)
    pruned.eval(), dense.eval()
    report = ReconstructionReport(method=method, damping=damping, target=target)
    try:
        with torch.no_grad():
            cached = first_layer_inputs(pruned, dataloader, max_batches)
            report.tokens = sum(entry.tokens for entry in cached)
            warn_if_few_tokens(pruned, adapter, report.tokens)
            layers, dense_layers = adapter.get_layers(pruned), adapter.get_layers(dense)
            dense_position = {original: i for i, original in enumerate(get_record(dense)["kept_layers"])}
            # "stream": the dense model's own hidden states; the first layer's inputs are the same (same embeddings)
            dense_cached, dense_next = (list(cached) if target == "stream" else None), 0
            for position, (layer, original) in enumerate(zip(layers, get_record(pruned)["kept_layers"])):
                dense_layer = dense_layers[dense_position[original]]
                while dense_cached is not None and dense_next < dense_position[original]:  # through dropped layers too
                    dense_cached = [next_input(dense_layers[dense_next], entry) for entry in dense_cached]
                    dense_next += 1
                for block in ("attention", "mlp"):
                    if has_block(adapter, layer, block) and (target == "stream" or not _same_as_dense(adapter, layer, dense_layer, block)):
                        report.blocks.append(refit_block(pruned, adapter, layer, dense_layer, block, cached, dense_cached, original, method, damping))
                cached = [next_input(layer, entry) for entry in cached]
                if progress is not None:
                    progress("reconstruct", position + 1, len(layers))
    finally:
        pruned.train(training[0]), dense.train(training[1])
    report.seconds = time.perf_counter() - start
    return report


def default_target(method: str) -> str:
    """"stream" for the fits of the weights; "block" for the bias alone, which is then exactly FLAP's compensation
    (b + W_removed mean(X_removed)). Fitted to the stream, a bias must carry the mean drift of the residual stream,
    which a few tokens with massive activations dominate: SmolLM2 at 85% of its parameters went from perplexity 68.5
    (no refit) to 442 with "stream", against 67.3 with "block" (2,048 test tokens)."""
    return "block" if method == "bias" else "stream"


def check_reconstructable(
    pruned: nn.Module, dense: nn.Module, method: str, damping: float, target: str = "stream"
) -> ArchAdapter:
    """Refuse, in one line and before any work, what `reconstruct` cannot refit; returns the family's adapter."""
    if method not in RECONSTRUCTION_METHODS:
        raise PruningError(f"unknown reconstruction method {method!r}; choose from {', '.join(RECONSTRUCTION_METHODS)}")
    if target not in TARGETS:
        raise PruningError(f"unknown reconstruction target {target!r}; choose from {', '.join(TARGETS)}")
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
    if method == "bias":
        check_biases(pruned, adapter)
    return adapter


def warn_if_few_tokens(model: nn.Module, adapter: ArchAdapter, tokens: int) -> None:
    """A refit on too few tokens fits them rather than the model: say so, and how many would do."""
    blocks = (("attention", adapter.output), ("mlp", adapter.ffn_output))
    layers = adapter.get_layers(model)
    widest = max((_in_features(resolve(layer, path)) for layer in layers for block, path in blocks if has_block(adapter, layer, block)), default=0)
    if tokens < MIN_TOKENS_PER_INPUT * widest:
        logger.warning(
            f"reconstruction calibrates on {tokens:,} tokens, fewer than {MIN_TOKENS_PER_INPUT} per input of the widest "
            f"refitted projection ({widest:,}): the refit may follow those tokens; give at least "
            f"{MIN_TOKENS_PER_INPUT * widest:,} (more scoring examples)"
        )


def has_block(adapter: ArchAdapter, layer: nn.Module, block: str) -> bool:
    """Whether the block still has an output projection to refit (not removed whole)."""
    if block == "attention":
        return adapter.has_attention(layer) and _in_features(resolve(layer, adapter.output)) > 0
    parent = layer.get_submodule(adapter.ffn_output.rpartition(".")[0])
    return not isinstance(parent, EmptyMLP) and _in_features(resolve(layer, adapter.ffn_output)) > 0


def _same_as_dense(adapter: ArchAdapter, layer: nn.Module, dense_layer: nn.Module, block: str) -> bool:
    """An untouched block (nothing pruned, nothing refitted) already is the dense block: nothing to fit."""
    path = adapter.output if block == "attention" else adapter.ffn_output
    projection, dense_projection = resolve(layer, path), resolve(dense_layer, path)
    if projection.weight.shape != dense_projection.weight.shape:
        return False
    pairs = [(projection.weight, dense_projection.weight), (_bias_or_zeros(projection), _bias_or_zeros(dense_projection))]
    return all(torch.equal(mine, theirs.to(mine)) for mine, theirs in pairs)


def _bias_or_zeros(projection: nn.Module) -> torch.Tensor:
    """The projection's bias; zeros where it has none (a zero bias given for bias compensation changes nothing)."""
    return projection.bias if projection.bias is not None else projection.weight.new_zeros(projection.weight.shape[0])


def _in_features(projection: nn.Module) -> int:
    return projection.weight.shape[1] if isinstance(projection, nn.Linear) else 0


def refit_block(
    model: nn.Module, adapter: ArchAdapter, layer: nn.Module, dense_layer: nn.Module, block: str,
    cached: list[LayerInput], dense_cached: list[LayerInput] | None, original: int, method: str, damping: float,
) -> BlockFit:  # fmt: skip
    """Collect one block's statistics on the cached inputs, refit its output projection, write it back.
    `dense_cached`: the dense model's inputs of the same layer (target "stream"), or None (target "block")."""
    start = time.perf_counter()
    path = adapter.output if block == "attention" else adapter.ffn_output
    projection = resolve(layer, path)
    stats = _new_statistics(projection, method)
    if dense_cached is None:
        _block_statistics(stats, adapter, layer, dense_layer, block, path, cached)
    else:
        _stream_statistics(stats, adapter, layer, dense_layer, block, path, cached, dense_cached)
    weight, bias = projection.weight, projection.bias
    if method == "scales":
        unit = adapter.head_dim(model.config) if block == "attention" else 1
        new_weight, new_bias = scale_fit(stats, weight, bias, unit, damping)
    elif method == "bias":
        new_weight, new_bias = bias_fit(stats, weight)
    else:
        new_weight, new_bias = least_squares_fit(stats, weight, bias, damping)
    before, after = stats.relative_error(weight, bias), stats.relative_error(new_weight, new_bias)
    weight.copy_(new_weight.to(weight))
    if bias is not None:
        bias.copy_(new_bias.to(bias))
    units = weight.shape[1] // (adapter.head_dim(model.config) if block == "attention" else 1)
    return BlockFit(original, block, units, before, after, time.perf_counter() - start)


def _new_statistics(projection: nn.Module, method: str) -> BlockStatistics | ResidualStatistics:
    """What the method's fit needs: X~'X~ and X~'Y, or for the bias alone the residual's sum and norm."""
    device = _statistics_device(projection)
    if method == "bias":
        return ResidualStatistics(projection.weight, device)
    return BlockStatistics(projection.weight.shape[1], projection.weight.shape[0], device)


def _block_statistics(
    stats: BlockStatistics | ResidualStatistics, adapter: ArchAdapter, layer: nn.Module, dense_layer: nn.Module,
    block: str, path: str, cached: list[LayerInput],
) -> None:  # fmt: skip
    """Run the layer on every cached batch up to the block's output projection, into `stats`: X is what that
    projection receives, Y what the dense block gives for the same block input."""
    module_path = BLOCK_MODULES[type(adapter)][block]
    module, dense_module = layer.get_submodule(module_path), dense_layer.get_submodule(module_path)
    projection, dense_projection = resolve(layer, path), resolve(dense_layer, path)
    inside = path.startswith(f"{module_path}.")  # Llama: the block module ends with its projection; BERT: not
    captured: dict[str, Any] = {}

    def add_when_ready() -> None:
        if "x" in captured and "y" in captured:
            stats.add(captured.pop("x"), captured.pop("y"), captured["mask"])
            raise StopForward  # the rest of the layer is not needed

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
            except StopForward:
                pass
    finally:
        for handle in handles:
            handle.remove()


def _stream_statistics(
    stats: BlockStatistics | ResidualStatistics, adapter: ArchAdapter, layer: nn.Module, dense_layer: nn.Module,
    block: str, path: str, cached: list[LayerInput], dense_cached: list[LayerInput],
) -> None:  # fmt: skip
    """Into `stats`: X is what the pruned projection receives; Y = Y_dense + R_dense - R_pruned, the output that puts
    the pruned residual stream where the dense model's is after this block: Y_dense is the dense projection's output
    on the dense model's own input, R the residual the projection's output is added to (before BERT's LayerNorm)."""
    residual_path = RESIDUAL_MODULES[type(adapter)][block]
    projection, dense_projection = resolve(layer, path), resolve(dense_layer, path)
    captured: dict[str, Any] = {}

    def catch_residual(key):
        def hook(module, args, kwargs):
            captured[key] = args[0] if args else kwargs["hidden_states"]

        return hook

    def catch_dense_output(module, args, output):
        captured["y"] = output
        raise StopForward

    def catch_inputs(module, args):
        captured["x"] = args[0]
        raise StopForward

    handles = [
        dense_layer.get_submodule(residual_path).register_forward_pre_hook(catch_residual("dense"), with_kwargs=True),
        dense_projection.register_forward_hook(catch_dense_output),
        layer.get_submodule(residual_path).register_forward_pre_hook(catch_residual("pruned"), with_kwargs=True),
        projection.register_forward_pre_hook(catch_inputs),
    ]
    try:
        for entry, dense_entry in zip(cached, dense_cached):
            captured.clear()
            for module, inputs in ((dense_layer, dense_entry), (layer, entry)):
                try:
                    module(*inputs.args, **inputs.kwargs)
                except StopForward:
                    pass
            target = captured["y"] + captured["dense"] - captured["pruned"]
            stats.add(captured["x"], target, entry.mask)
    finally:
        for handle in handles:
            handle.remove()


def _statistics_device(projection: nn.Module) -> torch.device:
    """float64 statistics live beside the weights, except on MPS (no float64 there)."""
    device = projection.weight.device
    return torch.device("cpu") if device.type == "mps" else device


__all__ = [
    "BLOCK_MODULES", "DEFAULT_DAMPING", "MIN_TOKENS_PER_INPUT", "RESIDUAL_MODULES", "TARGETS", "BlockFit", "ReconstructionReport",
    "check_reconstructable", "default_target", "has_block", "reconstruct", "refit_block", "warn_if_few_tokens",
]  # fmt: skip
