"""`hfprune export`: a (pruned) checkpoint for ONNX Runtime (checked against PyTorch) or llama.cpp (GGUF)."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import EXIT_FAILED, fail, handle_errors, quiet_libraries

FORMATS = ("onnx", "gguf")


def export(
    checkpoint: str = typer.Argument(..., help="A checkpoint directory (pruned or not, transformers 4 pruned_heads included) or Hub id."),
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help="onnx: where to write model.onnx, config.json, the tokenizer and onnx_export.json; gguf: the .gguf file to write."),
    format: str = typer.Option("onnx", "--format", "-f", help="Export format (onnx, gguf)."),
    dtype: str = typer.Option("f32", "--dtype", help="gguf: f32 or f16."),
    tokenizer_pre: str = typer.Option(None, "--tokenizer-pre", help="gguf: llama.cpp's pre-tokenizer name (llama-bpe, smollm, qwen2...) when it is not recognised."),
    opset: int = typer.Option(17, "--opset", min=14, help="ONNX opset."),
    atol: float = typer.Option(1e-4, "--atol", help="Absolute part of the largest max-abs difference onnxruntime may have from PyTorch (fp32)."),
    rtol: float = typer.Option(1e-5, "--rtol", help="Relative part, times the largest PyTorch output (0: absolute only)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output (only once the new export is complete)."),
) -> None:
    """Export CHECKPOINT to ONNX (dynamic batch and sequence axes) and check it in onnxruntime at two input shapes,
    or to one GGUF file for llama.cpp (Llama family; architecture llama for stock shapes, deci for per-layer ones).

    Decoders export the forward without a KV cache (logits). Needs onnx and onnxruntime (the onnx extra of hfprune),
    or gguf (the gguf extra).

    Examples: hfprune export ./bert-mnli-pruned --format onnx -o ./bert-mnli-pruned/onnx
              hfprune export ./smollm-pruned --format gguf -o ./smollm-pruned.gguf
    """
    if format not in FORMATS:
        fail(f"unknown --format {format!r}; choose {', '.join(FORMATS)}")
    if format == "gguf":
        with handle_errors():
            quiet_libraries()
            from hfprune.export.gguf import export_gguf

            written = export_gguf(checkpoint, output_dir, dtype=dtype, tokenizer_pre=tokenizer_pre, overwrite=overwrite)
        shapes = "stock shapes" if written.architecture == "llama" else "per-layer shapes"
        typer.echo(f"wrote {written.path} (architecture {written.architecture}, {shapes}, {written.dtype}, {len(written.head_count)} layers)")
        for note in written.stand_ins:
            typer.echo(f"  {note}")
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
