"""What every command shares: one-line errors with meaningful exit codes, rich progress bars, the command line.

Exit codes: 0 ok, 1 the run failed (or a check failed), 2 bad input (nothing was written), 130 interrupted.
Set HFPRUNE_DEBUG=1 to get the full traceback instead of the one-line message.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    """Print a one-line error and exit non-zero."""
    typer.secho(f"Error: {' '.join(str(message).split())}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    typer.secho(f"Warning: {message}", fg=typer.colors.YELLOW, err=True)


def fraction(value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise typer.BadParameter(f"must be in [0, 1), got {value}")
    return value


def check_fraction(option: str, value: float) -> float:
    """Like `fraction`, but a one-line "Error: ..." instead of a usage box."""
    if not 0.0 <= value < 1.0:
        fail(f"{option} must be a fraction in [0, 1), got {value}")
    return value


def parse_ints(option: str, value: str) -> tuple[int, ...]:
    """"1,8,32" -> (1, 8, 32)."""
    try:
        numbers = tuple(int(part) for part in value.replace(" ", "").split(",") if part)
    except ValueError:
        numbers = ()
    if not numbers or any(number < 1 for number in numbers):
        fail(f"{option} must be a comma-separated list of positive integers, got {value!r}")
    return numbers


def command_line(ctx: typer.Context) -> str:
    """The running command, for the model card: `hfprune SUBCOMMAND ARGS` with every option that differs
    from its default, under its long name (rebuilt from the parsed values, so it does not depend on how
    the command was launched: console script, `python -m hfprune.cli`, or a test runner)."""
    parts = ["hfprune", ctx.info_name]
    options: list[str] = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.param_type_name == "argument":
            parts += [str(item) for item in (value if param.multiple else [value]) if item is not None]
            continue
        if param.name == "help" or value is None or value == param.default or (param.multiple and not value):
            continue
        name = next((opt for opt in param.opts if opt.startswith("--")), param.opts[0])
        if getattr(param, "is_flag", False):
            if value:
                options.append(name)
            elif param.secondary_opts:
                options.append(param.secondary_opts[0])
        elif param.multiple:
            for item in value:
                options += [name, str(item)]
        else:
            options += [name, str(value)]
    return shlex.join(parts + options)


def quiet_libraries() -> None:
    """transformers/datasets chatter (new-weight warnings, map progress) would bury the one-line messages."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # loading/saving bars; the CLI draws its own
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


@contextmanager
def handle_errors() -> Iterator[None]:
    """Turn exceptions into one line and an exit code: bad input 2, anything else 1."""
    from hfprune.errors import PruningError
    from hfprune.hub import HubPushError
    from hfprune.pipeline import PipelineInputError
    from hfprune.tasks import TaskDataError

    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:
        fail("interrupted; nothing was written", EXIT_INTERRUPTED)
    except Exception as error:
        if os.environ.get("HFPRUNE_DEBUG"):
            raise
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if isinstance(error, (PipelineInputError, TaskDataError, PruningError)):
            fail(text, EXIT_BAD_INPUT)
        if isinstance(error, HubPushError):
            fail(text, EXIT_FAILED)
        fail(f"{type(error).__name__}: {text}", EXIT_FAILED)


class Bars:
    """Rich progress bars on stderr, one per stage, fed by `hfprune.pipeline`'s `progress(stage, done, total)`."""

    def __init__(self, enabled: bool = True):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.console = Console(stderr=True)
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("{task.description:<24}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=not enabled,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> Bars:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total)
        self.progress.update(self.tasks[stage], completed=done, total=total)

    def log(self, message: str) -> None:
        if self.enabled:
            self.progress.console.print(f"[bold cyan]>[/] {message}")


# ---- options shared by the commands that read a task -----------------------------------------------------
DATA_PANEL = "Task data"
TaskOption = typer.Option(
    ..., "--task", "-t", help="A GLUE task (sst2, mnli, cola, mrpc, qqp, stsb, qnli, rte, wnli), 'custom' (CSV/JSON files) or 'lm' (text files).",
    rich_help_panel=DATA_PANEL,
)  # fmt: skip
DataDirOption = typer.Option(
    None, "--data-dir", help="GLUE: the original GLUE download (DATA_DIR/SST-2/train.tsv, ...); default: the Hub (nyu-mll/glue). "
    "custom/lm: a folder with train.* and validation.*/dev.* files.", rich_help_panel=DATA_PANEL,
)  # fmt: skip
TrainFileOption = typer.Option(None, "--train-file", help="custom/lm: training file (.csv, .tsv, .json, .jsonl; .txt for lm).", rich_help_panel=DATA_PANEL)
ValidationFileOption = typer.Option(None, "--validation-file", help="custom/lm: evaluation file.", rich_help_panel=DATA_PANEL)
TextColumnOption = typer.Option(None, "--text-column", help="custom: text column (repeat for sentence pairs); default 'text'.", rich_help_panel=DATA_PANEL)
LabelColumnOption = typer.Option("label", "--label-column", help="custom: label column.", rich_help_panel=DATA_PANEL)
LabelNameOption = typer.Option(None, "--label-name", help="custom: label names in id order (repeat); default: order of first appearance.", rich_help_panel=DATA_PANEL)
MaxEvalOption = typer.Option(None, "--max-eval-samples", min=1, help="Evaluate on the first N examples of each eval split.", rich_help_panel=DATA_PANEL)
MaxLengthOption = typer.Option(128, "--max-length", min=8, help="Truncate inputs to this many tokens (also the benchmark sequence length).", rich_help_panel=DATA_PANEL)


def data_kwargs(
    data_dir: Any, train_file: Any, validation_file: Any, text_column: list[str] | None, label_column: str, label_name: list[str] | None
) -> dict[str, Any]:
    """Keyword arguments of `hfprune.pipeline.load_task_data` from the shared options."""
    return dict(
        data_dir=data_dir,
        train_file=train_file,
        validation_file=validation_file,
        text_columns=tuple(text_column) if text_column else None,
        label_column=label_column,
        label_names=tuple(label_name) if label_name else None,
    )


def metrics_table(title: str, columns: dict[str, dict[str, dict[str, float]]]) -> Any:
    """A rich table: one row per (split, metric), one column per model ("dense", "pruned", ...)."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("split")
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    first = next(iter(columns.values()), {})
    for split, values in first.items():
        for metric in values:
            cells = [f"{columns[name].get(split, {}).get(metric, float('nan')):.4f}" for name in columns]
            table.add_row(split, metric, *cells)
    return table
