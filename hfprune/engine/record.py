"""The pruned structure, recorded in `config.hfprune` so that a checkpoint describes itself.

Everything is in ORIGINAL indices: `kept_layers[i]` is the original index of current layer `i`,
`kept_heads[i]` the original query heads it keeps, `kept_ffn[i]` its original FFN neurons (None: all).
Once the width was pruned, `kept_hidden` lists the original residual-stream channels kept (None or absent:
all) and `original` also gives `hidden_size` and `head_dim`; records without them never changed the width.

Surgery also writes `version` (the record format, `RECORD_VERSION`) and `model_type` (the family the record was
made for). Records of older hfprune versions have neither and are read as before; a newer version, a key this
version does not know, or a record made for another model type is refused.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from typing import Any

import torch
from torch import nn

from ..errors import PruningError
from .arch import get_adapter
from .per_layer import write_per_layer_config
from .structure import (
    _MODULE_TYPES,
    PATCH_KEY,
    stock_class,
    structure_patch,
)

RECORD_VERSION = 1  # the format of `config.hfprune` this hfprune writes (and the newest it reads)
RECORD_KEYS = frozenset(
    ("version", "model_type", "original", "kept_layers", "kept_heads", "kept_ffn", "kept_hidden", "patch", "stock_loadable")
)


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


def original_hidden_size(record: dict[str, Any], config) -> int:
    """The original width of the residual stream (a record without it never pruned the width)."""
    return record["original"].get("hidden_size") or config.hidden_size


def kept_hidden(record: dict[str, Any], config) -> list[int]:
    """Original residual-stream channels the model keeps."""
    kept = record.get("kept_hidden")
    return list(range(original_hidden_size(record, config))) if kept is None else kept


def original_sizes(record: dict[str, Any], model_or_config) -> dict[str, Any]:
    """`record["original"]` with `hidden_size` and `head_dim` filled in, so records written before width pruning
    existed compare equal to new ones."""
    config = getattr(model_or_config, "config", model_or_config)
    original = dict(record["original"])
    original.setdefault("hidden_size", config.hidden_size)
    original.setdefault("head_dim", get_adapter(config).head_dim(config))
    return original


def original_config(model: nn.Module):
    """A copy of `model.config` with the sizes of the UNPRUNED model (layers, FFN, heads, hidden size) and no
    record: what a dense twin or an original parameter count is built from."""
    record, adapter = get_record(model), get_adapter(model)
    original = record["original"]
    config = copy.deepcopy(model.config)
    head_dim = adapter.head_dim(config)  # read from the record, before it is dropped
    setattr(config, PATCH_KEY, None)
    if getattr(config, "per_layer_config", None):  # transformers' per-layer overrides describe the pruned layers
        config.per_layer_config = None
    setattr(config, adapter.num_layers_field, original["num_layers"])
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == len(record["kept_layers"]) and layer_types:
        # drop_layers kept only the surviving layers' types; a dropped layer's is not recorded: the commonest
        filled = [Counter(layer_types).most_common(1)[0][0]] * original["num_layers"]
        for position, layer in enumerate(record["kept_layers"]):
            filled[layer] = layer_types[position]
        config.layer_types = filled
    adapter.set_intermediate_size(config, original["intermediate_size"])
    if "hidden_size" in original:
        adapter.set_hidden_size(config, original["hidden_size"])
    if adapter.uniform_heads_in_config:
        adapter.set_head_counts(config, original["num_heads"], original["num_kv_heads"], head_dim)
    elif "hidden_size" in original:
        adapter.set_build_head_count(config, original["num_heads"])
    return config


def gqa_group_size(record: dict[str, Any]) -> int:
    """Query heads per key/value head in the original model (1 without grouped-query attention)."""
    return record["original"]["num_heads"] // record["original"]["num_kv_heads"]


def kv_groups(record: dict[str, Any], heads: list[int]) -> list[int]:
    """Original key/value heads used by the given original query heads."""
    group_size = gqa_group_size(record)
    return sorted({head // group_size for head in heads})


def save_record(model: nn.Module, record: dict[str, Any]) -> None:
    """Write `record` into the config, with the config fields and shape patch that go with it."""
    config, adapter = model.config, get_adapter(model)
    original = record["original"]
    record = copy.deepcopy(record)
    head_dim = original.get("head_dim") or adapter.head_dim(config)  # before the hidden size changes
    hidden = len(kept_hidden(record, config))
    adapter.set_hidden_size(config, hidden)

    widths = {len(kept_ffn(record, i)) for i in range(len(record["kept_layers"]))}
    adapter.set_intermediate_size(config, widths.pop() if len(widths) == 1 else original["intermediate_size"])

    if adapter.uniform_heads_in_config:
        counts = {(len(heads), len(kv_groups(record, heads))) for heads in record["kept_heads"]}
        num_heads, num_kv_heads = counts.pop() if len(counts) == 1 else (0, 0)
        if num_heads == 0 or hidden % num_heads:  # transformers refuses to save a config whose heads do not divide the width
            num_heads, num_kv_heads = _valid_head_counts(original, hidden)
        adapter.set_head_counts(config, num_heads, num_kv_heads, head_dim)
    elif record.get("kept_hidden") is not None:
        adapter.set_build_head_count(config, _build_head_count(record, hidden, head_dim))

    setattr(config, adapter.num_layers_field, len(record["kept_layers"]))
    setattr(config, PATCH_KEY, None)
    record["patch"] = structure_patch(model)
    record["stock_loadable"] = not record["patch"]
    record["version"], record["model_type"] = RECORD_VERSION, config.model_type  # an older record gets them too
    setattr(config, PATCH_KEY, record)
    write_per_layer_config(model)  # transformers' own form of the same structure, where it can say it exactly


def _valid_head_counts(original: dict[str, Any], hidden: int) -> tuple[int, int]:
    """Head counts for the config of a model whose real counts it cannot say (they vary by layer, or do not divide
    the width, which transformers' config validation refuses): counts that divide `hidden` and each other (the
    original ones while the width is whole). The record's patch then builds the real shapes."""
    num_heads = math.gcd(hidden, original["num_heads"])
    return num_heads, math.gcd(num_heads, original["num_kv_heads"])


