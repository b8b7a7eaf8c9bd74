"""Export a pruned Llama-family decoder to GGUF, the file llama.cpp (Ollama, LM Studio) runs.

llama.cpp's own converter cannot express hfprune's shapes (its `deci` path writes the full query-head count and
rounds FFN widths up to multiples of 256), so the file is written directly with the `gguf` package:

- architecture `llama` when every layer has the same shape (stock shapes), `deci` when layers differ: `deci`
  reads `attention.head_count`, `attention.head_count_kv` and `feed_forward_length` as per-layer arrays and
  builds each layer's tensors at that layer's sizes;
- tensor names and the q/k row permutation exactly as llama.cpp's `convert_hf_to_gguf.py` writes them for
  Llama (`LlamaModel.permute`: llama.cpp rotates adjacent pairs, transformers rotates halves);
- a tied `lm_head` is not written: llama.cpp then uses `token_embd.weight` for the output;
- the tokenizer: a GPT-2-style byte-level BPE tokenizer (SmolLM2, Llama 3, Qwen2) as `tokenizer.ggml.model`
  `gpt2` with its merges, `tokenizer.ggml.pre` found like llama.cpp's converter does (a hash of the tokens of a
  test string) or given as `tokenizer_pre`.

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

A stand-in costs one neuron (or one head of KV cache) per layer that has one; `GgufExport.stand_ins` lists them.

Before the file is kept, it is loaded in llama.cpp and its logits compared with PyTorch's (`gguf_check`).
`gguf` and `llama_cpp` are dependencies of the `gguf` extra; they are imported only inside these calls.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..engine.arch import get_adapter
from ..errors import PipelineInputError, PruningError
from ..io.checkpoint import TOKENIZER_FILES, load_tokenizer, resolve_model
from ..io.loading import from_pretrained
from ..io.output import check_output_file
from .gguf_check import GGUF_QUANTIZED, require_llama_cpp_for, write_checked

__all__ = ["GGUF_DTYPES", "GgufExport", "export_gguf"]

GGUF_DTYPES = ("f32", "f16", "bf16", *GGUF_QUANTIZED)
FAMILIES = ("llama", "mistral", "qwen2")  # qwen3's per-head q/k norms have no place in llama.cpp's llama/deci

# llama.cpp's convert_hf_to_gguf.py: the string whose token ids identify a BPE pre-tokenizer, and the hashes of
# the families hfprune exports (get_vocab_base_pre); any other can be named with `tokenizer_pre`
_CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 "
    "33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на "
    "Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, "
    "'D you like some tea? We'Ve a'lL"
)
_KNOWN_PRE = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",
}


@dataclass
class GgufExport:
    """What `export_gguf` wrote."""

    path: Path
    architecture: str  # "llama" (every layer the same shape) or "deci"
    dtype: str
    head_count: list[int]  # per layer, as written (stand-ins included)
    head_count_kv: list[int]
    feed_forward_length: list[int]
    tokenizer_pre: str | None
    tied_embeddings: bool
    stand_ins: list[str] = field(default_factory=list)  # "layer 3: zero FFN of width 1 (MLP removed)", ...
    # the check in llama.cpp (None and 0 when check=False): max |llama.cpp - PyTorch| / max |PyTorch| over
    # `sequences` token sequences, its tolerance, and for a quantized dtype the same for the f32 file it came from
    max_relative_difference: float | None = None
    tolerance: float | None = None
    sequences: int = 0
    f32_max_relative_difference: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"format": "gguf", "file": self.path.name, "architecture": self.architecture, "dtype": self.dtype,
                "head_count": self.head_count, "head_count_kv": self.head_count_kv,
                "feed_forward_length": self.feed_forward_length, "tokenizer_pre": self.tokenizer_pre,
                "tied_embeddings": self.tied_embeddings, "stand_ins": self.stand_ins,
                "max_relative_difference": self.max_relative_difference, "tolerance": self.tolerance,
                "sequences": self.sequences, "f32_max_relative_difference": self.f32_max_relative_difference}  # fmt: skip


def _require_gguf() -> Any:
    try:
        return importlib.import_module("gguf")
    except ImportError:
        raise PruningError("GGUF export needs the gguf package (not installed): pip install 'hfprune[gguf]'") from None


# ---- the model ------------------------------------------------------------------------------------------
def _load(model_or_dir: Any) -> tuple[nn.Module, Any]:
    if isinstance(model_or_dir, nn.Module):
        if not hasattr(model_or_dir, "config"):
            raise PruningError(f"expected a transformers PreTrainedModel or a checkpoint folder, got {type(model_or_dir).__name__}")
        return model_or_dir, None
    source = resolve_model(model_or_dir, need_tokenizer=False)
    from transformers import AutoModelForCausalLM  # a GGUF source's config names no architecture: ask for the LM

    kwargs = {**source.model_kwargs, "dtype": torch.float32}
    model = from_pretrained(source.name_or_path, config=copy.deepcopy(source.config), model_class=AutoModelForCausalLM, **kwargs)
    tokenizer = None
    if not source.is_local or source.load_kwargs or any((Path(source.name_or_path) / name).is_file() for name in TOKENIZER_FILES):
        tokenizer = load_tokenizer(source)
    return model, tokenizer


def _check_family(model: nn.Module) -> None:
    config = model.config
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise PruningError(
            f"GGUF export supports the Llama family ({', '.join(FAMILIES)}), not {model_type!r}"
            + ("; qwen3's per-head q/k norms have no place in llama.cpp's llama/deci architectures" if model_type == "qwen3" else "")
        )
    if getattr(model, "lm_head", None) is None or not hasattr(model, "model"):
        raise PruningError(f"GGUF export needs a causal LM with an lm_head ({type(model).__name__} has none)")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise PruningError(f"GGUF export supports the SiLU-gated MLP only, and the model uses {config.hidden_act!r}")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type not in ("default", "linear"):
        raise PruningError(f"GGUF export does not write {rope_type!r} RoPE scaling yet; only default and linear RoPE")
    window = getattr(config, "sliding_window", None)
    if getattr(config, "use_sliding_window", window is not None) and window and window < _context_length(config):
        warnings.warn(  # as llama.cpp's own converter writes Mistral: exact up to the window
            f"llama.cpp's llama/deci architectures have no sliding-window attention: the GGUF attends to the whole "
            f"context, and matches transformers only up to {window} tokens",
            stacklevel=3,
        )


def _context_length(config: Any) -> int:
    return int(getattr(config, "max_position_embeddings", 0) or 2048)


def _rope(config: Any) -> tuple[float, float | None]:
    """(rope_theta, linear scaling factor or None)."""
    rope = getattr(config, "rope_parameters", None) or {}
    if not isinstance(rope, dict):
        rope = {}
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None) or 10000.0)
    scaling = rope if rope.get("rope_type", rope.get("type")) == "linear" else (getattr(config, "rope_scaling", None) or {})
    factor = scaling.get("factor") if isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type")) == "linear" else None
    return float(theta), (float(factor) if factor else None)


def permute(weights: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's `LlamaModel.permute` for one layer's q (or k) rows (or bias) of `n_head` heads: from
    transformers' rotate-half order to llama.cpp's adjacent pairs."""
    return weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _add_tensor(gguf: Any, writer: Any, name: str, tensor: torch.Tensor, dtype: str) -> None:
    data = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
    if dtype == "f32" or data.ndim == 1:  # llama.cpp keeps norms and biases (1-D) in f32, like its converter
        writer.add_tensor(name, data)
    elif dtype == "f16":
        writer.add_tensor(name, data.astype(np.float16))
    else:  # bf16, as llama.cpp's converter writes it: numpy has no bfloat16, so raw bytes of a declared type
        bf16 = gguf.GGMLQuantizationType.BF16
        writer.add_tensor(name, gguf.quants.quantize(data, bf16), raw_dtype=bf16)


