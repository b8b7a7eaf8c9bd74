"""`hfprune bench CKPT --engine llama.cpp`: a pruned decoder and its dense original, both exported to GGUF at the
same type, timed side by side in llama.cpp (prefill and decode tokens/s).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ..engine.record import unpruned_twin
from ..errors import PipelineInputError, PruningError, first_line
from ..export.card import check_card_checkpoint, update_card_gguf, update_card_llama_cpp_speed
from ..export.gguf import GGUF_DTYPES, GgufExport, export_gguf
from ..export.gguf_layout import FAMILIES
from ..io.checkpoint import load_tokenizer, resolve_model
from ..io.loading import from_pretrained
from ..io.output import check_output_file, job_inputs
from ..measure.flops import count_flops
from ..measure.llama_cpp import require_llama_cpp
from ..measure.llama_cpp_speed import LlamaCppSpeedReport, measure_llama_cpp_speed
from .bench import check_dense_base, check_sequence_lengths, load_dense_base
from .report_files import write_json_atomically

__all__ = ["benchmark_llama_cpp", "check_gguf_job", "gguf_file_name", "gguf_into_checkpoint", "prefill_flops", "time_in_llama_cpp"]


def gguf_file_name(dtype: str) -> str:
    """The GGUF file a job writes into its checkpoint: `model-q8_0.gguf`."""
    return f"model-{dtype}.gguf"


def _check_dtype(dtype: str, cli_name: str) -> None:
    if dtype not in GGUF_DTYPES:
        choices = ", ".join(GGUF_DTYPES)
        name = cli_name.lstrip("-").replace("-", "_")
        raise PipelineInputError(f"{name} must be one of {choices}, got {dtype!r}", cli_message=f"{cli_name} must be one of {choices}, got {dtype!r}")


def check_gguf_job(dtype: str, config: Any, is_lm: bool, name: str) -> None:
    """Refuse, in one line and before any weights load, a job's GGUF export that cannot be made: an unknown type, a
    task other than `lm`, a model outside the Llama family, or llama-cpp-python missing (the file is checked in it)."""
    _check_dtype(dtype, "--gguf-dtype")
    if not is_lm:
        raise PipelineInputError("gguf_dtype writes a language model for llama.cpp: it needs task='lm'", cli_message="--gguf-dtype writes a language model for llama.cpp: it needs --task lm")
    if getattr(config, "model_type", None) not in FAMILIES:
        raise PipelineInputError(
            f"GGUF export supports the Llama family ({', '.join(FAMILIES)}), and {name} is a {getattr(config, 'model_type', None)} model"
        )
    try:
        require_llama_cpp(f"a job that writes a {dtype} GGUF (checked in llama.cpp)")
    except PruningError as error:
        raise PipelineInputError(first_line(error)) from None


def gguf_into_checkpoint(export: Callable[[Path], GgufExport], output_dir: Path, dtype: str) -> dict[str, Any]:
    """A job's GGUF file: `export(path)` writes `model-<dtype>.gguf` into the finished checkpoint `output_dir` (checked
    in llama.cpp), and the card is re-rendered with its llama.cpp lines. Returns `GgufExport.to_dict()`. It comes
    after the checkpoint, so a file that fails its check costs only itself; the error says so."""
    try:
        written = export(output_dir / gguf_file_name(dtype))
    except PruningError as error:
        raise type(error)(f"{first_line(error)} (the checkpoint in {output_dir} is complete; only its GGUF file is missing)") from None
    update_card_gguf(output_dir, written.to_dict())
    return written.to_dict()


def prefill_flops(model: nn.Module, prompt_len: int) -> float:
    """The FLOPs of llama.cpp's prefill of a `prompt_len`-token prompt: PyTorch's forward, less the output layer for
    every position but the last (llama.cpp computes the logits of the last prompt token only). Their ratio is the
    prefill's ideal speedup; with SmolLM2's 49,152-token vocabulary the output layer is a fifth of a token's forward."""
    head = model.get_output_embeddings().weight
    return count_flops(model, 1, prompt_len) - 2 * head.numel() * (prompt_len - 1)


