"""Physical removal of attention heads, FFN neurons and whole layers (in place; returns the model).

All indices are those of the ORIGINAL model, as in transformers 4's `prune_heads`: calls compose, and
pruning something already gone is a no-op. Input is checked completely before anything is changed, so
a bad call leaves the model as it was. Every call records the new structure in `config.hfprune`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import nn

from .arch import get_adapter
from .errors import PruningError
from .record import get_record, kept_ffn, kv_groups, save_record


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise PruningError(f"expected a transformers PreTrainedModel, got {type(model).__name__}")
    # A GGUF checkpoint is dequantized to plain Linear layers on load but keeps its quantizer, and
    # save_pretrained refuses such a model. A pruned model is a new fp model: detach the quantizer.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and getattr(quantizer.quantization_config, "quant_method", None) == "gguf":
        quantizer.remove_quantization_config(model)


def _check_indices(what: str, values, limit: int) -> list[int]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise PruningError(f"{what} must be a list of integers, got {type(values).__name__}")
    values = list(values)
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) and not hasattr(value, "__index__"):
            raise PruningError(f"{what} must be integers, got {value!r}")
        if not 0 <= int(value) < limit:
            raise PruningError(f"{what}: index {int(value)} is out of range [0, {limit})")
    return sorted({int(value) for value in values})


def _check_mapping(what: str, mapping, num_layers: int, limit: int) -> dict[int, list[int]]:
    if not isinstance(mapping, Mapping):
        raise PruningError(f"{what} must be a dict {{layer: [indices]}}, got {type(mapping).__name__}")
    checked = {}
    for layer, values in mapping.items():
        (layer,) = _check_indices(f"{what}: layer", [layer], num_layers)
        checked[layer] = _check_indices(f"{what}: layer {layer}", values, limit)
    return checked


def prune_heads(model: nn.Module, heads_to_prune: Mapping[int, Iterable[int]]) -> nn.Module:
    """Remove attention heads, `{layer: [heads]}` in original indices.

    A layer that loses every head stops computing attention at all. For grouped-query attention, the
    heads that remain must fill whole key/value groups evenly: prune whole groups, or the same number
    of query heads in every surviving group.
    """
    _check_model(model)
    adapter, record = get_adapter(model), get_record(model)
    original = record["original"]
    requested = _check_mapping("heads_to_prune", heads_to_prune, original["num_layers"], original["num_heads"])
    head_dim = adapter.head_dim(model.config)

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
        plan.append((position, kept))

    layers = adapter.get_layers(model)
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
        save_record(model, record)
    return model


def _check_even_groups(record: dict, layer: int, kept: list[int]) -> None:
    original = record["original"]
    group_size = original["num_heads"] // original["num_kv_heads"]
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
    _check_model(model)
    adapter, record = get_adapter(model), get_record(model)
    original = record["original"]
    requested = _check_mapping(
        "neurons_to_prune", neurons_to_prune, original["num_layers"], original["intermediate_size"]
    )
    layers = adapter.get_layers(model)
    changed = False
    for layer, neurons in requested.items():
        if layer not in record["kept_layers"]:
            continue
        position = record["kept_layers"].index(layer)
        current = kept_ffn(record, position)
        removed = set(neurons)
        kept = [neuron for neuron in current if neuron not in removed]
        if len(kept) == len(current):
            continue
        adapter.slice_ffn(layers[position], [current.index(neuron) for neuron in kept])
        record["kept_ffn"][position] = kept
        changed = True
    if changed:
        save_record(model, record)
    return model


def drop_layers(model: nn.Module, layers_to_drop: Iterable[int]) -> nn.Module:
    """Remove whole layers (original indices); renumbers `layer_idx` so the KV cache and `generate()` work."""
    _check_model(model)
    adapter, record = get_adapter(model), get_record(model)
    dropped = set(_check_indices("layers_to_drop", layers_to_drop, record["original"]["num_layers"]))
    keep = [position for position, layer in enumerate(record["kept_layers"]) if layer not in dropped]
    if not keep:
        raise PruningError(f"dropping layers {sorted(dropped)} would leave the model with no layers")
    if len(keep) == len(record["kept_layers"]):
        return model

    layers = adapter.get_layers(model)
    kept_modules = nn.ModuleList([layers[position] for position in keep])
    for new_index, layer in enumerate(kept_modules):
        for module in layer.modules():
            if getattr(module, "layer_idx", None) is not None:
                module.layer_idx = new_index
    adapter.set_layers(model, kept_modules)

    layer_types = getattr(model.config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == len(record["kept_layers"]):
        model.config.layer_types = [layer_types[position] for position in keep]
    for key in ("kept_layers", "kept_heads", "kept_ffn"):
        record[key] = [record[key][position] for position in keep]
    save_record(model, record)
    return model
