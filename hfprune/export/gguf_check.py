"""Before a GGUF file is kept: llama.cpp's quantizer, and the file's logits in llama.cpp against PyTorch's.

A GGUF export is checked like the ONNX export: the file is written under a temporary name, loaded in llama.cpp
(through llama-cpp-python, with an f32 KV cache), run on a few fixed token sequences, and kept only when its
logits agree with the PyTorch model's (in float32, eval mode): the model's own forward (`pytorch_logits`), or a
checkpoint's run one layer at a time (`hfprune.streaming.gguf`), handed to `write_checked` as a `Reference`.
`llama_cpp` is imported only inside these calls.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import io
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import PipelineInputError, PruningError
from ..measure.llama_cpp import llama_cpp_logits, open_gguf, require_llama_cpp

__all__ = ["GGUF_QUANTIZED", "GGUF_TOLERANCES", "GgufMismatchError"]

# hfprune's name -> llama.cpp's file type: these are made by llama.cpp's own quantizer from an f32 file
GGUF_QUANTIZED = {
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
}

# The largest |llama.cpp - PyTorch| over every position and token of the check's sequences, relative to the largest
# |PyTorch logit|, that a file may have. Measured with an f32 KV cache, worst of the six tiny test models (random
# weights, hidden 64; they amplify rounding) / SmolLM2-135M pruned as in tests/test_gguf.py's slow test / dense:
#   f32     5.8e-6 / 2.9e-6 / 1.0e-5     q8_0    0.19 / 0.13 / 0.11     q4_k_m  0.81 / 0.30 / 0.32
#   f16     9.7e-3 / 5.1e-3 / 6.3e-3     q6_k    0.19 / 0.11 / 0.17     q4_0    0.99 / 0.50 / 0.74
#   bf16    6.2e-2 / 3.7e-2 / 4.2e-2     q5_k_m  0.86 / 0.42 / 0.43
# (other token sequences gave up to 2-3x more: f16 1.8e-2, bf16 8.4e-2, q8_0 0.33 at worst).
# f32 must be exact up to float rounding: that proves the structure (one layer's q/k rows left unpermuted, or its
# MLP left out, gives 0.34-0.62). f16 and bf16 round the weights and the activations llama.cpp multiplies them
# with; their bounds still refuse such a layer. The quantized bounds (2-3x the worst seen) only refuse a broken
# file (NaN, exploding logits): a quantized file is made from an f32 file that passed at 1e-4.
GGUF_TOLERANCES = {
    "f32": 1e-4,
    "f16": 5e-2,
    "bf16": 0.2,
    "q8_0": 1.0,
    "q6_k": 1.0,
    "q5_k_m": 2.0,
    "q4_k_m": 2.0,
    "q4_0": 2.5,
}
SEQUENCE_LENGTH = 32  # tokens per check sequence (fewer where the model's context is shorter)
Reference = Callable[[Sequence[Sequence[int]]], list[np.ndarray]]
"""`reference(sequences)`: the PyTorch logits (float64 arrays, float32 weights) the file must reproduce."""


class GgufMismatchError(PruningError):
    """llama.cpp's logits differ from PyTorch's by more than the dtype's tolerance: the GGUF file is not kept."""


def require_llama_cpp_for(dtype: str, check: bool) -> None:
    """One line saying how to install llama-cpp-python when the export needs it (a check, or a quantized dtype)."""
    if dtype in GGUF_QUANTIZED:
        require_llama_cpp(f"a {dtype} GGUF (quantized by llama.cpp's own quantizer)")
    if not check:
        return
    try:
        require_llama_cpp("checking the GGUF file in llama.cpp")
    except PruningError as error:
        python, cli = (f"{error}; or pass {skip} to write it unchecked" for skip in ("check=False", "--no-check"))
        raise PipelineInputError(python, cli_message=cli) from None