def _bias(module: nn.Module) -> torch.Tensor | None:
    bias = getattr(module, "bias", None)
    return bias if isinstance(bias, torch.Tensor) else None


@dataclass
class _Layer:
    tensors: dict[str, torch.Tensor]
    heads: int
    kv_heads: int
    ffn: int
    notes: list[str]


def _layer(adapter: Any, layer: nn.Module, index: int, hidden: int, head_dim: int) -> _Layer:
    """One layer's tensors under llama.cpp's names (without the `blk.N.` prefix), with the stand-ins."""
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
            if _bias(module) is not None:
                tensors[f"{name}.bias"] = permute(module.bias, n_head)
        if _bias(attention.v_proj) is not None:
            tensors["attn_v.bias"] = attention.v_proj.bias
        if _bias(attention.o_proj) is not None:
            tensors["attn_output.bias"] = attention.o_proj.bias
    else:
        bias = _bias(attention)
        if index == 0 or (bias is not None and bool(bias.any())):
            heads = kv_heads = 1
            tensors["attn_norm.weight"] = layer.input_layernorm.weight
            for name in ("attn_q", "attn_k", "attn_v"):
                tensors[f"{name}.weight"] = zeros(head_dim, hidden)
            tensors["attn_output.weight"] = zeros(hidden, head_dim)
            if bias is not None and bool(bias.any()):
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
            if _bias(module) is not None:
                tensors[f"{name}.bias"] = module.bias
    else:
        ffn = 1
        tensors["ffn_norm.weight"] = layer.post_attention_layernorm.weight
        tensors["ffn_gate.weight"] = zeros(1, hidden)
        tensors["ffn_up.weight"] = zeros(1, hidden)
        tensors["ffn_down.weight"] = zeros(hidden, 1)
        bias = _bias(mlp)
        if bias is not None and bool(bias.any()):
            tensors["ffn_down.bias"] = bias
        notes.append(f"layer {index}: zero FFN of width 1 (MLP removed; llama.cpp's deci would drop the layer's output)")
    return _Layer(tensors, heads, kv_heads, ffn, notes)