def time_in_llama_cpp(
    pruned: nn.Module,
    dense: nn.Module | None,
    tokenizer: Any,
    *,
    dtype: str = "q8_0",
    prompt_len: int = 128,
    new_tokens: int = 32,
    threads: int = 1,
    repeats: int = 5,
    warmup: int = 1,
) -> LlamaCppSpeedReport:
    """Export `dense` and `pruned` (Llama-family causal LMs; `dense` None: a random-weight model with the original
    shapes, as timing does not depend on weight values) to GGUF files of type `dtype` in a temporary folder and
    time them side by side in llama.cpp (`measure_llama_cpp_speed`); the prefill's ideal speedup is the ratio of
    their prefill FLOPs (`prefill_flops`). The files are not checked against PyTorch (timing does not depend
    on weight values; `export_gguf` checks the files it keeps) and are removed afterwards."""
    dense = dense if dense is not None else unpruned_twin(pruned).eval()
    ideal = prefill_flops(dense, prompt_len) / prefill_flops(pruned, prompt_len)
    with tempfile.TemporaryDirectory(prefix="hfprune-gguf-bench-") as folder:
        files = {}
        for name, model in (("dense", dense), ("pruned", pruned)):
            files[name] = Path(folder) / f"{name}.gguf"
            export_gguf(model, files[name], dtype=dtype, tokenizer=tokenizer, tokenizer_pre="default", check=False)
        report = measure_llama_cpp_speed(
            files, prompt_len=prompt_len, new_tokens=new_tokens, warmup=warmup, repeats=repeats, threads=threads,
            ideal_prefill_speedup={"pruned": ideal},
        )  # fmt: skip
    report.settings["dtype"] = dtype
    return report


def benchmark_llama_cpp(
    checkpoint: str | os.PathLike,
    *,
    base_model: str | None = None,
    base_gguf_file: str | None = None,
    dtype: str = "q8_0",
    prompt_len: int = 128,
    new_tokens: int = 32,
    threads: int = 1,
    repeats: int = 5,
    warmup: int = 1,
    json_path: str | os.PathLike | None = None,
    update_card: bool = False,
) -> LlamaCppSpeedReport:
    """Time a pruned Llama-family checkpoint against its dense original in llama.cpp (`time_in_llama_cpp`).

    The dense model is `base_model` when given (`base_gguf_file`: a GGUF checkpoint in that folder), else a
    random-weight model with the original shapes: timing does not depend on weight values. Both are written with
    the checkpoint's tokenizer. `json_path`: also write the report as JSON; `update_card`: store it in the checkpoint
    and re-render its card, which then shows the llama.cpp speed beside PyTorch's.

    Refused in one line (`PipelineInputError`) before any weights load: an unknown `dtype`, a `json_path` that
    cannot be written, a folder that is not a model or has no tokenizer, a prompt longer than the model takes, and a
    `base_model` that is not the dense original of the checkpoint.
    """
    checkpoint = Path(checkpoint)
    _check_dtype(dtype, "--dtype")
    inputs = job_inputs(checkpoint, base_model)
    if json_path is not None:
        check_output_file(json_path, name="json_path", cli_name="--json", inputs=inputs)
    if not (checkpoint / "config.json").is_file():
        raise PipelineInputError(f"{checkpoint} is not a model directory (no config.json)")
    source = resolve_model(checkpoint, need_tokenizer=True, causal_lm=True)
    if source.config.model_type not in FAMILIES:
        raise PipelineInputError(
            f"llama.cpp timing exports GGUF for the Llama family ({', '.join(FAMILIES)}), and {checkpoint} is a "
            f"{source.config.model_type} model"
        )
    if update_card:
        check_card_checkpoint(checkpoint)
    check_sequence_lengths(source.config, [prompt_len + new_tokens], model=f"the checkpoint {checkpoint}")
    base = None
    if base_model is not None:
        base = resolve_model(base_model, gguf_file=base_gguf_file, need_tokenizer=False)
        check_dense_base(source.config, base.config, base_model)
    tokenizer = load_tokenizer(source)
    pruned = from_pretrained(checkpoint).eval()
    dense = load_dense_base(base, pruned)
    try:
        report = time_in_llama_cpp(
            pruned, dense, tokenizer, dtype=dtype, prompt_len=prompt_len, new_tokens=new_tokens, threads=threads,
            repeats=repeats, warmup=warmup,
        )  # fmt: skip
    except PruningError as error:
        if isinstance(error, PipelineInputError):
            raise
        raise PipelineInputError(first_line(error)) from None
    if json_path is not None:
        write_json_atomically(json_path, report.to_dict())
    if update_card:
        update_card_llama_cpp_speed(checkpoint, report)
    return report