def check_sequences(vocab_size: int, length: int) -> list[list[int]]:
    """Three fixed sequences of valid token ids, the same for every run: `length` tokens from id 0, `length` from
    the last id, and half as many; spread over the whole vocabulary by multiplying with large primes."""
    return [
        [(2654435761 * index) % vocab_size for index in range(length)],
        [(vocab_size - 1 - 2246822519 * index) % vocab_size for index in range(length)],
        [(3266489917 * index + 7) % vocab_size for index in range(max(1, length // 2))],
    ]


def check_length(config: Any, context_length: int) -> int:
    """Tokens per sequence: within the context, and within a sliding window that llama.cpp's llama/deci lack."""
    window = getattr(config, "sliding_window", None)
    window = window if getattr(config, "use_sliding_window", window is not None) and window else context_length
    return max(1, min(SEQUENCE_LENGTH, context_length, int(window)))


def pytorch_logits(model: nn.Module, sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """The model's logits (float64 arrays) for each sequence, in float32 and eval mode; the model is left as it was
    (a copy is cast when its weights are not float32)."""
    reference = model
    if any(parameter.dtype != torch.float32 for parameter in model.parameters()):
        reference = copy.deepcopy(model).to(torch.float32)
    training = reference.training
    reference.eval()
    device = next(reference.parameters()).device
    try:
        with torch.no_grad():
            outputs = [reference(torch.tensor([list(sequence)], device=device), use_cache=False) for sequence in sequences]
        return [output.logits[0].double().cpu().numpy() for output in outputs]
    finally:
        reference.train(training)


def max_relative_difference(path: Path, sequences: Sequence[Sequence[int]], want: Sequence[np.ndarray]) -> float:
    """The largest |llama.cpp - PyTorch| logit difference, relative to the largest |PyTorch logit|."""
    with contextlib.redirect_stderr(io.StringIO()):  # llama-cpp-python prints llama.cpp's warnings to sys.stderr
        llm = open_gguf(path, n_ctx=max(len(sequence) for sequence in sequences), threads=_threads(), logits_all=True)
        try:
            got = llama_cpp_logits(llm, sequences)
        finally:
            llm.close()
    scale = max(float(np.abs(logits).max()) for logits in want) or 1.0
    return max(float(np.abs(mine - theirs).max()) for mine, theirs in zip(got, want)) / scale


def verify(path: Path, sequences: Sequence[Sequence[int]], want: Sequence[np.ndarray], dtype: str, what: str) -> float:
    """The file's max relative difference, or `GgufMismatchError` (one line) when it exceeds `dtype`'s tolerance."""
    difference = max_relative_difference(path, sequences, want)
    tolerance = GGUF_TOLERANCES[dtype]
    if not difference <= tolerance:  # a NaN fails too
        raise GgufMismatchError(
            f"llama.cpp's logits for the {what} differ from PyTorch's by {difference:.2e} of their scale (max relative "
            f"difference), more than the {tolerance:g} tolerance for {dtype}; no GGUF was written"
        )
    return difference


def quantize(source: Path, target: Path, dtype: str) -> None:
    """llama.cpp's quantizer, from the f32 file `source` to `target`; its log (a line per tensor, and one per
    fallback type) is kept back, and its last line is the error when it fails."""
    llama_cpp = require_llama_cpp(f"a {dtype} GGUF")
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = _threads()
    params.ftype = getattr(llama_cpp, GGUF_QUANTIZED[dtype])
    logger = logging.getLogger("llama-cpp-python")  # prints llama.cpp's log to sys.stderr, above its level
    level = logger.level
    logger.setLevel(logging.DEBUG)  # all of it, here into `log`: the error may come at any level
    try:
        with contextlib.redirect_stderr(io.StringIO()) as log:
            failed = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    finally:
        logger.setLevel(level)
    if failed:
        last = ([line.strip() for line in log.getvalue().splitlines() if line.strip()] or ["no message"])[-1]
        raise PruningError(f"llama.cpp's quantizer could not make a {dtype} file: {last}")


def write_checked(
    write: Callable[[Path, str], str], path: Path, dtype: str, sequences: Sequence[Sequence[int]], reference: Reference, *, check: bool
) -> tuple[str, dict[str, Any]]:
    """`write(target, file_dtype)` the file (f32 for a quantized dtype, quantized here) under temporary names next
    to `path`, check it in llama.cpp against `reference(sequences)` (computed first, once), and only then rename it
    into `path`; nothing is left on failure. Returns what `write` returned and the check's fields of `GgufExport`."""
    quantized = dtype in GGUF_QUANTIZED
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    source = path.with_name(f".{path.name}.f32-tmp-{os.getpid()}") if quantized else tmp
    result: dict[str, Any] = {}
    if check:
        want = reference(sequences)
        result = {"sequences": len(sequences), "tolerance": GGUF_TOLERANCES[dtype]}
    try:
        written = write(source, "f32" if quantized else dtype)
        if quantized:
            if check:  # the f32 file proves the structure; its quantization is llama.cpp's own
                result["f32_max_relative_difference"] = verify(source, sequences, want, "f32", "f32 file to quantize")
            quantize(source, tmp, dtype)
            source.unlink()
        if check:
            result["max_relative_difference"] = verify(tmp, sequences, want, dtype, f"{dtype} file")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        source.unlink(missing_ok=True)
    return written, result


def _threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))