# ---- the tokenizer --------------------------------------------------------------------------------------
def _tokenizer_pre(tokenizer: Any) -> str | None:
    try:
        tokens = tokenizer.encode(_CHKTXT)
    except Exception:  # noqa: BLE001 - a tokenizer that cannot encode the probe has no known pre-tokenizer
        return None
    return _KNOWN_PRE.get(hashlib.sha256(str(tokens).encode()).hexdigest())


def _write_tokenizer(gguf: Any, writer: Any, tokenizer: Any, vocab_size: int, pre: str | None) -> str:
    """GPT-2-style byte-level BPE, as llama.cpp's `_set_vocab_gpt2` writes it. Returns the pre-tokenizer name."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    state = json.loads(backend.to_str()) if backend is not None else {}
    model = state.get("model") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(state.get("pre_tokenizer")):
        raise PruningError(
            "GGUF export writes GPT-2-style byte-level BPE tokenizers only (SmolLM2, Llama 3, Qwen2); this one is "
            f"{model.get('type') or type(tokenizer).__name__}"
        )
    vocab = tokenizer.get_vocab()
    if vocab and max(vocab.values()) >= vocab_size:
        raise PruningError(f"the tokenizer has token ids up to {max(vocab.values())} for a model with {vocab_size} embeddings")
    reverse = {index: token for token, index in vocab.items()}
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    tokens: list[str] = []
    types: list[int] = []
    for index in range(vocab_size):
        if index not in reverse:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(reverse[index])
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[index])
            types.append(gguf.TokenType.NORMAL)
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in model.get("merges") or []]
    name = pre or _tokenizer_pre(tokenizer)
    if name is None:
        warnings.warn(
            "the tokenizer's pre-tokenizer is not one llama.cpp's converter knows by hash here; writing 'default' "
            "(pass tokenizer_pre='llama-bpe', 'smollm', 'qwen2', ... to name it)",
            stacklevel=3,
        )
        name = "default"
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(name)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if merges:
        writer.add_token_merges(merges)
    for role in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{role}_token_id", None)
        if token_id is not None:
            getattr(writer, f"add_{role}_token_id")(int(token_id))
    add_bos = getattr(tokenizer, "add_bos_token", None)
    if isinstance(add_bos, bool):
        writer.add_add_bos_token(add_bos)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        writer.add_chat_template(template)
    return name


# ---- the file -------------------------------------------------------------------------------------------
_FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16"}  # quantized: llama.cpp's quantizer sets it


@dataclass
class _Structure:
    """The model as llama.cpp's llama/deci architectures read it."""

    layers: list[_Layer]
    heads: list[int]
    kv_heads: list[int]
    ffn: list[int]
    architecture: str
    head_dim: int
    vocab_size: int
    hidden: int
    tied: bool


