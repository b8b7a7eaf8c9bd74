"""Writing a GGUF file: the metadata llama.cpp reads, the tokenizer, and the tensors, declared first and written
one at a time.

gguf's two-phase API (`add_tensor_info` for every tensor, the header, then `write_tensor_data` in the same order)
needs only the shapes up front, so no tensor is held longer than it takes to write it: a model in memory and a
checkpoint read one layer at a time (`hfprune.streaming.gguf`) go through the same writer and give the same bytes.

The tokenizer: a GPT-2-style byte-level BPE tokenizer (SmolLM2, Llama 3, Qwen2) as `tokenizer.ggml.model` `gpt2`
with its merges, `tokenizer.ggml.pre` found like llama.cpp's converter does (a hash of the tokens of a test
string) or given as `tokenizer_pre`.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import PruningError
from .gguf_layout import GgufStructure, OpenLayer, context_length, each_tensor, in_memory, rope

__all__ = ["write_gguf", "write_tokenizer"]

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
_FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16"}  # quantized: llama.cpp's quantizer sets it


# ---- the tokenizer --------------------------------------------------------------------------------------
def _tokenizer_pre(tokenizer: Any) -> str | None:
    try:
        tokens = tokenizer.encode(_CHKTXT)
    except Exception:  # noqa: BLE001 - a tokenizer that cannot encode the probe has no known pre-tokenizer
        return None
    return _KNOWN_PRE.get(hashlib.sha256(str(tokens).encode()).hexdigest())


def write_tokenizer(gguf: Any, writer: Any, tokenizer: Any, vocab_size: int, pre: str | None) -> str:
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


# ---- the metadata ---------------------------------------------------------------------------------------
def _write_metadata(gguf: Any, writer: Any, config: Any, shapes: GgufStructure, dtype: str) -> None:
    uniform = shapes.architecture == "llama"
    writer.add_name(Path(str(getattr(config, "_name_or_path", "") or "model")).name or "model")
    writer.add_context_length(context_length(config))
    writer.add_embedding_length(shapes.hidden)
    writer.add_block_count(len(shapes.heads))
    writer.add_feed_forward_length(shapes.ffn[0] if uniform else shapes.ffn)
    writer.add_head_count(shapes.heads[0] if uniform else shapes.heads)
    writer.add_head_count_kv(shapes.kv_heads[0] if uniform else shapes.kv_heads)
    writer.add_key_length(shapes.head_dim)
    writer.add_value_length(shapes.head_dim)
    writer.add_rope_dimension_count(shapes.head_dim)
    theta, factor = rope(config)
    writer.add_rope_freq_base(theta)
    if factor:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(factor)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(shapes.vocab_size)
    writer.add_file_type(getattr(gguf.LlamaFileType, _FILE_TYPES[dtype]))


# ---- the tensors ----------------------------------------------------------------------------------------
def _stored_as(shape: Sequence[int], dtype: str) -> str:
    """A tensor's type in the file: llama.cpp keeps norms and biases (1-D) in f32, like its converter."""
    return "f32" if dtype == "f32" or len(shape) == 1 else dtype


def _tensor_info(gguf: Any, shape: tuple[int, ...], dtype: str) -> tuple[Sequence[int], np.dtype, int, Any]:
    """What `GGUFWriter.add_tensor_info` takes for a tensor of `shape` written as `_encode` writes it: bf16 (which
    numpy lacks) as raw bytes of a declared type, as llama.cpp's converter writes it."""
    count = math.prod(shape)
    stored = _stored_as(shape, dtype)
    if stored == "f32":
        return shape, np.dtype(np.float32), 4 * count, None
    if stored == "f16":
        return shape, np.dtype(np.float16), 2 * count, None
    bf16 = gguf.GGMLQuantizationType.BF16
    return gguf.quants.quant_shape_to_byte_shape(shape, bf16), np.dtype(np.uint8), 2 * count, bf16


def _encode(gguf: Any, tensor: torch.Tensor, dtype: str) -> np.ndarray:
    data = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
    stored = _stored_as(data.shape, dtype)
    if stored == "f32":
        return data
    if stored == "f16":
        return data.astype(np.float16)
    return gguf.quants.quantize(data, gguf.GGMLQuantizationType.BF16)


def write_gguf(
    gguf: Any,
    model: nn.Module,
    shapes: GgufStructure,
    tokenizer: Any,
    pre: str | None,
    target: Path,
    dtype: str,
    *,
    open_layer: OpenLayer | None = None,
) -> str:
    """Write the GGUF file `target` in `dtype` (f32, f16 or bf16): every tensor of `shapes` declared, the header,
    then each tensor written as `each_tensor` hands it over, layer by layer through `open_layer` (default: the
    model's layers in memory). Returns the tokenizer's pre-tokenizer name."""
    writer = gguf.GGUFWriter(str(target), shapes.architecture)
    try:
        _write_metadata(gguf, writer, model.config, shapes, dtype)
        name = write_tokenizer(gguf, writer, tokenizer, shapes.vocab_size, pre)
        for tensor_name, shape in shapes.tensors.items():
            writer.add_tensor_info(tensor_name, *_tensor_info(gguf, shape, dtype))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        declared = iter(shapes.tensors.items())

        def write(tensor_name: str, tensor: torch.Tensor) -> None:
            expected = next(declared, None)
            if expected != (tensor_name, tuple(tensor.shape)):  # the checkpoint changed between the two walks
                raise PruningError(f"GGUF export: {tensor_name} {tuple(tensor.shape)} was declared as {expected}")
            writer.write_tensor_data(_encode(gguf, tensor, dtype))

        each_tensor(model, shapes.tied, open_layer or in_memory(model), write)
        missing = next(declared, None)
        if missing is not None:
            raise PruningError(f"GGUF export: {missing[0]} was declared but never written")
    finally:
        writer.close()
    return name
