"""Running a GGUF file in llama.cpp (through `llama-cpp-python`, the `gguf` extra): opening it and reading its logits.

The GGUF export checks its file here before keeping it, and `hfprune bench --engine llama.cpp` times files here.
`llama_cpp` is imported only inside these calls: `import hfprune` never builds or loads llama.cpp.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..errors import PruningError

__all__ = ["llama_cpp_logits", "open_gguf", "require_llama_cpp"]


def require_llama_cpp(why: str = "running a GGUF file") -> Any:
    """The `llama_cpp` module, or one line saying how to install it."""
    try:
        return importlib.import_module("llama_cpp")
    except ImportError:
        raise PruningError(
            f"{why} needs llama-cpp-python (not installed): pip install 'hfprune[gguf]' (it builds llama.cpp from source)"
        ) from None


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """llama.cpp prints its loader log to the C-level stderr even with verbose=False on some builds."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def open_gguf(
    path: str | os.PathLike,
    *,
    n_ctx: int = 512,
    threads: int = 1,
    logits_all: bool = False,
    f32_cache: bool = True,
) -> Any:
    """A `llama_cpp.Llama` for the GGUF at `path`, on the CPU with `threads` threads.

    `f32_cache` keeps the KV cache in f32: llama.cpp's default f16 cache alone moves logits by about 1e-3 of their
    scale, more than the exactness a pruned model's check asks for. `logits_all` keeps every position's logits.
    Close it (`llm.close()`) when done: its destructor may run after llama.cpp was unloaded at interpreter exit.
    """
    llama_cpp = require_llama_cpp()
    cache = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if f32_cache else {}
    try:
        with _quiet_stderr():
            return llama_cpp.Llama(
                model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=threads,
                n_threads_batch=threads, logits_all=logits_all, n_gpu_layers=0, flash_attn=False, verbose=False, **cache,
            )  # fmt: skip
    except (ValueError, RuntimeError) as error:
        raise PruningError(f"llama.cpp could not load {path}: {error}".splitlines()[0]) from None


def llama_cpp_logits(llm: Any, sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """The logits (`[len(sequence), vocab]`, float64) llama.cpp gives every position of every token sequence, each
    sequence from an empty cache. `llm` must have been opened with `logits_all=True` and a context that fits."""
    rows = []
    for sequence in sequences:
        llm.reset()
        llm.eval(list(sequence))
        rows.append(np.array(llm.scores[: len(sequence)], dtype=np.float64))
    return rows
