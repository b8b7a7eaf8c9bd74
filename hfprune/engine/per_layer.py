"""transformers' own per-layer config (`per_layer_config`), written beside `config.hfprune` where it says the layers exactly.

transformers 5.23 reads and saves sparse per-layer overrides (`HeterogeneousConfigMixin`): `{layer:
{"intermediate_size": 512, "num_key_value_heads": 2, "skip": ["attention"]}}`. Its modeling half, which would let
a stock class build such layers (PR 45332), has not landed; code that reads `config.per_layer_config[i]` (serving
engines) can use it already, and stock loading can once it lands. hfprune writes it only when building every layer
from its per-layer config gives exactly the pruned layer's shapes (checked by doing so, on the meta device):
per-layer FFN widths of every family, per-layer head counts where the head size does not follow from the count
(Llama family: explicit `head_dim`; BERT-style attention divides the hidden size by the head count), and `skip` for
an attention block or MLP removed without leaving a bias behind in a pre-norm decoder layer (h + block(norm(h)):
a block that adds nothing is what `skip` means; an encoder layer still runs its LayerNorm after an empty block).
Anything else (heads of BERT, DistilBERT, GPT-2) is in `config.hfprune` only.

A heterogeneous config refuses global reads of its per-layer fields (`config.intermediate_size` raises
AmbiguousGlobalPerLayerAttributeError), so transformers 5.24's own modeling code, hfprune's adapters and the
remote-code export could no longer build the model. The global fields keep the values they had before (the
original size where layers differ), and `allow_global_per_layer_attribute_access` is set and saved with the config,
so they stay readable: a stock class builds what it built before, and hfprune rebuilds the real shapes from its
record. Reading it back, `hfprune.from_pretrained` also loads a checkpoint whose config has only `per_layer_config`.
"""

from __future__ import annotations

import copy
import inspect
import warnings
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.pytorch_utils import Conv1D

from ..errors import PruningError
from .arch import get_adapter
from .arch.base import ArchAdapter
from .structure import (
    PATCH_KEY,
    EmptyAttention,
    EmptyMLP,
    stock_class,
    structure_patch,
)

__all__ = [
    "PRE_NORM_MODEL_TYPES",
    "is_supported",
    "layer_overrides",
    "write_per_layer_config",
]

FIELD = "per_layer_config"
ALLOW_GLOBAL = "allow_global_per_layer_attribute_access"
SKIP = "skip"
PRE_NORM_MODEL_TYPES = frozenset({"gpt2", "llama", "mistral", "qwen2", "qwen3"})
"""Families whose layers are h + block(norm(h)): an attention block or MLP that outputs zeros is a `skip`."""


def is_supported() -> bool:
    """Whether the installed transformers has `per_layer_config` (`HeterogeneousConfigMixin`, 5.23+)."""
    return hasattr(PretrainedConfig, "is_heterogeneous")


def is_heterogeneous(config: PretrainedConfig) -> bool:
    return is_supported() and config.is_heterogeneous


def overrides_of(config: PretrainedConfig) -> dict[int, dict[str, Any]]:
    """The config's per-layer overrides as `{layer: {field: value}}` (through the public serialised form)."""
    if not is_heterogeneous(config):
        return {}
    return {int(layer): entry for layer, entry in config.to_dict().get(FIELD, {}).items()}


def clear_per_layer_config(config: PretrainedConfig) -> None:
    """Remove the per-layer overrides and the global-access flag (on a transformers without the mixin, the plain
    attributes a saved config left, so that a stale copy is never saved again)."""
    if is_supported():
        config.per_layer_config = None
    else:
        config.__dict__.pop(FIELD, None)
    config.__dict__.pop(ALLOW_GLOBAL, None)  # where the mixin keeps the flag


def per_layer_fields(adapter: ArchAdapter) -> tuple[str, ...]:
    return tuple(name for name in (adapter.num_heads_field, adapter.num_kv_heads_field, adapter.intermediate_field) if name)


# ---- the overrides that say a pruned model's layers ------------------------------------------------------
def _bias(module: nn.Module) -> Any:
    return getattr(module, "bias", None)


def _block(layer: nn.Module, path: str) -> nn.Module:
    return layer.get_submodule(path) if path else layer


