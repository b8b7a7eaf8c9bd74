"""The pruned structure, recorded in `config.hfprune` so that a checkpoint describes itself.

Everything is in ORIGINAL indices: `kept_layers[i]` is the original index of current layer `i`,
`kept_heads[i]` the original query heads it keeps, `kept_ffn[i]` its original FFN neurons (None: all).
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from .arch import get_adapter
from .structure import PATCH_KEY, structure_patch


def get_record(model_or_config) -> dict[str, Any]:
    """The model's pruning record; an unpruned model gets a fresh one (not written to its config)."""
    config = getattr(model_or_config, "config", model_or_config)
    record = getattr(config, PATCH_KEY, None)
    if record:
        return record
    adapter = get_adapter(config)
    num_layers, num_heads = adapter.num_layers(config), adapter.num_heads(config)
    return {
        "original": {
            "num_layers": num_layers,
            "num_heads": num_heads,
            "num_kv_heads": adapter.num_kv_heads(config),
            "intermediate_size": adapter.intermediate_size(config),
        },
        "kept_layers": list(range(num_layers)),
        "kept_heads": [list(range(num_heads)) for _ in range(num_layers)],
        "kept_ffn": [None] * num_layers,
        "patch": [],
        "stock_loadable": True,
    }


def kept_ffn(record: dict[str, Any], layer: int) -> list[int]:
    """Original FFN neuron ids kept by current layer `layer`."""
    kept = record["kept_ffn"][layer]
    return list(range(record["original"]["intermediate_size"])) if kept is None else kept


def kv_groups(record: dict[str, Any], heads: list[int]) -> list[int]:
    """Original key/value heads used by the given original query heads."""
    original = record["original"]
    group_size = original["num_heads"] // original["num_kv_heads"]
    return sorted({head // group_size for head in heads})


def save_record(model: nn.Module, record: dict[str, Any]) -> None:
    """Write `record` into the config, with the config fields and shape patch that go with it."""
    config, adapter = model.config, get_adapter(model)
    original = record["original"]
    record = copy.deepcopy(record)

    widths = {len(kept_ffn(record, i)) for i in range(len(record["kept_layers"]))}
    adapter.set_intermediate_size(config, widths.pop() if len(widths) == 1 else original["intermediate_size"])

    if adapter.uniform_heads_in_config:
        counts = {(len(heads), len(kv_groups(record, heads))) for heads in record["kept_heads"]}
        num_heads, num_kv_heads = counts.pop() if len(counts) == 1 else (0, 0)
        if num_heads == 0:
            num_heads, num_kv_heads = original["num_heads"], original["num_kv_heads"]
        adapter.set_head_counts(config, num_heads, num_kv_heads, adapter.head_dim(config))

    setattr(config, adapter.num_layers_field, len(record["kept_layers"]))
    setattr(config, PATCH_KEY, None)
    record["patch"] = structure_patch(model)
    record["stock_loadable"] = not record["patch"]
    setattr(config, PATCH_KEY, record)
