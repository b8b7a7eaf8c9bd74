"""Width pruning: remove channels of the residual stream (`hidden_size`) everywhere they are read or written.

A channel of the residual stream lives in the embeddings (word, position, token type, and ELECTRA's
`embeddings_project`), in every projection that reads the stream (q/k/v, FFN inputs) or writes it (attention
output, FFN output), in every LayerNorm/RMSNorm over it, and in the pooler and task head. Inside the layers the
adapter names these paths; outside them (embeddings, final norm, pooler, head) they are found from the config:
a model built with another `hidden_size` shows which dimensions follow it, so any task head transformers builds
from `hidden_size` is cut without a table of heads. Hidden-sized layers of the head (BERT's pooler, an MLM
transform) keep the same channels, which keeps the model expressible by its config and tied embeddings tied.

Head width never changes. Families that derive it from `hidden_size / num_heads` (BERT, RoBERTa, ELECTRA,
DistilBERT, GPT-2, XLNet) then carry the real attention shapes in the record's patch, unless every layer keeps
`n` heads with `n * head_dim == hidden_size` (the config then says so and stock transformers loads it). The
Llama family has an explicit `head_dim`: width-pruned with uniform heads and FFN it is a plain config.

Pruning is not exact the way heads are: the norms' statistics change with the channels they see.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..errors import PruningError
from .arch import get_adapter
from .arch.base import check_sliceable, resolve
from .checks import check_indices
from .record import kept_hidden, original_hidden_size, save_record
from .structure import PATCH_KEY, stock_class
from .surgery import finish_surgery, start_surgery
from .transaction import all_or_nothing, slice_parameter

# (module, parameter name) pairs sharing one Parameter (tied embeddings), and the dims of it that are channels
_Holders = list[tuple[nn.Module, str]]


def prune_hidden(model: nn.Module, channels: Iterable[int]) -> nn.Module:
    """Remove residual-stream channels (ORIGINAL indices) from the whole model, in place.

    Composes with `prune_heads`, `prune_ffn` and `drop_layers` in any order; channels already gone are a no-op.
    Indices are read strictly, as for the other surgery calls; removing every channel is refused. All or
    nothing: a call that fails half-way leaves the model as it was.
    """
    target, adapter, record = start_surgery(model)
    config = target.config
    size = original_hidden_size(record, config)
    removed = set(check_indices("channels", channels, size))
    current = kept_hidden(record, config)
    kept = [channel for channel in current if channel not in removed]
    if len(kept) == len(current):
        finish_surgery(target)
        return model
    if not kept:
        raise PruningError(f"removing these {len(removed)} channels would leave the model no hidden channels")
    adapter.check_width_prunable(target, len(kept))
    outer = _outer_channel_dims(target)
    for holders, _ in outer:
        check_sliceable(getattr(holders[0][0], holders[0][1]))
    where = {channel: index for index, channel in enumerate(current)}
    index = torch.as_tensor([where[channel] for channel in kept], dtype=torch.long)

    record["original"].setdefault("hidden_size", size)
    record["original"].setdefault("head_dim", adapter.head_dim(config))
    try:
        with all_or_nothing(target):
            for layer in adapter.get_layers(target):
                adapter.slice_hidden(layer, index)
            for holders, dims in outer:
                _slice_shared(holders, dims, index)
            for name in adapter.model_hidden_attributes:
                setattr(target.base_model, name, len(kept))
            record["kept_hidden"] = kept
            save_record(target, record)
    except BaseException:
        _retie(outer)  # the rollback restored each tensor once: point every holder back at it
        raise
    finish_surgery(target)
    return model


def channel_sites(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """`(module, time_major)` for every module whose output lies in the residual-stream channels and is cut with
    them: the norms over the stream (in the layers, at the embeddings, at the end) and hidden-sized outer
    projections (ELECTRA's `embeddings_project`, BERT's pooler, an MLM transform). Where width importance looks."""
    adapter = get_adapter(model)
    sites = [
        (resolve(layer, path), adapter.time_major)
        for layer in adapter.get_layers(model)
        for path in adapter.hidden_norms
    ]
    seen = {id(module) for module, _ in sites}
    for holders, dims in _outer_channel_dims(model):
        for module, name in holders:
            if name != "weight" or id(module) in seen:
                continue
            rows = 1 if isinstance(module, Conv1D) else 0  # the weight dim that indexes the output
            if (isinstance(module, (nn.Linear, Conv1D)) and rows in dims) or (_is_norm(module) and dims == (0,)):
                sites.append((module, False))
                seen.add(id(module))
    return sites


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith(("RMSNorm", "LayerNorm"))


def _outer_channel_dims(model: nn.Module) -> list[tuple[_Holders, tuple[int, ...]]]:
    """Parameters outside the layers with dimensions of the hidden size, and which dimensions those are.

    Builds the model's stock class twice on the meta device, with no layers, at the current and at another
    hidden size: the dimensions that change are channels. Tied parameters come as one entry with all holders.
    """
    adapter, config = get_adapter(model), model.config
    size = config.hidden_size
    probes = [_probe(model, size), _probe(model, adapter.probe_hidden_size(config))]
    shapes = [{name: p.shape for name, p in probe.named_parameters(remove_duplicate=False)} for probe in probes]
    buffers = [{name: b.shape for name, b in probe.named_buffers()} for probe in probes]
    changed = sorted(name for name in buffers[0] if buffers[0][name] != buffers[1].get(name))
    if changed:
        raise PruningError(f"cannot prune the width: buffer {changed[0]} depends on hidden_size")

    layers = adapter.get_layers(model)
    layer_params = {id(p) for p in layers.parameters()}
    entries: dict[int, tuple[_Holders, tuple[int, ...]]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if id(parameter) in layer_params:
            continue
        if name not in shapes[0] or name not in shapes[1]:
            raise PruningError(
                f"cannot prune the width: {name} is not part of the model its config builds, so hfprune cannot "
                "tell which of its dimensions are hidden channels"
            )
        if parameter.shape != shapes[0][name]:
            raise PruningError(
                f"cannot prune the width: {name} is {list(parameter.shape)}, a model built from the config has "
                f"{list(shapes[0][name])}"
            )
        dims = tuple(d for d in range(parameter.dim()) if shapes[0][name][d] != shapes[1][name][d])
        if any(parameter.shape[d] != size for d in dims):
            raise PruningError(f"cannot prune the width: {name} does not follow hidden_size")
        if not dims:
            continue
        module_path, _, attribute = name.rpartition(".")
        holder = (model.get_submodule(module_path), attribute)
        holders, _ = entries.setdefault(id(parameter), ([], dims))
        holders.append(holder)
    return list(entries.values())


def _probe(model: nn.Module, hidden_size: int) -> nn.Module:
    """The model's stock class, without layers and at `hidden_size`, on the meta device."""
    adapter = get_adapter(model)
    config = copy.deepcopy(model.config)
    setattr(config, PATCH_KEY, None)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    if adapter.uniform_heads_in_config:  # as `save_record` writes it: an explicit head_dim (rotary embeddings)
        adapter.set_head_counts(config, adapter.num_heads(config), adapter.num_kv_heads(config), adapter.head_dim(model.config))
    adapter.set_hidden_size(config, hidden_size)
    setattr(config, adapter.num_layers_field, 0)
    with torch.device("meta"):
        return stock_class(model)(config)


def _slice_shared(holders: _Holders, dims: tuple[int, ...], index: torch.Tensor) -> None:
    """Cut `dims` of one (possibly tied) parameter and give every holder the same new Parameter."""
    module, name = holders[0]
    for dim in dims:
        slice_parameter(module, name, index, dim)
    _sync_attributes(module)
    for other, other_name in holders[1:]:
        other._parameters[other_name] = module._parameters[name]
        _sync_attributes(other)


def _retie(outer: list[tuple[_Holders, tuple[int, ...]]]) -> None:
    for holders, _ in outer:
        module, name = holders[0]
        for other, other_name in holders[1:]:
            other._parameters[other_name] = module._parameters[name]


def _sync_attributes(module: nn.Module) -> None:
    """Make a layer's size attributes match its (sliced) weight."""
    weight = getattr(module, "weight", None)
    if weight is None:
        return
    if isinstance(module, Conv1D):
        module.nx, module.nf = weight.shape
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = weight.shape
    elif isinstance(module, nn.Embedding):
        module.embedding_dim = weight.shape[1]
    elif isinstance(getattr(module, "normalized_shape", None), tuple):
        module.normalized_shape = tuple(weight.shape)


__all__ = ["channel_sites", "prune_hidden"]
