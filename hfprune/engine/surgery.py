"""Physical removal of attention heads, FFN neurons and whole layers (in place; returns the model).

All indices are those of the ORIGINAL model, as in transformers 4's `prune_heads`: calls compose, and
pruning something already gone is a no-op. Every call is all or nothing: input, the model's record and
the layers to be sliced are checked before anything changes, and a call that still fails half-way (an
exception, Ctrl-C) puts every weight, module and config field back as it was. The new structure is
written to `config.hfprune` together with the weights.

Indices are read strictly (see `hfprune.engine.checks`): ints, numpy integers and integer tensors only; floats,
booleans and negative indices are refused; two keys naming one layer are merged.

A `torch.compile` model or an `nn.DataParallel` is pruned through to the model inside it; the compiled
model recompiles on its next call (dynamo guards on the new shapes), but hooks (masks) added after
compiling are ignored by it. DDP/FSDP wrappers and models with PEFT adapters are refused.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

from torch import nn

from ..errors import PruningError
from .arch import get_adapter
from .checks import check_indices, check_mapping, model_for_surgery
from .record import (
    check_record,
    gqa_group_size,
    kept_ffn,
    kv_groups,
    save_record,
)
from .transaction import all_or_nothing


def start_surgery(model) -> tuple[nn.Module, object, dict]:
    """The model to change, its adapter and a private copy of its checked record."""
    target = model_for_surgery(model)
    adapter = get_adapter(target)
    return target, adapter, copy.deepcopy(check_record(target))


def finish_surgery(model: nn.Module) -> None:
    # A GGUF checkpoint is dequantized to plain Linear layers on load but keeps its quantizer, and
    # save_pretrained refuses such a model. A pruned model is a new fp model: detach the quantizer.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and getattr(quantizer.quantization_config, "quant_method", None) == "gguf":
        quantizer.remove_quantization_config(model)


def prune_heads(model: nn.Module, heads_to_prune: Mapping[int, Iterable[int]]) -> nn.Module:
    """Remove attention heads, `{layer: [heads]}` in original indices.

    A layer that loses every head stops computing attention at all. For grouped-query attention, the
    heads that remain must fill whole key/value groups evenly: prune whole groups, or the same number
    of query heads in every surviving group. Indices are ints or integer tensors (see the module notes).
    """
    target, adapter, record = start_surgery(model)
    original = record["original"]
    requested = check_mapping("heads_to_prune", heads_to_prune, original["num_layers"], original["num_heads"])
    head_dim = adapter.head_dim(target.config)
    layers = adapter.get_layers(target)

    plan = []  # (position, new kept heads), all checked before any change
    for layer, heads in requested.items():
        if layer not in record["kept_layers"]:
            continue  # the layer itself was dropped
        position = record["kept_layers"].index(layer)
        current = record["kept_heads"][position]
        kept = [head for head in current if head not in heads]
        if kept == current:
            continue
        _check_even_groups(record, layer, kept)
        if not kept and not adapter.can_remove_all_heads:
            raise PruningError(
                f"{type(adapter).__name__.removesuffix('Adapter')} cannot run a layer without heads; "
                "keep at least one head per layer or drop the whole layer with drop_layers"
            )
        adapter.check_prunable(layers[position], "heads")
        plan.append((position, kept))

    with all_or_nothing(target):
        for position, kept in plan:
            current = record["kept_heads"][position]
            if kept:
                current_groups, kept_groups = kv_groups(record, current), kv_groups(record, kept)
                adapter.slice_heads(
                    layers[position],
                    [current.index(head) for head in kept],
                    [current_groups.index(group) for group in kept_groups],
                    head_dim,
                )
            else:
                adapter.remove_attention(layers[position], position, head_dim)
            record["kept_heads"][position] = kept
        if plan:
            save_record(target, record)
    finish_surgery(target)
    return model


def _check_even_groups(record: dict, layer: int, kept: list[int]) -> None:
    group_size = gqa_group_size(record)
    if group_size == 1 or not kept:
        return
    per_group = {}
    for head in kept:
        per_group[head // group_size] = per_group.get(head // group_size, 0) + 1
    if len(set(per_group.values())) > 1:
        counts = ", ".join(f"group {group}: {count}" for group, count in sorted(per_group.items()))
        raise PruningError(
            f"uneven grouped-query pattern in layer {layer} (query heads kept per KV group: {counts}); "
            f"prune whole groups of {group_size} heads or the same number of heads in every surviving group"
        )


def prune_ffn(model: nn.Module, neurons_to_prune: Mapping[int, Iterable[int]]) -> nn.Module:
    """Remove FFN intermediate neurons, `{layer: [neurons]}` in original indices (all of them removes the MLP)."""
    target, adapter, record = start_surgery(model)
    original = record["original"]
    num_layers, size = original["num_layers"], original["intermediate_size"]
    requested = check_mapping("neurons_to_prune", neurons_to_prune, num_layers, size)
    layers = adapter.get_layers(target)

    plan = []  # (position, new kept neurons)
    for layer, neurons in requested.items():
        if layer not in record["kept_layers"]:
            continue
        position = record["kept_layers"].index(layer)
        current = kept_ffn(record, position)
        removed = set(neurons)
        kept = [neuron for neuron in current if neuron not in removed]
        if len(kept) == len(current):
            continue
        adapter.check_prunable(layers[position], "ffn")
        plan.append((position, kept))

    with all_or_nothing(target):
        for position, kept in plan:
            where = {neuron: index for index, neuron in enumerate(kept_ffn(record, position))}  # thousands of neurons
            adapter.slice_ffn(layers[position], [where[neuron] for neuron in kept])
            record["kept_ffn"][position] = kept
        if plan:
            save_record(target, record)
    finish_surgery(target)
    return model


def drop_layers(model: nn.Module, layers_to_drop: Iterable[int]) -> nn.Module:
    """Remove whole layers (original indices); renumbers `layer_idx` so the KV cache and `generate()` work."""
    target, adapter, record = start_surgery(model)
    dropped = set(check_indices("layers_to_drop", layers_to_drop, record["original"]["num_layers"]))
    keep = [position for position, layer in enumerate(record["kept_layers"]) if layer not in dropped]
    if not keep:
        raise PruningError(f"dropping layers {sorted(dropped)} would leave the model with no layers")
    if len(keep) == len(record["kept_layers"]):
        finish_surgery(target)
        return model

    with all_or_nothing(target):
        layers = adapter.get_layers(target)
        kept_modules = nn.ModuleList([layers[position] for position in keep])
        for new_index, layer in enumerate(kept_modules):
            for module in layer.modules():
                if getattr(module, "layer_idx", None) is not None:
                    module.layer_idx = new_index
        adapter.set_layers(target, kept_modules)

        layer_types = getattr(target.config, "layer_types", None)
        if isinstance(layer_types, list) and len(layer_types) == len(record["kept_layers"]):
            target.config.layer_types = [layer_types[position] for position in keep]
        for key in ("kept_layers", "kept_heads", "kept_ffn"):
            record[key] = [record[key][position] for position in keep]
        save_record(target, record)
    finish_surgery(target)
    return model


