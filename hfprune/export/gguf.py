"""Export a pruned Llama-family decoder to GGUF, the file llama.cpp (Ollama, LM Studio) runs.

llama.cpp's own converter cannot express hfprune's shapes (its `deci` path writes the full query-head count and
rounds FFN widths up to multiples of 256), so the file is written directly with the `gguf` package:
`gguf_layout` says what the file holds (architecture `llama` for stock shapes, `deci` with per-layer arrays
otherwise; llama.cpp's tensor names and q/k permutation; the zero stand-ins where `deci` cannot run a pruned layer
as transformers does), `gguf_file` writes it (metadata, tokenizer, tensors one at a time) and `gguf_check` checks
it in llama.cpp against PyTorch's logits before it is kept.

`export_gguf` writes a model in memory (or a checkpoint it loads whole); `hfprune.stream_export_gguf` writes the
same bytes from a checkpoint read one layer at a time, through `check_gguf_output` and `write_gguf_export` here.
A stand-in costs one neuron (or one head of KV cache) per layer that has one; `GgufExport.stand_ins` lists them.
`gguf` and `llama_cpp` are dependencies of the `gguf` extra; they are imported only inside these calls.
"""

from __future__ import annotations

import copy
import functools
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import PipelineInputError, PruningError
from ..io.checkpoint import TOKENIZER_FILES, ModelSource, load_tokenizer, resolve_model
from ..io.loading import from_pretrained
from ..io.output import check_output_file
from .gguf_check import (
    GGUF_QUANTIZED,
    Reference,
    check_length,
    check_sequences,
    pytorch_logits,
    require_llama_cpp_for,
    write_checked,
)
from .gguf_file import write_gguf
from .gguf_layout import GgufStructure, check_config, context_length, gguf_structure

__all__ = [
    "GGUF_DTYPES", "GgufExport", "check_gguf_output", "export_gguf", "gguf_tokenizer", "require_gguf", "write_gguf_export",
]  # fmt: skip

GGUF_DTYPES = ("f32", "f16", "bf16", *GGUF_QUANTIZED)


@dataclass
class GgufExport:
    """What `export_gguf` (or `stream_export_gguf`) wrote."""

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


def require_gguf() -> Any:
    """The `gguf` package (the `gguf` extra), or a one-line error saying how to install it."""
    try:
        return importlib.import_module("gguf")
    except ImportError:
        raise PruningError("GGUF export needs the gguf package (not installed): pip install 'hfprune[gguf]'") from None


def check_gguf_output(path: str | os.PathLike, dtype: str, overwrite: bool, inputs: list[Any]) -> Path:
    """Refuse, in one line before any weight is read, an unknown `dtype` and an output `path` that is one of the
    `inputs` or exists (unless `overwrite`). Returns the path."""
    if dtype not in GGUF_DTYPES:
        raise PruningError(f"dtype must be one of {', '.join(GGUF_DTYPES)}, got {dtype!r}")
    path = check_output_file(path, name="path", cli_name="--output-dir", inputs=inputs)
    if path.exists() and not overwrite:
        raise PipelineInputError(
            f"{path} exists; pass overwrite=True to replace it", cli_message=f"{path} exists; pass --overwrite to replace it"
        )
    return path


def gguf_tokenizer(tokenizer: Any, source: ModelSource | None) -> Any:
    """`tokenizer`, else the checkpoint's (a local folder's when it has tokenizer files): llama.cpp reads it from the
    file, so there must be one."""
    has_files = source is not None and (
        not source.is_local or source.load_kwargs or any((Path(source.name_or_path) / name).is_file() for name in TOKENIZER_FILES)
    )
    if tokenizer is None and has_files:
        tokenizer = load_tokenizer(source)
    if tokenizer is None:
        raise PruningError("GGUF export needs the model's tokenizer (llama.cpp reads it from the file): pass tokenizer=")
    return tokenizer


def write_gguf_export(
    write: Callable[[Path, str], str], path: Path, dtype: str, shapes: GgufStructure, config: Any, reference: Reference, *, check: bool
) -> GgufExport:
    """`write(target, file_dtype)` the file, checked in llama.cpp against `reference`'s logits (`write_checked`), and
    what was written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sequences = check_sequences(shapes.vocab_size, check_length(config, context_length(config)))
    pre, checked = write_checked(write, path, dtype, sequences, reference, check=check)
    return GgufExport(
        path, shapes.architecture, dtype, shapes.heads, shapes.kv_heads, shapes.ffn, pre, shapes.tied, shapes.stand_ins, **checked
    )


# ---- the model in memory --------------------------------------------------------------------------------
def _load(model_or_dir: Any) -> tuple[nn.Module, ModelSource | None]:
    if isinstance(model_or_dir, nn.Module):
        if not hasattr(model_or_dir, "config"):
            raise PruningError(f"expected a transformers PreTrainedModel or a checkpoint folder, got {type(model_or_dir).__name__}")
        return model_or_dir, None
    source = resolve_model(model_or_dir, need_tokenizer=False)
    from transformers import AutoModelForCausalLM  # a GGUF source's config names no architecture: ask for the LM

    kwargs = {**source.model_kwargs, "dtype": torch.float32}
    model = from_pretrained(source.name_or_path, config=copy.deepcopy(source.config), model_class=AutoModelForCausalLM, **kwargs)
    return model, source


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

    A checkpoint larger than memory: `hfprune.stream_export_gguf` writes the same file with one layer in memory.
    """
    gguf = require_gguf()
    path = check_gguf_output(path, dtype, overwrite, inputs=[] if isinstance(model_or_dir, nn.Module) else [model_or_dir])
    model, source = _load(model_or_dir)
    check_config(model.config)
    tokenizer = gguf_tokenizer(tokenizer, source)
    shapes = gguf_structure(model)
    require_llama_cpp_for(dtype, check)
    write = functools.partial(write_gguf, gguf, model, shapes, tokenizer, tokenizer_pre)  # (target, dtype) -> pre
    return write_gguf_export(write, path, dtype, shapes, model.config, functools.partial(pytorch_logits, model), check=check)
