"""What an architecture adapter knows: where heads, FFN neurons and layers live in one model family."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.pytorch_utils import Conv1D

from ...errors import PruningError
from ..structure import PATCH_KEY, EmptyAttention, EmptyMLP
from ..transaction import (
    copied_parameter,
    is_tracing,
    replace_parameter,  # noqa: F401 (for adapters)
    slice_parameter,
)


def resolve(module: nn.Module, path: str):
    """The module or parameter at a dotted path (XLNet keeps q/k/v/o as bare Parameters, which
    `get_submodule` does not return)."""
    return functools.reduce(getattr, path.split("."), module)


def slice_linear(layer: nn.Module, index: torch.Tensor, dim: int) -> None:
    """Keep only the rows (dim=0, outputs) or columns (dim=1, inputs) of a Linear or Conv1D in `index`.

    Works in place on the module: only the kept slice is copied, so no second copy of the model exists.
    """
    if isinstance(layer, Conv1D):  # weight is [in, out]: the transpose of Linear's
        slice_parameter(layer, "weight", index, 1 - dim)
        if dim == 0:
            slice_parameter(layer, "bias", index, 0)
            layer.nf = len(index)
        else:
            layer.nx = len(index)
        return
    check_sliceable(layer)
    slice_parameter(layer, "weight", index, dim)
    if dim == 0:
        if layer.bias is not None:
            slice_parameter(layer, "bias", index, 0)
        layer.out_features = len(index)
    else:
        layer.in_features = len(index)


def check_sliceable(module) -> None:
    """Refuse, before anything changes, a projection that surgery cannot cut by indexing its weight: a
    quantized or adapter-wrapped layer, or weights offloaded to the meta device."""
    if isinstance(module, nn.Parameter):
        weight = module
    elif type(module) is nn.Linear or isinstance(module, Conv1D):
        weight = module.weight
    else:
        raise PruningError(f"cannot slice a {type(module).__name__}; expected nn.Linear or Conv1D (quantized and "
                           "adapter-wrapped layers are not supported: dequantize or merge them first)")
    if weight.device.type == "meta" and not is_tracing():  # a dry run (`tracing_slices`) has no values to cut
        raise PruningError("cannot slice weights on the meta device (offloaded?); load the model fully first")


def slice_norm(norm: nn.Module, index: torch.Tensor) -> None:
    """Keep the channels `index` of a LayerNorm or RMSNorm (its weight, bias and `normalized_shape`)."""
    slice_parameter(norm, "weight", index, 0)
    if getattr(norm, "bias", None) is not None:
        slice_parameter(norm, "bias", index, 0)
    if isinstance(getattr(norm, "normalized_shape", None), tuple):
        norm.normalized_shape = (len(index),)


def check_norm(norm: nn.Module) -> None:
    """Refuse a norm that `slice_norm` cannot cut: it must hold a 1-d weight (and at most a 1-d bias) on a real device."""
    weight, bias = getattr(norm, "weight", None), getattr(norm, "bias", None)
    if not isinstance(weight, nn.Parameter) or weight.dim() != 1 or (bias is not None and bias.dim() != 1):
        raise PruningError(f"cannot cut the channels of a {type(norm).__name__}; expected a LayerNorm or RMSNorm")
    if weight.device.type == "meta" and not is_tracing():  # a dry run (`tracing_slices`) has no values to cut
        raise PruningError("cannot slice weights on the meta device (offloaded?); load the model fully first")


def stand_in(module_class: type, out_features: int, projection: nn.Module, **kwargs) -> nn.Module:
    """An EmptyAttention/EmptyMLP replacing a block whose output projection is `projection`.

    It keeps the projection's bias (what the block still adds) and its device and dtype.
    """
    bias = projection.bias
    module = module_class(out_features, has_bias=bias is not None, **kwargs)
    if bias is not None:
        module.bias = copied_parameter(bias)
    return module.to(device=projection.weight.device, dtype=projection.weight.dtype)


def head_index(heads: Sequence[int], head_dim: int) -> torch.Tensor:
    """Row/column positions of `heads` in a projection that stores heads one after another."""
    heads = torch.as_tensor(list(heads), dtype=torch.long)
    return (heads[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)


class ArchAdapter:
    """Where one model family keeps its prunable structure.

    Paths are dotted attribute paths: `layers` from the model's `base_model`, all others from one layer.
    The default methods handle the common layout (separate q/k/v/o `nn.Linear`, heads stored one after
    another); families with another layout override a method or two.
    """

    model_types: tuple[str, ...] = ()
    layers: str
    attention: str  # the block replaced by EmptyAttention when a layer loses every head
    query: str
    key: str
    value: str
    output: str  # the attention output projection; its input is the concatenated per-head context
    ffn_inputs: tuple[str, ...]
    ffn_output: str
    ffn_width_attributes: tuple[str, ...] = ()  # "module.attribute" paths from a layer that store the FFN width
    output_inside_attention: bool = True  # whether `output` is part of the `attention` block
    num_layers_field: str = "num_hidden_layers"
    num_heads_field: str = "num_attention_heads"
    num_kv_heads_field: str | None = None
    intermediate_field: str = "intermediate_size"
    head_count_attributes: tuple[str, ...] = ()  # attributes of the `attention` block that count heads
    uniform_heads_in_config: bool = False  # the config can express a smaller head count (explicit head_dim)
    can_remove_all_heads: bool = True
    time_major: bool = False  # layers see hidden states as [tokens, batch, dim] instead of [batch, tokens, dim]
    causal_lm: bool = False  # a left-to-right decoder: perplexity means something (not for BERT-style encoders)

    # Width (the residual stream, `hidden_size`), paths from one layer. Everything outside the layers
    # (embeddings, final norm, pooler, task head) is found from the config: see `hfprune.engine.hidden`.
    hidden_inputs: tuple[str, ...] = ()  # projections that read the residual stream: their inputs are cut
    hidden_outputs: tuple[str, ...] = ()  # projections that write it: their outputs are cut
    hidden_parameters: tuple[str, ...] = ()  # bare Parameters whose first dim is the residual stream (XLNet)
    hidden_norms: tuple[str, ...] = ()  # LayerNorms / RMSNorms over the residual stream
    hidden_attributes: tuple[str, ...] = ()  # "module.attribute" paths from a layer that store the hidden size
    model_hidden_attributes: tuple[str, ...] = ()  # attributes of `base_model` that store the hidden size
    no_width_pruning: tuple[str, ...] = ()  # submodules of a layer whose inputs come from elsewhere (cross-attention)

    # ---- config -------------------------------------------------------------------------------------
    def num_layers(self, config: PretrainedConfig) -> int:
        return getattr(config, self.num_layers_field)

    def num_heads(self, config: PretrainedConfig) -> int:
        return getattr(config, self.num_heads_field)

    def num_kv_heads(self, config: PretrainedConfig) -> int:
        if self.num_kv_heads_field is None:
            return self.num_heads(config)
        return getattr(config, self.num_kv_heads_field, None) or self.num_heads(config)

    def head_dim(self, config: PretrainedConfig) -> int:
        """Width of one attention head. Width pruning never changes it, but for families that derive it from
        `hidden_size / num_heads` the config no longer tells it after the hidden size shrank: the record does."""
        recorded = (getattr(config, PATCH_KEY, None) or {}).get("original", {})
        return recorded.get("head_dim") or self.config_head_dim(config)

    def config_head_dim(self, config: PretrainedConfig) -> int:
        """Head width as the family computes it from its config."""
        return config.hidden_size // self.num_heads(config)

    def intermediate_size(self, config: PretrainedConfig) -> int:
        return getattr(config, self.intermediate_field)

    def set_intermediate_size(self, config: PretrainedConfig, size: int) -> None:
        setattr(config, self.intermediate_field, size)

    def set_head_counts(self, config: PretrainedConfig, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        """Write uniform head counts into the config (only called when `uniform_heads_in_config`)."""
        setattr(config, self.num_heads_field, num_heads)
        if self.num_kv_heads_field is not None:
            setattr(config, self.num_kv_heads_field, num_kv_heads)
        config.head_dim = head_dim

    def set_hidden_size(self, config: PretrainedConfig, size: int) -> None:
        """Write the width of the residual stream (and any size the family ties to it) into the config."""
        config.hidden_size = size

    def set_build_head_count(self, config: PretrainedConfig, num_heads: int) -> None:
        """For families that derive the head width from `hidden_size / num_heads`: the head count that lets a
        width-pruned config build (it must divide `hidden_size`); the real shapes come from the record's patch."""
        setattr(config, self.num_heads_field, num_heads)

    def probe_hidden_size(self, config: PretrainedConfig) -> int:
        """A second hidden size to build the config with, to see which outer dimensions follow `hidden_size`."""
        return 2 * config.hidden_size

    # ---- modules ------------------------------------------------------------------------------------
    def get_layers(self, model: nn.Module) -> nn.ModuleList:
        return model.base_model.get_submodule(self.layers)

    def set_layers(self, model: nn.Module, layers: nn.ModuleList) -> None:
        parent_path, _, name = self.layers.rpartition(".")
        parent = model.base_model.get_submodule(parent_path) if parent_path else model.base_model
        setattr(parent, name, layers)

    def has_attention(self, layer: nn.Module) -> bool:
        return not isinstance(layer.get_submodule(self.attention), EmptyAttention)

    # ---- masks --------------------------------------------------------------------------------------
    def register_head_mask(self, layer: nn.Module, factor: Callable[[torch.Tensor], torch.Tensor | None]):
        """Scale each head's context by `factor(context)` (shape [heads], or None: unchanged) before the
        output projection."""

        def pre_hook(module, args):
            context = args[0]
            scale = factor(context)
            if scale is None:
                return None
            scale = scale.repeat_interleave(context.shape[-1] // scale.numel())
            return (context * scale,) + tuple(args[1:])

        return layer.get_submodule(self.output).register_forward_pre_hook(pre_hook)

    def register_ffn_mask(self, layer: nn.Module, factor: Callable[[torch.Tensor], torch.Tensor | None]):
        """Scale each intermediate neuron by `factor(activations)` (shape [neurons], or None: unchanged)."""

        def pre_hook(module, args):
            scale = factor(args[0])
            return None if scale is None else (args[0] * scale,) + tuple(args[1:])

        return layer.get_submodule(self.ffn_output).register_forward_pre_hook(pre_hook)

    # ---- checks -------------------------------------------------------------------------------------
    def check_prunable(self, layer: nn.Module, part: str) -> None:
        """Refuse (before any change) a layer whose `part` ("heads" or "ffn") surgery cannot slice."""
        if part == "heads":
            paths = (self.query, self.key, self.value, self.output)
        else:
            paths = (*self.ffn_inputs, self.ffn_output)
        for path in paths:
            check_sliceable(resolve(layer, path))

    def layer_widths(self, layer: nn.Module) -> tuple[int, int, int]:
        """(query width, key/value width, FFN width) of one layer, read from its weight shapes.

        How a `config.hfprune` record is checked against the weights; a layer whose projections disagree
        with each other raises a `PruningError`.
        """
        if self.has_attention(layer):
            query, key, value = (_rows(resolve(layer, path)) for path in (self.query, self.key, self.value))
            output = _columns(resolve(layer, self.output))
            if query != output or key != value:
                raise PruningError(
                    f"the attention projections of a layer disagree (query {query}, key {key}, value {value}, "
                    f"output {output} features)"
                )
        else:
            query = key = 0
        return query, key, self.ffn_width(layer)

    def ffn_width(self, layer: nn.Module) -> int:
        if isinstance(layer.get_submodule(self.ffn_output.rpartition(".")[0]), EmptyMLP):
            return 0
        widths = {_rows(layer.get_submodule(path)) for path in self.ffn_inputs}
        widths.add(_columns(layer.get_submodule(self.ffn_output)))
        if len(widths) != 1:
            raise PruningError(f"the FFN projections of a layer disagree ({sorted(widths)} neurons)")
        return widths.pop()

    def hidden_width(self, layer: nn.Module) -> int:
        """Width of the residual stream as one layer's norms hold it (a `PruningError` if they disagree)."""
        widths = {resolve(layer, path).weight.shape[0] for path in self.hidden_norms}
        if len(widths) != 1:
            raise PruningError(f"the norms of a layer disagree on the hidden size ({sorted(widths)} channels)")
        return widths.pop()

    def check_width_prunable(self, model: nn.Module, new_size: int) -> None:
        """Refuse (before any change) a model whose layers' residual-stream channels surgery cannot cut."""
        for layer in self.get_layers(model):
            for path in self.no_width_pruning:
                if hasattr(layer, path):
                    raise PruningError(
                        f"width pruning does not support {type(layer).__name__}.{path} (its inputs come from "
                        "another model); prune heads, FFN neurons or layers instead"
                    )
            for path in (*self.hidden_inputs, *self.hidden_outputs, *self.hidden_parameters):
                module = _stand_in_on(layer, path) or resolve(layer, path)
                if not isinstance(module, (EmptyAttention, EmptyMLP)):
                    check_sliceable(module)
            for path in self.hidden_norms:
                check_norm(resolve(layer, path))

    # ---- surgery ------------------------------------------------------------------------------------
    def slice_hidden(self, layer: nn.Module, index: torch.Tensor) -> None:
        """Keep the residual-stream channels `index` (current positions) everywhere in one layer."""
        stand_ins = {}
        for path, dim in [(path, 1) for path in self.hidden_inputs] + [(path, 0) for path in self.hidden_outputs]:
            empty = _stand_in_on(layer, path)
            if empty is None:
                slice_linear(resolve(layer, path), index, dim)
            elif dim == 0:  # a removed block that still adds its output bias to the residual stream
                stand_ins[id(empty)] = empty
        for empty in stand_ins.values():
            if empty.bias is not None:
                slice_parameter(empty, "bias", index, 0)
            empty.out_features = len(index)
        for path in self.hidden_parameters:
            module_path, _, name = path.rpartition(".")
            slice_parameter(resolve(layer, module_path) if module_path else layer, name, index, 0)
        for path in self.hidden_norms:
            slice_norm(resolve(layer, path), index)
        for path in self.hidden_attributes:
            module_path, _, name = path.rpartition(".")
            module = resolve(layer, module_path) if module_path else layer
            if hasattr(module, name):
                setattr(module, name, len(index))

    def slice_heads(self, layer: nn.Module, keep_heads: list[int], keep_kv_heads: list[int], head_dim: int) -> None:
        """Keep the given (current, local) query and key/value heads of one layer."""
        q_index, kv_index = head_index(keep_heads, head_dim), head_index(keep_kv_heads, head_dim)
        slice_linear(layer.get_submodule(self.query), q_index, dim=0)
        slice_linear(layer.get_submodule(self.key), kv_index, dim=0)
        slice_linear(layer.get_submodule(self.value), kv_index, dim=0)
        slice_linear(layer.get_submodule(self.output), q_index, dim=1)
        self.set_head_attributes(layer.get_submodule(self.attention), len(keep_heads), len(keep_kv_heads), head_dim)

    def set_head_attributes(self, attention: nn.Module, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        for name in self.head_count_attributes:
            setattr(attention, name, num_heads)

    def slice_ffn(self, layer: nn.Module, keep: list[int]) -> None:
        index = torch.as_tensor(keep, dtype=torch.long)
        for path in self.ffn_inputs:
            slice_linear(layer.get_submodule(path), index, dim=0)
        slice_linear(layer.get_submodule(self.ffn_output), index, dim=1)
        for path in self.ffn_width_attributes:
            module_path, _, name = path.rpartition(".")
            setattr(layer.get_submodule(module_path), name, len(keep))

    def remove_attention(self, layer: nn.Module, layer_idx: int, head_dim: int) -> None:
        """Replace the attention block of a layer that keeps no head by an EmptyAttention."""
        if not self.can_remove_all_heads:
            raise PruningError(
                f"{type(self).__name__.removesuffix('Adapter')} cannot run a layer without heads; "
                "keep at least one head per layer or drop the whole layer with drop_layers"
            )
        output = layer.get_submodule(self.output)
        if self.output_inside_attention:
            empty = stand_in(EmptyAttention, _out_features(output), output, head_dim=head_dim, layer_idx=layer_idx)
        else:
            slice_linear(output, torch.zeros(0, dtype=torch.long), dim=1)
            empty = EmptyAttention(0, head_dim, layer_idx).to(device=output.weight.device, dtype=output.weight.dtype)
        parent_path, _, name = self.attention.rpartition(".")
        parent = layer.get_submodule(parent_path) if parent_path else layer
        setattr(parent, name, empty)


def _stand_in_on(layer: nn.Module, path: str) -> nn.Module | None:
    """The EmptyAttention / EmptyMLP that replaced a block on `path` (its projections are gone), or None."""
    module = layer
    for name in path.split(".")[:-1]:
        module = getattr(module, name)
        if isinstance(module, (EmptyAttention, EmptyMLP)):
            return module
    return None


def _out_features(projection: nn.Module) -> int:
    return projection.nf if isinstance(projection, Conv1D) else projection.out_features


def _weight(module: nn.Module) -> torch.Tensor:
    module = getattr(module, "base_layer", module)  # a PEFT-wrapped projection
    return module if isinstance(module, nn.Parameter) else module.weight


def _rows(module: nn.Module) -> int:
    """Output features of a projection (Conv1D stores its weight transposed)."""
    module = getattr(module, "base_layer", module)
    return module.weight.shape[1] if isinstance(module, Conv1D) else _weight(module).shape[0]


def _columns(module: nn.Module) -> int:
    """Input features of a projection."""
    module = getattr(module, "base_layer", module)
    return module.weight.shape[0] if isinstance(module, Conv1D) else _weight(module).shape[1]
