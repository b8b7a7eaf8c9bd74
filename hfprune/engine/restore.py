"""Rebuilding a recorded structure: prune a model to a `config.hfprune` record (checkpoints, resume).

It sits above `surgery` and `hidden` because it calls both; neither calls it back.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import PruningError
from .hidden import prune_hidden
from .record import (
    check_record_format,
    check_record_structure,
    get_record,
    kept_ffn,
    kept_hidden,
    original_sizes,
)
from .surgery import drop_layers, prune_ffn, prune_heads


def restore_structure(model: nn.Module, record: dict[str, Any]) -> nn.Module:
    """Prune `model` in place to the structure in `record` (a `config.hfprune` record), weights left as they are.

    `model` must be the model that `record` was pruned from (unpruned, or pruned less); used to rebuild a
    checkpoint's structure before its weights are loaded.
    """
    check_record_format(record, model.config)  # a newer format, unknown keys, a record of another model type
    check_record_structure(record)
    current = get_record(model)
    if original_sizes(current, model) != original_sizes(record, model):
        raise PruningError(
            f"the checkpoint was pruned from a model with sizes {record['original']}, "
            f"this one has {current['original']}"
        )
    wanted_layers = record["kept_layers"]
    if not set(wanted_layers) <= set(current["kept_layers"]):
        raise PruningError("the checkpoint keeps layers this model has already lost; start from the original model")
    heads, neurons = {}, {}
    for position, layer in enumerate(current["kept_layers"]):
        if layer not in wanted_layers:
            continue
        wanted = wanted_layers.index(layer)
        keep_heads, keep_ffn = set(record["kept_heads"][wanted]), set(kept_ffn(record, wanted))
        have_heads, have_ffn = current["kept_heads"][position], kept_ffn(current, position)
        if not keep_heads <= set(have_heads) or not keep_ffn <= set(have_ffn):
            raise PruningError(f"the checkpoint keeps units of layer {layer} this model has already lost")
        heads[layer] = [head for head in have_heads if head not in keep_heads]
        neurons[layer] = [neuron for neuron in have_ffn if neuron not in keep_ffn]
    prune_heads(model, {layer: drop for layer, drop in heads.items() if drop})
    prune_ffn(model, {layer: drop for layer, drop in neurons.items() if drop})
    drop_layers(model, [layer for layer in current["kept_layers"] if layer not in wanted_layers])
    _restore_width(model, current, record)
    return model


def _restore_width(model: nn.Module, current: dict[str, Any], record: dict[str, Any]) -> None:
    if record.get("kept_hidden") is None:
        return

    have, keep = kept_hidden(current, model.config), set(record["kept_hidden"])
    if not keep <= set(have):
        raise PruningError("the checkpoint keeps hidden channels this model has already lost")
    prune_hidden(model, [channel for channel in have if channel not in keep])