def _layer_entry(adapter: ArchAdapter, config: PretrainedConfig, layer: nn.Module) -> dict[str, Any] | None:
    """The overrides of one pruned layer (None: it has an empty block that is no `skip`); only `_same_layers`
    decides whether they say the layer exactly."""
    entry: dict[str, Any] = {}
    skip = []
    pre_norm = config.model_type in PRE_NORM_MODEL_TYPES
    head_dim = adapter.head_dim(config)
    query, key, ffn = adapter.layer_widths(layer)
    attention = layer.get_submodule(adapter.attention)
    if isinstance(attention, EmptyAttention):
        if not (pre_norm and attention.bias is None and adapter.output_inside_attention):
            return None  # it still adds a bias, or a LayerNorm runs after it
        skip.append("attention")
    else:
        counts = [(adapter.num_heads_field, query // head_dim, adapter.num_heads(config))]
        if adapter.num_kv_heads_field:
            counts.append((adapter.num_kv_heads_field, key // head_dim, adapter.num_kv_heads(config)))
        entry.update({name: value for name, value, configured in counts if value != configured})
    mlp = _block(layer, adapter.ffn_output.rpartition(".")[0])
    output_bias = _bias(mlp) if isinstance(mlp, EmptyMLP) else _bias(layer.get_submodule(adapter.ffn_output))
    if ffn == 0 and pre_norm and output_bias is None:
        skip.append("mlp")
    elif ffn != adapter.intermediate_size(config):
        entry[adapter.intermediate_field] = ffn
    if skip:
        entry[SKIP] = skip
    return entry


def layer_overrides(model: nn.Module) -> dict[int, dict[str, Any]]:
    """The `per_layer_config` that says `model`'s pruned layers exactly; `{}` when the config alone already does, when
    transformers has no `per_layer_config`, or when some layer differs in a way the format cannot say."""
    if not is_supported():
        return {}
    adapter, config = get_adapter(model), model.config
    overrides = {}
    for position, layer in enumerate(adapter.get_layers(model)):
        entry = _layer_entry(adapter, config, layer)
        if entry is None:
            return {}
        if entry:
            overrides[position] = entry
    if overrides and not _same_layers(model, overrides):
        return {}
    return overrides


def _same_layers(model: nn.Module, overrides: dict[int, dict[str, Any]]) -> bool:
    """Whether building each layer from its per-layer config gives the pruned model's shapes, attributes and
    stand-ins (the shape patch of both is the same)."""
    try:
        built = model_from_overrides(stock_class(model), model.config, overrides)
        return structure_patch(built) == structure_patch(model)
    except (ValueError, TypeError, ZeroDivisionError, RuntimeError, AttributeError):
        return False  # e.g. a head count the hidden size does not divide


def write_per_layer_config(model: nn.Module) -> None:
    """Write (or clear) `model.config.per_layer_config` from the model's layers; called whenever the record is."""
    config = model.config
    clear_per_layer_config(config)
    overrides = layer_overrides(model)
    if overrides:
        setattr(config, ALLOW_GLOBAL, True)
        config.per_layer_config = overrides


# ---- building layers from a per-layer config -------------------------------------------------------------
def _out_features(projection: nn.Module) -> int:
    return projection.nf if isinstance(projection, Conv1D) else projection.out_features


def _build_layer(adapter: ArchAdapter, layer_class: type, layer_config: PretrainedConfig, layer_idx: int) -> nn.Module:
    """Layer `layer_idx` as a stock class would build it from its per-layer config, in hfprune's terms: a skipped
    MLP is a zero-width one (what surgery leaves, bias-free), a skipped attention block an `EmptyAttention`."""
    skip = set(getattr(layer_config, SKIP, None) or ())
    unknown = sorted(skip - {"attention", "mlp"})
    if unknown:
        raise PruningError(f"per_layer_config skips {unknown} in layer {layer_idx}; hfprune knows attention and mlp")
    if "mlp" in skip:
        setattr(layer_config, adapter.intermediate_field, 0)
    kwargs = {"layer_idx": layer_idx} if "layer_idx" in inspect.signature(layer_class.__init__).parameters else {}
    layer = layer_class(layer_config, **kwargs)
    if "attention" in skip:
        parent_path, _, name = adapter.attention.rpartition(".")
        head_dim = adapter.head_dim(layer_config)
        width = _out_features(layer.get_submodule(adapter.output))
        setattr(_block(layer, parent_path), name, EmptyAttention(width, head_dim, layer_idx=layer_idx))
    return layer


def model_from_overrides(model_class: type, config: PretrainedConfig, overrides: dict[int, dict[str, Any]]) -> nn.Module:
    """A model of `config` on the meta device whose layers are built from `overrides`, as PR 45332 would build them."""
    adapter = get_adapter(config)
    plain = copy.deepcopy(config)
    clear_per_layer_config(plain)
    setattr(plain, PATCH_KEY, None)
    heterogeneous = copy.deepcopy(plain)
    heterogeneous.per_layer_config = overrides
    with torch.device("meta"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")  # a skipped MLP
        model = model_class(plain)
        layers = adapter.get_layers(model)
        for position in overrides:
            layer_config = heterogeneous.per_layer_config[position]
            layers[position] = _build_layer(adapter, type(layers[position]), layer_config, position)
    return model