def _build_head_count(record: dict[str, Any], hidden: int, head_dim: int) -> int:
    """The config head count of a width-pruned model whose family derives the head width from the config.

    When every layer keeps `n` heads and `n * head_dim` is the new hidden size, `n` makes the config tell the
    truth (stock transformers builds it); otherwise a count that divides the hidden size, only so that the
    config builds before the patch reshapes attention.
    """
    counts = {len(heads) for heads in record["kept_heads"]}
    if len(counts) == 1 and (count := counts.pop()) and count * head_dim == hidden:
        return count
    return math.gcd(hidden, record["original"]["num_heads"])


# ---- checks: a record read from disk or edited by hand is trusted only once it agrees with everything ----
def _corrupt(message: str) -> PruningError:
    return PruningError(f"config.hfprune is corrupt: {message}")


def _is_int(value) -> bool:
    return type(value) is int


def _check_ids(name: str, ids, limit: int) -> None:
    """`ids` must be a strictly increasing list of ints in [0, limit) (what surgery writes)."""
    if not isinstance(ids, list) or not all(_is_int(i) for i in ids):
        raise _corrupt(f"{name} must be a list of integers, got {ids!r:.60}")
    for i in ids:
        if not 0 <= i < limit:
            raise _corrupt(f"{name} has index {i}, outside [0, {limit})")
    if any(a >= b for a, b in zip(ids, ids[1:])):
        raise _corrupt(f"{name} must be sorted and without repeats")


