"""`stream_export_gguf`: a checkpoint larger than memory written to GGUF for llama.cpp, one layer at a time.

The file is `export_gguf`'s, byte for byte: the same layout (`export.gguf_layout`) and writer (`export.gguf_file`)
walk the layers of a `StreamedCheckpoint` instead of a model in memory. The shapes come from the checkpoint's
meta-device skeleton (no weight is read for them but the bias of a removed block, one vector), so every tensor is
declared before the header is written; then each layer is read, its tensors written, and it is dropped again.

The check is `export_gguf`'s too: the three token sequences run through the checkpoint one layer at a time in
float32 (the model's own modules, then its final norm and head) for PyTorch's logits, and llama.cpp's logits of
the written file must match them within the dtype's tolerance (a quantized file's f32 source first).

Memory: the embeddings, final norm and head (read once, in float32, as `export_gguf` loads them), one layer's
weights in float32 with its permuted q/k copies, and one encoded tensor. Reading: the check reads every layer once,
the file once more. The check's llama.cpp maps the whole written file to run it (file pages the kernel can drop;
a file far larger than memory is paged from disk, slowly: `check=False` skips it).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import PipelineInputError
from ..export.gguf import (
    GgufExport,
    check_gguf_output,
    gguf_tokenizer,
    require_gguf,
    write_gguf_export,
)
from ..export.gguf_check import require_llama_cpp_for
from ..export.gguf_file import write_gguf
from ..export.gguf_layout import KeptBias, bias_of, check_config, gguf_structure, nonzero
from ..io.checkpoint import resolve_model
from .layers import DEFAULT_MAX_MEMORY, StreamedCheckpoint

__all__ = ["reference_logits", "stream_export_gguf"]


def stream_export_gguf(
    checkpoint_dir: str | os.PathLike,
    path: str | os.PathLike,
    dtype: str = "f32",
    *,
    tokenizer: Any = None,
    tokenizer_pre: str | None = None,
    overwrite: bool = False,
    check: bool = True,
    device: str | torch.device = "cpu",
    max_memory: int = DEFAULT_MAX_MEMORY,
) -> GgufExport:
    """Write the Llama-family checkpoint folder `checkpoint_dir` (safetensors, pruned or not) to the GGUF file
    `path` with one layer in memory at a time: the file `export_gguf` writes from the loaded model, byte for byte.

    `dtype`, `tokenizer`, `tokenizer_pre`, `overwrite` and `check` as `export_gguf`'s: the check (default) compares
    llama.cpp's logits with PyTorch's, computed here one layer at a time on `device`. `max_memory`: bytes of the
    check's hidden states kept in memory (three short sequences; beyond it, they go to disk). Bad input is refused
    in one line before any weight is read; on any failure nothing is left at `path` or beside it.
    """
    gguf = require_gguf()
    checkpoint_dir = Path(checkpoint_dir).expanduser()
    if not checkpoint_dir.is_dir():
        raise PipelineInputError(f"{checkpoint_dir} is not a checkpoint folder; stream_export_gguf reads a local safetensors checkpoint")
    path = check_gguf_output(path, dtype, overwrite, inputs=[checkpoint_dir])
    source = resolve_model(checkpoint_dir, need_tokenizer=False)
    check_config(source.config)
    tokenizer = gguf_tokenizer(tokenizer, source)
    require_llama_cpp_for(dtype, check)
    with StreamedCheckpoint(checkpoint_dir, device=device, max_memory=max_memory, dtype=torch.float32) as checkpoint:
        model = checkpoint.model
        shapes = gguf_structure(model, kept_bias=_stored_bias(checkpoint))
        write = functools.partial(write_gguf, gguf, model, shapes, tokenizer, tokenizer_pre, open_layer=checkpoint.layer)
        reference = functools.partial(reference_logits, checkpoint)
        return write_gguf_export(write, path, dtype, shapes, model.config, reference, check=check)


def reference_logits(checkpoint: StreamedCheckpoint, sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """The checkpoint's logits (float64 arrays) for each token sequence, its layers run one at a time: what
    `pytorch_logits` gives for the model in memory (eval mode, no KV cache; in float32 when the checkpoint is
    opened so)."""
    batches = [{"input_ids": torch.tensor([list(sequence)])} for sequence in sequences]
    inputs, hidden = checkpoint.first_inputs(batches)
    hidden = checkpoint.run_layers(inputs, hidden)
    try:
        return [outputs.logits[0].double().cpu().numpy() for outputs in checkpoint.finish(hidden, batches)]
    finally:
        hidden.clear()


def _stored_bias(checkpoint: StreamedCheckpoint) -> KeptBias:
    """`kept_bias` for the skeleton's meta layers: a removed block's bias read from the checkpoint, when it has one."""
    names = {module: name for name, module in checkpoint.model.named_modules()}

    def kept_bias(module: nn.Module) -> torch.Tensor | None:
        return nonzero(checkpoint.read(f"{names[module]}.bias")) if bias_of(module) is not None else None

    return kept_bias
