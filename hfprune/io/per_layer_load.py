"""Reading transformers' `per_layer_config` (the write half is `hfprune.engine.per_layer`): a config that has
only that form gets hfprune's record, and a saved one is checked against the layers it loaded.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn
from transformers import PretrainedConfig

from ..engine.arch import get_adapter
from ..engine.per_layer import (
    ALLOW_GLOBAL,
    SKIP,
    clear_per_layer_config,
    is_heterogeneous,
    layer_overrides,
    model_from_overrides,
    overrides_of,
    per_layer_fields,
)
from ..engine.record import get_record
from ..engine.structure import PATCH_KEY, stock_class, structure_patch
from ..errors import PruningError


# ---- loading --------------------------------------------------------------------------------------------
def _kept_heads(num_heads: int, num_kv_heads: int, group_size: int) -> list[int]:
    """Original query heads for a layer known only by its head counts: the first ones of each of its KV groups."""
    per_group = num_heads // num_kv_heads if num_kv_heads else 0
    return [group * group_size + head for group in range(num_kv_heads) for head in range(per_group)]


def _record_from_overrides(
    model_class: type, config: PretrainedConfig, overrides: dict[int, dict[str, Any]]
) -> dict[str, Any]:
    """hfprune's record of a checkpoint that has only `per_layer_config`. Original head indices are not in that
    format: each layer keeps the first heads of its KV groups, which matters only for pruning it again."""
    adapter = get_adapter(config)
    try:
        built = model_from_overrides(model_class, config, overrides)
    except PruningError:
        raise
    except (ValueError, TypeError, ZeroDivisionError, RuntimeError, AttributeError) as error:
        raise PruningError(f"config.per_layer_config does not build a {config.model_type} model: {error}") from None
    record = get_record(config)
    original = record["original"]
    group_size = original["num_heads"] // original["num_kv_heads"]
    head_dim = adapter.head_dim(config)
    for position, layer in enumerate(adapter.get_layers(built)):
        query, key, ffn = adapter.layer_widths(layer)
        heads, kv_heads = query // head_dim, key // head_dim
        if kv_heads and (heads % kv_heads or heads // kv_heads > group_size):
            raise PruningError(
                f"config.per_layer_config gives layer {position} {heads} query heads over {kv_heads} KV heads; a pruned "
                f"layer keeps whole KV groups of at most {group_size} query heads each"
            )
        record["kept_heads"][position] = _kept_heads(heads, kv_heads, group_size)
        record["kept_ffn"][position] = None if ffn == original["intermediate_size"] else list(range(ffn))
    record["patch"] = structure_patch(built)
    record["stock_loadable"] = not record["patch"]
    return record


def prepare_per_layer_config(config: PretrainedConfig, model_class: type) -> None:
    """Make a config with `per_layer_config` loadable by `model_class` (in place): global reads allowed, since
    hfprune builds the per-layer shapes itself, and a record made from it when the config has no `config.hfprune`."""
    if not is_heterogeneous(config):
        return
    adapter = get_adapter(config)
    overrides = overrides_of(config)
    unknown = sorted({name for entry in overrides.values() for name in entry} - {*per_layer_fields(adapter), SKIP})
    if unknown:
        raise PruningError(
            f"config.per_layer_config sets {', '.join(unknown)} per layer; hfprune reads {', '.join(per_layer_fields(adapter))} "
            "and skip only"
        )
    setattr(config, ALLOW_GLOBAL, True)
    if not getattr(config, PATCH_KEY, None):
        setattr(config, PATCH_KEY, _record_from_overrides(stock_class(model_class), config, overrides))


def check_per_layer_config(model: nn.Module, saved: dict[int, dict[str, Any]]) -> None:
    """Refuse a loaded model whose saved `per_layer_config` disagrees with its layers (a hand-edited config)."""
    expected = layer_overrides(model)
    if _normalised(saved, model.config) != _normalised(expected, model.config):
        raise PruningError(
            f"config.per_layer_config disagrees with config.hfprune and the weights: it says {saved}, the layers are "
            f"{expected or 'those of the config alone'}"
        )


def saved_overrides(config: PretrainedConfig) -> dict[int, dict[str, Any]]:
    """The config's `per_layer_config` as `{layer: overrides}` ({} for none), for `check_per_layer_config`."""
    return overrides_of(config)


def _normalised(overrides: dict[int, dict[str, Any]], config: PretrainedConfig) -> dict[int, dict[str, Any]]:
    """Overrides as transformers stores them (sorted skips, values equal to the global one dropped)."""
    if not overrides:
        return {}
    probe = copy.deepcopy(config)
    clear_per_layer_config(probe)
    probe.per_layer_config = overrides
    return overrides_of(probe)