def _check_patch(patch) -> None:
    if not isinstance(patch, list):
        raise _corrupt(f"patch must be a list, got {type(patch).__name__}")
    for number, entry in enumerate(patch):
        where = f"patch[{number}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise _corrupt(f"{where} must be a dict with a 'path' string")
        if "module" in entry:
            if entry["module"] not in _MODULE_TYPES or not isinstance(entry.get("kwargs"), dict):
                raise _corrupt(f"{where}: module must be one of {sorted(_MODULE_TYPES)}, with a kwargs dict")
        elif "parameter" in entry:
            shape = entry.get("shape")
            if not isinstance(entry["parameter"], str) or not isinstance(shape, list) or not all(
                _is_int(size) and size >= 0 for size in shape
            ):
                raise _corrupt(f"{where}: a parameter entry needs a name and a shape of non-negative integers")
        elif "attribute" in entry:
            if not isinstance(entry["attribute"], str) or not isinstance(entry.get("value"), (bool, int, float)):
                raise _corrupt(f"{where}: an attribute entry needs a name and a number")
        else:
            raise _corrupt(f"{where} must name a module, a parameter or an attribute")


def check_record_format(record, config) -> None:
    """The record is a dict in a format this hfprune reads (`version` at most `RECORD_VERSION`, only known keys)
    and was made for `config`'s model type. A record without `version` / `model_type` (older hfprune) passes."""
    if not isinstance(record, dict):
        raise _corrupt(f"expected a dict, got {type(record).__name__}")
    version = record.get("version", 1)
    if not _is_int(version) or version < 1:
        raise _corrupt(f"version must be a positive integer, got {version!r:.60}")
    if version > RECORD_VERSION:
        raise PruningError(
            f"config.hfprune has record format version {version}, newer than this hfprune reads ({RECORD_VERSION}): "
            "upgrade hfprune (pip install -U hfprune)"
        )
    unknown = sorted(map(str, set(record) - RECORD_KEYS))
    if unknown:
        raise _corrupt(f"unknown key(s) {', '.join(unknown)} (this hfprune knows {', '.join(sorted(RECORD_KEYS))})")
    model_type = record.get("model_type")
    if model_type is not None and not isinstance(model_type, str):
        raise _corrupt(f"model_type must be a string, got {model_type!r:.60}")
    configured = getattr(config, "model_type", None)
    if model_type is not None and configured and model_type != configured:
        raise PruningError(
            f"config.hfprune was made for a '{model_type}' model, but this is a '{configured}' model; "
            f"use a checkpoint pruned from a {configured} model"
        )


def validate_record(record, config) -> None:
    """Check a record's format, its own consistency and that it fits `config` (types, lengths, index ranges, patch).

    Raises a one-line `PruningError` saying what is wrong; never a KeyError/TypeError/IndexError.
    """
    check_record_format(record, config)
    check_record_structure(record)
    _check_record_against_config(record, config)


def check_record_structure(record: dict) -> None:
    """A record's own consistency: its keys, sizes, index lists and patch (not whether it fits a config)."""
    missing = [key for key in ("original", "kept_layers", "kept_heads", "kept_ffn") if key not in record]
    if missing:
        raise _corrupt(f"missing {', '.join(missing)}")
    original = record["original"]
    sizes = ("num_layers", "num_heads", "num_kv_heads", "intermediate_size")
    if not isinstance(original, dict) or not all(_is_int(original.get(key)) and original[key] > 0 for key in sizes):
        raise _corrupt(f"original must give positive integers {', '.join(sizes)}")
    if original["num_heads"] % original["num_kv_heads"]:
        raise _corrupt(
            f"original num_heads {original['num_heads']} is not a multiple of num_kv_heads {original['num_kv_heads']}"
        )

    _check_ids("kept_layers", record["kept_layers"], original["num_layers"])
    num_layers = len(record["kept_layers"])
    if not num_layers:
        raise _corrupt("kept_layers is empty")
    for key in ("kept_heads", "kept_ffn"):
        if not isinstance(record[key], list) or len(record[key]) != num_layers:
            raise _corrupt(f"{key} must be a list with one entry per kept layer ({num_layers})")
    for position, heads in enumerate(record["kept_heads"]):
        _check_ids(f"kept_heads[{position}]", heads, original["num_heads"])
    for position, neurons in enumerate(record["kept_ffn"]):
        if neurons is not None:
            _check_ids(f"kept_ffn[{position}]", neurons, original["intermediate_size"])
    _check_width(record, original)
    _check_patch(record.get("patch", []))
    if not isinstance(record.get("stock_loadable", True), bool):
        raise _corrupt("stock_loadable must be true or false")


