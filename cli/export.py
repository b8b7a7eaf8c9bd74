"""`hfprune export`: a (pruned) checkpoint for ONNX Runtime, checked against PyTorch."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import EXIT_FAILED, fail, handle_errors, quiet_libraries

FORMATS = ("onnx",)


def export(
    checkpoint: str = typer.Argument(..., help="A checkpoint directory (pruned or not, transformers 4 pruned_heads included) or Hub id."),
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help="Where to write model.onnx, config.json, the tokenizer and onnx_export.json."),
    format: str = typer.Option("onnx", "--format", "-f", help="Export format (onnx)."),
    opset: int = typer.Option(17, "--opset", min=14, help="ONNX opset."),
    atol: float = typer.Option(1e-4, "--atol", help="Absolute part of the largest max-abs difference onnxruntime may have from PyTorch (fp32)."),
    rtol: float = typer.Option(1e-5, "--rtol", help="Relative part, times the largest PyTorch output (0: absolute only)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty output directory (only once the new export is complete)."),
) -> None:
    """Export CHECKPOINT to ONNX (dynamic batch and sequence axes) and check it in onnxruntime at two input shapes.

    Decoders export the forward without a KV cache (logits). Needs onnx and onnxruntime (the onnx extra of hfprune).

    Example: hfprune export ./bert-mnli-pruned --format onnx -o ./bert-mnli-pruned/onnx
    """
    if format not in FORMATS:
        fail(f"unknown --format {format!r}; choose {', '.join(FORMATS)}")
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
