"""`hfprune export`: a (pruned) checkpoint for ONNX Runtime (checked against PyTorch) or llama.cpp (GGUF)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from .common import EXIT_FAILED, fail, handle_errors, quiet_libraries

if TYPE_CHECKING:
    from hfprune.export.gguf import GgufExport

FORMATS = ("onnx", "gguf")


def export(
    checkpoint: str = typer.Argument(..., help="A checkpoint directory (pruned or not, transformers 4 pruned_heads included) or Hub id."),
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help="onnx: where to write model.onnx, config.json, the tokenizer and onnx_export.json; gguf: the .gguf file to write."),
    format: str = typer.Option("onnx", "--format", "-f", help="Export format (onnx, gguf)."),
    dtype: str = typer.Option("f32", "--dtype", help="gguf: f32, f16, bf16, or llama.cpp's quantized q8_0, q6_k, q5_k_m, q4_k_m, q4_0 (K-quants fall back per tensor where rows are no multiple of 256)."),
    tokenizer_pre: str = typer.Option(None, "--tokenizer-pre", help="gguf: llama.cpp's pre-tokenizer name (llama-bpe, smollm, qwen2...) when it is not recognised."),
    opset: int = typer.Option(17, "--opset", min=14, help="ONNX opset."),
    atol: float = typer.Option(1e-4, "--atol", help="Absolute part of the largest max-abs difference onnxruntime may have from PyTorch (fp32)."),
    rtol: float = typer.Option(1e-5, "--rtol", help="Relative part, times the largest PyTorch output (0: absolute only)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output (only once the new export is complete)."),
    no_check: bool = typer.Option(False, "--no-check", help="gguf: keep the file without comparing its logits in llama.cpp with PyTorch's (the check needs llama-cpp-python)."),
    stream: bool = typer.Option(False, "--stream", help="gguf: for checkpoints larger than memory, read the local safetensors checkpoint one layer at a time (the same file, byte for byte)."),
) -> None:
    """Export CHECKPOINT to ONNX (dynamic batch and sequence axes) and check it in onnxruntime at two input shapes,
    or to one GGUF file for llama.cpp (Llama family; architecture llama for stock shapes, deci for per-layer ones).

    Decoders export the forward without a KV cache (logits). Needs onnx and onnxruntime (the onnx extra of hfprune),
    or gguf and llama-cpp-python (the gguf extra): the GGUF file is kept only once llama.cpp's logits match
    PyTorch's within the --dtype's tolerance (exit 1 otherwise), unless --no-check.

    With --stream (gguf only), a local safetensors checkpoint is written with one layer in memory at a time, and the
    check's PyTorch logits are computed one layer at a time too.

    Examples: hfprune export ./bert-mnli-pruned --format onnx -o ./bert-mnli-pruned/onnx
              hfprune export ./smollm-pruned --format gguf -o ./smollm-pruned.gguf
              hfprune export ./big-llama-pruned --format gguf --stream -o ./big-llama-pruned.gguf
    """
    if format not in FORMATS:
        fail(f"unknown --format {format!r}; choose {', '.join(FORMATS)}")
    if stream and format != "gguf":
        fail("--stream writes GGUF files (--format gguf); ONNX export loads the model whole")
    if format == "gguf":
        with handle_errors():
            quiet_libraries()
            from hfprune.export.gguf import export_gguf
            from hfprune.export.gguf_check import GgufMismatchError
            from hfprune.streaming.gguf import stream_export_gguf

            try:
                written = (stream_export_gguf if stream else export_gguf)(
                    checkpoint, output_dir, dtype=dtype, tokenizer_pre=tokenizer_pre, overwrite=overwrite, check=not no_check
                )
            except GgufMismatchError as error:  # the export ran, its check failed: not bad input
                fail(str(error), EXIT_FAILED)
        _report_gguf(written)
        return
    with handle_errors():
        quiet_libraries()
        from hfprune.export.onnx import OnnxMismatchError, export_onnx

        try:
            result = export_onnx(checkpoint, output_dir, opset=opset, atol=atol, rtol=rtol, overwrite=overwrite)
        except OnnxMismatchError as error:  # the export ran, its check failed: not bad input
            fail(str(error), EXIT_FAILED)
    checks = ", ".join(
        f"{check['batch_size']}x{check['seq_len']}: {check['max_abs_diff']:.1e} (tolerance {check['tolerance']:.1e})" for check in result.checks
    )
    typer.echo(f"wrote {result.path} (opset {result.opset}; inputs {', '.join(result.inputs)}; outputs {', '.join(result.outputs)})")
    typer.echo(f"onnxruntime vs PyTorch, max abs difference: {checks}")


def _report_gguf(written: GgufExport) -> None:
    shapes = "stock shapes" if written.architecture == "llama" else "per-layer shapes"
    typer.echo(f"wrote {written.path} (architecture {written.architecture}, {shapes}, {written.dtype}, {len(written.head_count)} layers)")
    for note in written.stand_ins:
        typer.echo(f"  {note}")
    if written.max_relative_difference is None:
        typer.echo("not checked in llama.cpp (--no-check)")
        return
    source = ""
    if written.f32_max_relative_difference is not None:  # a quantized file: its f32 source was checked first
        source = f"; the f32 file it was quantized from: {written.f32_max_relative_difference:.1e}"
    typer.echo(
        f"llama.cpp vs PyTorch on {written.sequences} token sequences, max relative logit difference: "
        f"{written.max_relative_difference:.1e} (tolerance {written.tolerance:g}){source}"
    )
