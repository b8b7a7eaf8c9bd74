"""Checkpoints pruned under transformers 4 (`config.pruned_heads`), loaded and converted for transformers 5.

transformers 4's `model.prune_heads({layer: [heads]})` cut the attention weights and kept in `config.pruned_heads`
the ORIGINAL indices of every head removed from each layer, accumulated over calls (and over save/reload: v4
re-applied the whole list on load). transformers 5 removed the feature: it reads such a config as an unpruned one
and refuses the weights with a size mismatch.

v4 laid the surviving heads out in their original order, as hfprune's surgery does, so the conversion only writes
hfprune's record: a weightless skeleton of the model (uninitialised memory that is never read) is pruned to the
same heads, which gives `config.hfprune` (kept heads in original indices, shape patch), and the weights then load
as those of any hfprune checkpoint. XLNet is the exception: v4's `XLNetModel._prune_heads` raised
NotImplementedError after `prune_heads` had written `config.pruned_heads`, so an XLNet checkpoint holds every head
(and v4 could not load it at all); its weights load as they are and the listed heads are then removed by surgery.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn
from transformers import AutoModel, PretrainedConfig

from ..engine.arch import get_adapter
from ..engine.checks import check_mapping
from ..engine.structure import PATCH_KEY
from ..engine.surgery import prune_heads
from ..errors import PruningError

__all__ = ["V4_FIELD", "V4_MODEL_TYPES", "convert_v4_config", "v4_pruned_heads"]

V4_FIELD = "pruned_heads"
V4_MODEL_TYPES = ("bert", "roberta", "electra", "distilbert", "xlnet", "gpt2")
_WEIGHTS_NOT_CUT = ("xlnet",)  # v4 recorded the heads but never removed them from the weights


def v4_pruned_heads(config: PretrainedConfig) -> dict[int, list[int]]:
    """`config.pruned_heads` of a transformers-4 checkpoint as `{layer: original heads removed}`; `{}` without one.

    Keys may be ints or, as JSON leaves them, strings. A list that names every head of a layer is refused where
    v4 had cut the weights: v4 could not run such a layer (its attention reshape fails), so there is no output to
    reproduce.
    """
    value = getattr(config, V4_FIELD, None)
    if not value:
        return {}
    model_type = getattr(config, "model_type", None)
    if model_type not in V4_MODEL_TYPES:
        raise PruningError(
            f"config.pruned_heads of a '{model_type}' checkpoint: hfprune converts transformers-4 pruned heads of "
            f"{', '.join(V4_MODEL_TYPES)} only"
        )
    if getattr(config, PATCH_KEY, None):
        raise PruningError(
            "the config has both config.hfprune and transformers 4's pruned_heads; it disagrees with itself "
            "(remove pruned_heads if the checkpoint was saved by hfprune)"
        )
    if not isinstance(value, Mapping):
        raise PruningError(f"config.pruned_heads must be a dict {{layer: [heads]}}, got {type(value).__name__}")
    by_layer: dict = {}
    for key, heads in value.items():
        layer = int(key) if isinstance(key, str) and key.strip().isdigit() else key
        if not isinstance(heads, list):
            raise PruningError(f"config.pruned_heads[{key!r}] must be a list of head indices, got {heads!r:.40}")
        by_layer.setdefault(layer, []).extend(heads)
    adapter = get_adapter(config)
    num_heads = adapter.num_heads(config)
    pruned = check_mapping("config.pruned_heads", by_layer, adapter.num_layers(config), num_heads)
    pruned = {layer: heads for layer, heads in pruned.items() if heads}
    empty = [layer for layer, heads in pruned.items() if len(heads) == num_heads]
    if empty and model_type not in _WEIGHTS_NOT_CUT:
        raise PruningError(
            f"config.pruned_heads removes every head of layer(s) {empty}: transformers 4 could not run such a layer "
            "(its attention reshape fails), so this checkpoint has no outputs to reproduce"
        )
    return pruned


def convert_v4_config(config: PretrainedConfig) -> tuple[PretrainedConfig, dict[int, list[int]]]:
    """`(config to load the weights with, heads still to remove once they are loaded)`.

    A config without transformers 4's `pruned_heads` comes back as it is, with nothing to remove. Otherwise the
    config is a copy without `pruned_heads`; where v4 cut the weights it carries hfprune's record of the same
    heads, else (XLNet) the heads are returned, to be removed from the loaded weights by surgery.
    """
    pruned = v4_pruned_heads(config)
    if not pruned:
        return config, {}
    config = copy.deepcopy(config)
    delattr(config, V4_FIELD)
    if config.model_type in _WEIGHTS_NOT_CUT:
        return config, pruned

    skeleton = _skeleton(config)
    prune_heads(skeleton, pruned)  # writes config.hfprune: kept heads and the shape patch
    return skeleton.config, {}


def _skeleton(config: PretrainedConfig) -> nn.Module:
    """The bare model of `config` in uninitialised memory: surgery can slice it, and nothing ever reads it
    (pages that are never written cost no memory)."""
    try:
        model_class = AutoModel._model_mapping[type(config)]
    except KeyError:
        raise PruningError(f"transformers has no model class for model type '{config.model_type}'") from None
    with torch.device("meta"):
        model = model_class(copy.deepcopy(config))
    return model.to_empty(device="cpu").eval()


