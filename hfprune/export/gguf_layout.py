"""What a GGUF file holds for a Llama-family model: the structure llama.cpp's `llama`/`deci` architectures read,
and every tensor under llama.cpp's name, in the file's order, with the zero stand-ins.

- architecture `llama` when every layer has the same shape (stock shapes), `deci` when layers differ: `deci`
  reads `attention.head_count`, `attention.head_count_kv` and `feed_forward_length` as per-layer arrays and
  builds each layer's tensors at that layer's sizes;
- tensor names and the q/k row permutation exactly as llama.cpp's `convert_hf_to_gguf.py` writes them for
  Llama (`LlamaModel.permute`: llama.cpp rotates adjacent pairs, transformers rotates halves);
- a tied `lm_head` is not written: llama.cpp then uses `token_embd.weight` for the output.

Where llama.cpp's `deci` graph cannot run a pruned layer as transformers does, the layer gets a stand-in that
adds exactly zero (all of its weights are zero, so its output is 0.0 bit for bit):

- **a layer that keeps attention but lost its whole MLP** (`feed_forward_length` 0): llama.cpp's deci loop
  `continue`s before `inpL = cur` there and drops the attention output. The layer gets an FFN of one neuron
  whose gate, up and down projections are zero: `down(silu(0) * 0) = 0`, so the layer adds its attention
  output and exactly nothing else. Every layer without an MLP gets this stand-in (a layer that lost both blocks
  is then an exact identity too).
- **layer 0 without attention**: llama.cpp reads the head width from layer 0's head count, so layer 0 gets one
  query head and one KV group whose q, k, v and output projections are zero (it adds exactly 0).
- **a removed block that kept a bias** (`EmptyAttention`/`EmptyMLP` with a bias, from models with
  `attention_bias`/`mlp_bias`): the same zero stand-in, carrying the bias as its output bias.

Everything here reads shapes, not values (but for the bias of a removed block, one vector), and reaches each
layer through `open_layer(index)`, a context that holds that layer's weights while its tensors are handed on.
So the same code serves a model in memory (`in_memory`) and a checkpoint read one layer at a time
(`hfprune.streaming.gguf`): `gguf_structure` walks the layers once for the shapes the file declares, and
`each_tensor` walks them again for the data, in the same order.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..engine.arch import get_adapter
from ..errors import PruningError

__all__ = [
    "FAMILIES", "Emit", "GgufStructure", "KeptBias", "LayerTensors", "OpenLayer", "bias_of", "check_config", "context_length", "each_tensor",
    "gguf_structure", "in_memory", "layer_tensors", "nonzero", "permute", "rope",
]  # fmt: skip

FAMILIES = ("llama", "mistral", "qwen2")  # qwen3's per-head q/k norms have no place in llama.cpp's llama/deci

OpenLayer = Callable[[int], contextlib.AbstractContextManager[nn.Module]]
"""`open_layer(index)`: a context holding layer `index` with its weights (read in, or already in memory)."""
Emit = Callable[[str, torch.Tensor], None]
"""`emit(name, tensor)`: takes one tensor of the file; it must not keep the tensor past the call."""
KeptBias = Callable[[nn.Module], "torch.Tensor | None"]
"""`kept_bias(removed block)`: its output bias when it adds something (a nonzero bias), else None."""


def check_config(config: Any) -> None:
    """Refuse, in one line and before any weight is read, a model llama.cpp's llama/deci cannot run exactly."""
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise PruningError(
            f"GGUF export supports the Llama family ({', '.join(FAMILIES)}), not {model_type!r}"
            + ("; qwen3's per-head q/k norms have no place in llama.cpp's llama/deci architectures" if model_type == "qwen3" else "")
        )
    if getattr(config, "hidden_act", "silu") != "silu":
        raise PruningError(f"GGUF export supports the SiLU-gated MLP only, and the model uses {config.hidden_act!r}")
    rope_settings = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope_settings.get("rope_type", rope_settings.get("type", "default")) if isinstance(rope_settings, dict) else "default"
    if rope_type not in ("default", "linear"):
        raise PruningError(f"GGUF export does not write {rope_type!r} RoPE scaling yet; only default and linear RoPE")
    window = getattr(config, "sliding_window", None)
    if getattr(config, "use_sliding_window", window is not None) and window and window < context_length(config):
        warnings.warn(  # as llama.cpp's own converter writes Mistral: exact up to the window
            f"llama.cpp's llama/deci architectures have no sliding-window attention: the GGUF attends to the whole "
            f"context, and matches transformers only up to {window} tokens",
            stacklevel=3,
        )