def _check_record_against_config(record: dict, config) -> None:
    original, num_layers = record["original"], len(record["kept_layers"])
    configured = get_adapter(config).num_layers(config)
    if configured != num_layers:
        raise PruningError(
            f"config.hfprune keeps {num_layers} layers but the config says {configured}; "
            "the checkpoint disagrees with itself"
        )
    if "hidden_size" in original:
        width = len(kept_hidden(record, config))
        if config.hidden_size != width:
            raise PruningError(
                f"config.hfprune keeps {width} hidden channels but the config says hidden_size "
                f"{config.hidden_size}; the checkpoint disagrees with itself"
            )


def _check_width(record: dict, original: dict) -> None:
    """The optional width part of a record: `original.hidden_size`/`head_dim` and `kept_hidden`."""
    for key in ("hidden_size", "head_dim"):
        if key in original and not (_is_int(original[key]) and original[key] > 0):
            raise _corrupt(f"original {key} must be a positive integer, got {original[key]!r:.60}")
    kept = record.get("kept_hidden")
    if kept is None:
        return
    if "hidden_size" not in original or "head_dim" not in original:
        raise _corrupt("kept_hidden needs original hidden_size and head_dim")
    _check_ids("kept_hidden", kept, original["hidden_size"])
    if not kept:
        raise _corrupt("kept_hidden is empty")


def check_record(model: nn.Module) -> dict[str, Any]:
    """The model's record (as `get_record`), refused with a `PruningError` if it is corrupt or disagrees
    with the model's layers and weight shapes. An unpruned model (no record) is not checked."""
    config = model.config
    if not getattr(config, PATCH_KEY, None):
        return get_record(model)
    record = getattr(config, PATCH_KEY)
    validate_record(record, config)
    adapter = get_adapter(model)
    layers = adapter.get_layers(model)
    if len(layers) != len(record["kept_layers"]):
        raise PruningError(f"config.hfprune keeps {len(record['kept_layers'])} layers but the model has {len(layers)}")
    head_dim = adapter.head_dim(config)
    width = len(kept_hidden(record, config))
    for position, layer in enumerate(layers):
        if adapter.hidden_norms and adapter.hidden_width(layer) != width:
            raise PruningError(
                f"config.hfprune disagrees with the weights of layer {position}: the record gives {width} hidden "
                f"channels, the norms hold {adapter.hidden_width(layer)}"
            )
        heads = record["kept_heads"][position]
        expected = (len(heads) * head_dim, len(kv_groups(record, heads)) * head_dim, len(kept_ffn(record, position)))
        actual = adapter.layer_widths(layer)
        if actual != expected:
            raise PruningError(
                f"config.hfprune disagrees with the weights of layer {position} "
                f"(original {record['kept_layers'][position]}): the record gives {_widths(expected, head_dim)}, "
                f"the weights hold {_widths(actual, head_dim)}"
            )
    return record


def _widths(widths: tuple[int, int, int], head_dim: int) -> str:
    query, key, ffn = widths
    return f"{query / head_dim:g} query heads, {key / head_dim:g} key/value heads and {ffn} FFN neurons"


# ---- numbers ----------------------------------------------------------------------------------------
def unpruned_twin(model: nn.Module, device: str | torch.device | None = None) -> nn.Module:
    """A freshly initialised model of the same class with the ORIGINAL (unpruned) shapes of a pruned `model`,
    rebuilt from `config.hfprune["original"]` (`hfprune.engine.record.original_config`: width and layer types
    included). On the meta device it costs nothing (parameter counts); on a real device it is a dense baseline
    for timing, since speed does not depend on weight values."""
    config = original_config(model)
    with torch.device(device or "cpu"):
        return stock_class(model)(config)