def _structure(model: nn.Module) -> _Structure:
    adapter = get_adapter(model)
    head_dim = adapter.head_dim(model.config)
    embed = model.get_input_embeddings().weight
    vocab_size, hidden = embed.shape
    layers = [_layer(adapter, layer, index, hidden, head_dim) for index, layer in enumerate(adapter.get_layers(model))]
    if not layers:
        raise PruningError("the model has no layer left; llama.cpp needs at least one")
    heads = [layer.heads for layer in layers]
    kv_heads = [layer.kv_heads for layer in layers]
    ffn = [layer.ffn for layer in layers]
    uniform = len(set(heads)) == len(set(kv_heads)) == len(set(ffn)) == 1 and heads[0] > 0
    lm_head = model.get_output_embeddings().weight
    if _bias(model.get_output_embeddings()) is not None:
        raise PruningError("llama.cpp's llama/deci architectures have no lm_head bias")
    tied = lm_head is embed or lm_head.data_ptr() == embed.data_ptr()
    return _Structure(
        layers, heads, kv_heads, ffn, "llama" if uniform else "deci", int(head_dim), int(vocab_size), int(hidden), bool(tied)
    )


def _write(gguf: Any, model: nn.Module, shapes: _Structure, tokenizer: Any, pre: str | None, target: Path, dtype: str) -> str:
    """Write the GGUF file `target` in `dtype` (f32, f16 or bf16). Returns the tokenizer's pre-tokenizer name."""
    config = model.config
    uniform = shapes.architecture == "llama"
    writer = gguf.GGUFWriter(str(target), shapes.architecture)
    writer.add_name(Path(str(getattr(config, "_name_or_path", "") or "model")).name or "model")
    writer.add_context_length(_context_length(config))
    writer.add_embedding_length(shapes.hidden)
    writer.add_block_count(len(shapes.layers))
    writer.add_feed_forward_length(shapes.ffn[0] if uniform else shapes.ffn)
    writer.add_head_count(shapes.heads[0] if uniform else shapes.heads)
    writer.add_head_count_kv(shapes.kv_heads[0] if uniform else shapes.kv_heads)
    writer.add_key_length(shapes.head_dim)
    writer.add_value_length(shapes.head_dim)
    writer.add_rope_dimension_count(shapes.head_dim)
    theta, factor = _rope(config)
    writer.add_rope_freq_base(theta)
    if factor:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(factor)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(shapes.vocab_size)
    writer.add_file_type(getattr(gguf.LlamaFileType, _FILE_TYPES[dtype]))
    name = _write_tokenizer(gguf, writer, tokenizer, shapes.vocab_size, pre)

    _add_tensor(gguf, writer, "token_embd.weight", model.get_input_embeddings().weight, dtype)
    for index, layer in enumerate(shapes.layers):
        for tensor_name, tensor in layer.tensors.items():
            _add_tensor(gguf, writer, f"blk.{index}.{tensor_name}", tensor, dtype)
    _add_tensor(gguf, writer, "output_norm.weight", model.model.norm.weight, dtype)
    if not shapes.tied:
        _add_tensor(gguf, writer, "output.weight", model.get_output_embeddings().weight, dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return name


def export_gguf(
    model_or_dir: nn.Module | str | os.PathLike,
    path: str | os.PathLike,
    dtype: str = "f32",
    *,
    tokenizer: Any = None,
    tokenizer_pre: str | None = None,
    overwrite: bool = False,
    check: bool = True,
) -> GgufExport:
    """Write a (pruned) Llama-family model or checkpoint folder to the GGUF file `path`, for llama.cpp.

    Architecture `llama` when every layer has the same heads, KV groups and FFN width, `deci` (per-layer arrays)
    otherwise; any structure hfprune makes is exact in llama.cpp: uneven heads and KV groups, uneven FFN widths,
    removed attention or MLP blocks, dropped layers, a pruned width. A removed MLP is written as an FFN of one
    neuron whose weights are zero (llama.cpp's `deci` would otherwise drop that layer's attention output), and a
    layer 0 without attention as one zero head; both add exactly 0 (see the module notes).

    `dtype`: "f32", "f16" or "bf16" (norms and biases stay f32, as llama.cpp's converter keeps them), or a type of
    llama.cpp's own quantizer, run on an f32 file: "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0". K-quants need rows
    of a multiple of 256 values, q8_0/q4_0 of 32: llama.cpp falls back per tensor by itself, q4_K to q5_0, q5_K to
    q5_1, q6_K to q8_0, and to f16 where rows are no multiple of 32 (the down projection of a pruned FFN of 38
    neurons). So hidden widths of 576 (SmolLM2) or 64 get no K-quant tensor at all.

    `check` (default): before the file is kept, llama.cpp loads it (f32 KV cache) and its logits on three fixed
    token sequences are compared with the model's in PyTorch (float32); beyond `GGUF_TOLERANCES[dtype]` (relative
    to the largest logit) `GgufMismatchError` is raised and nothing is written. A quantized file's f32 source is
    checked at the f32 tolerance first. The check and the quantized types need llama-cpp-python (`hfprune[gguf]`).

    The tokenizer (`tokenizer`, or the checkpoint's) is written too: GPT-2-style byte-level BPE only;
    `tokenizer_pre` names llama.cpp's pre-tokenizer when it is not recognised. The file is written under a
    temporary name next to `path` and renamed into place; an existing `path` is refused unless `overwrite`.
    """
    gguf = _require_gguf()
    if dtype not in GGUF_DTYPES:
        raise PruningError(f"dtype must be one of {', '.join(GGUF_DTYPES)}, got {dtype!r}")
    inputs = [] if isinstance(model_or_dir, nn.Module) else [model_or_dir]
    path = check_output_file(path, name="path", cli_name="--output-dir", inputs=inputs)
    if path.exists() and not overwrite:
        raise PipelineInputError(
            f"{path} exists; pass overwrite=True to replace it", cli_message=f"{path} exists; pass --overwrite to replace it"
        )
    model, loaded_tokenizer = _load(model_or_dir)
    _check_family(model)
    tokenizer = tokenizer if tokenizer is not None else loaded_tokenizer
    if tokenizer is None:
        raise PruningError("GGUF export needs the model's tokenizer (llama.cpp reads it from the file): pass tokenizer=")
    shapes = _structure(model)
    require_llama_cpp_for(dtype, check)
    path.parent.mkdir(parents=True, exist_ok=True)
    write = functools.partial(_write, gguf, model, shapes, tokenizer, tokenizer_pre)  # (target, dtype) -> pre
    pre, checked = write_checked(write, path, dtype, model, shapes.vocab_size, _context_length(model.config), check=check)
    stand_ins = [note for layer in shapes.layers for note in layer.notes]
    return GgufExport(
        path, shapes.architecture, dtype, shapes.heads, shapes.kv_heads, shapes.ffn, pre, shapes.tied, stand_ins, **checked
    )