def context_length(config: Any) -> int:
    return int(getattr(config, "max_position_embeddings", 0) or 2048)


def rope(config: Any) -> tuple[float, float | None]:
    """(rope_theta, linear scaling factor or None)."""
    settings = getattr(config, "rope_parameters", None) or {}
    if not isinstance(settings, dict):
        settings = {}
    theta = settings.get("rope_theta", getattr(config, "rope_theta", None) or 10000.0)
    linear = settings.get("rope_type", settings.get("type")) == "linear"
    scaling = settings if linear else (getattr(config, "rope_scaling", None) or {})
    factor = scaling.get("factor") if isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type")) == "linear" else None
    return float(theta), (float(factor) if factor else None)


def permute(weights: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's `LlamaModel.permute` for one layer's q (or k) rows (or bias) of `n_head` heads: from
    transformers' rotate-half order to llama.cpp's adjacent pairs."""
    return weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def bias_of(module: nn.Module) -> torch.Tensor | None:
    bias = getattr(module, "bias", None)
    return bias if isinstance(bias, torch.Tensor) else None


def nonzero(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """`tensor` when it holds a nonzero value, else None."""
    return tensor if tensor is not None and bool(tensor.any()) else None


def _kept_bias(module: nn.Module) -> torch.Tensor | None:
    return nonzero(bias_of(module))


@dataclass
class LayerTensors:
    """One layer as llama.cpp reads it: its tensors (llama.cpp's names without the `blk.N.` prefix) and sizes."""

    tensors: dict[str, torch.Tensor]
    heads: int
    kv_heads: int
    ffn: int
    notes: list[str]


def layer_tensors(
    adapter: Any, layer: nn.Module, index: int, hidden: int, head_dim: int, kept_bias: KeptBias = _kept_bias
) -> LayerTensors:
    """One layer's tensors under llama.cpp's names, with the stand-ins. On a meta-device layer the tensors carry
    the shapes only; `kept_bias` then reads a removed block's bias from elsewhere."""
    tensors: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    attention = layer.self_attn
    zeros = torch.zeros
    if adapter.has_attention(layer):
        query, key, _ = adapter.layer_widths(layer)
        heads, kv_heads = query // head_dim, key // head_dim
        tensors["attn_norm.weight"] = layer.input_layernorm.weight
        tensors["attn_q.weight"] = permute(attention.q_proj.weight, heads)
        tensors["attn_k.weight"] = permute(attention.k_proj.weight, kv_heads)
        tensors["attn_v.weight"] = attention.v_proj.weight
        tensors["attn_output.weight"] = attention.o_proj.weight
        for name, module, n_head in (("attn_q", attention.q_proj, heads), ("attn_k", attention.k_proj, kv_heads)):
            if bias_of(module) is not None:
                tensors[f"{name}.bias"] = permute(module.bias, n_head)
        if bias_of(attention.v_proj) is not None:
            tensors["attn_v.bias"] = attention.v_proj.bias
        if bias_of(attention.o_proj) is not None:
            tensors["attn_output.bias"] = attention.o_proj.bias
    else:
        bias = kept_bias(attention)
        if index == 0 or bias is not None:
            heads = kv_heads = 1
            tensors["attn_norm.weight"] = layer.input_layernorm.weight
            for name in ("attn_q", "attn_k", "attn_v"):
                tensors[f"{name}.weight"] = zeros(head_dim, hidden)
            tensors["attn_output.weight"] = zeros(hidden, head_dim)
            if bias is not None:
                tensors["attn_output.bias"] = bias
            why = "layer 0 sets llama.cpp's head width" if index == 0 else "its output bias is kept"
            notes.append(f"layer {index}: zero attention of 1 head (attention removed; {why})")
        else:
            heads = kv_heads = 0
    mlp = layer.mlp
    ffn = adapter.ffn_width(layer)
    if ffn:
        tensors["ffn_norm.weight"] = layer.post_attention_layernorm.weight
        tensors["ffn_gate.weight"] = mlp.gate_proj.weight
        tensors["ffn_up.weight"] = mlp.up_proj.weight
        tensors["ffn_down.weight"] = mlp.down_proj.weight
        for name, module in (("ffn_gate", mlp.gate_proj), ("ffn_up", mlp.up_proj), ("ffn_down", mlp.down_proj)):
            if bias_of(module) is not None:
                tensors[f"{name}.bias"] = module.bias
    else:
        ffn = 1
        tensors["ffn_norm.weight"] = layer.post_attention_layernorm.weight
        tensors["ffn_gate.weight"] = zeros(1, hidden)
        tensors["ffn_up.weight"] = zeros(1, hidden)
        tensors["ffn_down.weight"] = zeros(hidden, 1)
        bias = kept_bias(mlp)
        if bias is not None:
            tensors["ffn_down.bias"] = bias
        notes.append(f"layer {index}: zero FFN of width 1 (MLP removed; llama.cpp's deci would drop the layer's output)")
    return LayerTensors(tensors, heads, kv_heads, ffn, notes)


@dataclass
class GgufStructure:
    """The model as llama.cpp's llama/deci architectures read it, and the file's tensors (name -> shape, in
    PyTorch's order of dimensions) in the order they are written."""

    tensors: dict[str, tuple[int, ...]]
    heads: list[int]
    kv_heads: list[int]
    ffn: list[int]
    architecture: str
    head_dim: int
    vocab_size: int
    hidden: int
    tied: bool
    stand_ins: list[str] = field(default_factory=list)


def in_memory(model: nn.Module) -> OpenLayer:
    """`open_layer` for a model whose layers are all in memory (or all on the meta device: shapes only)."""
    layers = get_adapter(model).get_layers(model)
    return lambda index: contextlib.nullcontext(layers[index])


def _tied(model: nn.Module) -> bool:
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    return head is embed or head.data_ptr() == embed.data_ptr()


def each_tensor(model: nn.Module, tied: bool, open_layer: OpenLayer, emit: Emit, kept_bias: KeptBias = _kept_bias) -> list[LayerTensors]:
    """Hand every tensor of the file to `emit`, in the file's order: the embeddings, each layer's tensors while
    `open_layer(index)` holds it, the final norm and (untied) the head. Returns each layer's sizes and notes
    (their `tensors` empty), so that no tensor outlives its layer here."""
    adapter = get_adapter(model)
    head_dim = int(adapter.head_dim(model.config))
    hidden = int(model.get_input_embeddings().weight.shape[1])
    emit("token_embd.weight", model.get_input_embeddings().weight)
    layers = []
    for index in range(len(adapter.get_layers(model))):
        with open_layer(index) as layer:
            layers.append(_emit_layer(layer_tensors(adapter, layer, index, hidden, head_dim, kept_bias), index, emit))
    emit("output_norm.weight", model.model.norm.weight)
    if not tied:
        emit("output.weight", model.get_output_embeddings().weight)
    return layers


def _emit_layer(layer: LayerTensors, index: int, emit: Emit) -> LayerTensors:
    """Emit one layer's tensors; a function of its own so that its loop variables die with the call."""
    for name, tensor in layer.tensors.items():
        emit(f"blk.{index}.{name}", tensor)
    return LayerTensors({}, layer.heads, layer.kv_heads, layer.ffn, layer.notes)


def gguf_structure(model: nn.Module, open_layer: OpenLayer | None = None, kept_bias: KeptBias = _kept_bias) -> GgufStructure:
    """The file's structure and tensor shapes, from one walk over the layers (`open_layer`: default, the model's
    own layers in memory or on the meta device). The embeddings must be real: whether the head is tied is read
    from them."""
    if getattr(model, "lm_head", None) is None or not hasattr(model, "model"):
        raise PruningError(f"GGUF export needs a causal LM with an lm_head ({type(model).__name__} has none)")
    if bias_of(model.get_output_embeddings()) is not None:
        raise PruningError("llama.cpp's llama/deci architectures have no lm_head bias")
    adapter = get_adapter(model)
    if not len(adapter.get_layers(model)):
        raise PruningError("the model has no layer left; llama.cpp needs at least one")
    tied = _tied(model)
    shapes: dict[str, tuple[int, ...]] = {}
    layers = each_tensor(model, tied, open_layer or in_memory(model), lambda name, tensor: shapes.__setitem__(name, tuple(tensor.shape)), kept_bias)
    heads = [layer.heads for layer in layers]
    kv_heads = [layer.kv_heads for layer in layers]
    ffn = [layer.ffn for layer in layers]
    uniform = len(set(heads)) == len(set(kv_heads)) == len(set(ffn)) == 1 and heads[0] > 0
    vocab_size, hidden = model.get_input_embeddings().weight.shape
    return GgufStructure(
        shapes, heads, kv_heads, ffn, "llama" if uniform else "deci", int(adapter.head_dim(model.config)),
        int(vocab_size), int(hidden), bool(tied), [note for layer in layers for note in layer.notes],
    )  # fmt: skip
