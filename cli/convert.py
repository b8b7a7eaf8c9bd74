"""`hfprune convert`: a checkpoint pruned under transformers 4 (`config.pruned_heads`), rewritten for transformers 5."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import handle_errors, quiet_libraries


def convert(
    checkpoint: Path = typer.Argument(..., help="A local checkpoint directory saved by transformers 4 after model.prune_heads."),
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help="Where to write the converted checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty output directory (only once the new one is complete)."),
) -> None:
    """Convert CHECKPOINT's transformers-4 pruned_heads into config.hfprune, so transformers 5 and hfprune load it.

    The weights load with the logits transformers 4 gave; tokenizer and other files are copied.

    Example: hfprune convert ./bert-pruned-v4 -o ./bert-pruned
    """
    with handle_errors():
        quiet_libraries()
        from hfprune.export.convert import convert_checkpoint

        result = convert_checkpoint(checkpoint, output_dir, overwrite=overwrite)
    heads = sum(len(heads) for heads in result.pruned_heads.values())
    typer.echo(f"wrote {result.output_dir}: {heads} pruned heads in {len(result.pruned_heads)} layer(s) now in config.hfprune")
    typer.echo("load it with hfprune.from_pretrained (or hfprune export it for ONNX Runtime)")
