"""What every command shares: one-line errors with meaningful exit codes, rich progress bars, the command line.

Exit codes: 0 ok, 1 the run failed (or a check failed), 2 bad input (nothing was written), 130 interrupted.
Set HFPRUNE_DEBUG=1 to get the full traceback instead of the one-line message.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

try:  # typer >= 0.22 vendors click as typer._click
    from typer._click import exceptions as click_exceptions
except ImportError:  # older typer runs on click itself
    from click import exceptions as click_exceptions

from hfprune._validation import SETTING_BOUNDS, check_finite, check_setting
from hfprune.constants import PRUNE_DEFAULTS
from hfprune.errors import PruningError

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def is_main_process() -> bool:
    """Rank 0 of a `torchrun` / `accelerate launch` run (their `RANK`), or the only process; read without torch."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    """Print a one-line error and exit non-zero. Under torchrun every rank exits with the code, and rank 0 alone
    prints the line (the ranks agree on their errors), so a user reads it once."""
    if is_main_process():
        typer.secho(f"Error: {' '.join(str(message).split())}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _tidy_help(command: Any) -> None:
    """Flags show no `<bool>` type and arguments read `MODEL`, as in a man page."""
    for param in command.params:
        if isinstance(param, TyperArgument) and param.metavar is None:
            param.metavar = param.name.upper()
        elif isinstance(param, TyperOption) and param.is_flag:
            param.metavar = ""


def _hide_flag_type(option: Any) -> Any:
    if option is not None:
        option.metavar = ""
    return option


class Command(TyperCommand):
    """A subcommand whose help and usage line read `hfprune prune [OPTIONS] MODEL`, and whose option values are
    checked before it runs (`check_values`): one `Error: ...` line and exit 2, before any import of torch."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        _tidy_help(self)

    def invoke(self, ctx: Any) -> Any:
        check_values(self.params, ctx.params)
        return super().invoke(ctx)

    def get_help_option(self, ctx: Any) -> Any:
        return _hide_flag_type(super().get_help_option(ctx))

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = (param.metavar or param.name.upper()) + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
        return pieces


class App(TyperGroup):
    """The top-level group: a usage error (bad option value, missing argument) is one `Error: ...` line and
    exit 2, like every other bad input, instead of click's usage box."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        _tidy_help(self)

    def get_help_option(self, ctx: Any) -> Any:
        return _hide_flag_type(super().get_help_option(ctx))

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click_exceptions.NoArgsIsHelpError as error:
            error.show()
            sys.exit(0)
        except click_exceptions.ClickException as error:
            typer.secho(f"Error: {' '.join(error.format_message().split())}", fg=typer.colors.RED, err=True)
            sys.exit(EXIT_BAD_INPUT)
        except typer.Abort:
            typer.secho("Error: aborted", fg=typer.colors.RED, err=True)
            sys.exit(EXIT_FAILED)
        sys.exit(code if isinstance(code, int) else 0)


def warn(message: str) -> None:
    typer.secho(f"Warning: {message}", fg=typer.colors.YELLOW, err=True)


def fraction(value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise typer.BadParameter(f"must be in [0, 1), got {value}")
    return value


def within(key: str) -> dict[str, Any]:
    """The closed ends of `SETTING_BOUNDS[key]` as an option's `min`/`max`: the rule the job and `PruningConfig`
    check the same value by, answered by click before the command runs."""
    bounds = SETTING_BOUNDS[key]
    ends = {"min": None if bounds.open_low else bounds.low, "max": None if bounds.open_high else bounds.high}
    kind = int if bounds.integer else float
    return {end: kind(value) for end, value in ends.items() if value is not None}


def check_values(params: Sequence[Any], values: Mapping[str, Any]) -> None:
    """Every option value of a command, checked where all of them enter, named by its option: no number is NaN or
    infinite (`--lr inf` would turn every weight into NaN, and click's ranges let inf and nan through), and an
    option named after a setting of `SETTING_BOUNDS` (`--seed`, `--heads`, `--batch-size`, in every command that
    has it) follows its rule, the one the job and `PruningConfig` check too. One line and exit 2."""
    for param in params:
        value = values.get(param.name)
        if not isinstance(param, TyperOption) or value is None:
            continue
        flag = next((opt for opt in param.opts if opt.startswith("--")), param.opts[0])
        for item in value if isinstance(value, (list, tuple)) else (value,):
            try:
                if param.name in SETTING_BOUNDS and item is not None:
                    check_setting(param.name, item, name=flag)  # finite, and within the setting's bounds
                check_finite(flag, item)
            except PruningError as error:
                fail(str(error))


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


class HubErrorsOnly(logging.Filter):
    """Only errors through huggingface_hub's own console handler; its records still reach any other handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def quiet_libraries() -> None:
    """transformers/datasets chatter (new-weight warnings, map progress) would bury the one-line messages, and so
    would huggingface_hub's two lines per retry of a failing request (a Hub outage while a model or a data set
    loads from the Hub): every failure ends in one `Error: ...` line anyway."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers

    for handler in logging.getLogger("huggingface_hub").handlers:  # its console: "Retrying in 1s [Retry 1/5]."
        if not any(isinstance(existing, HubErrorsOnly) for existing in handler.filters):
            handler.addFilter(HubErrorsOnly())
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # loading/saving bars; the CLI draws its own
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


@contextmanager
def handle_errors() -> Iterator[None]:
    """Turn exceptions into one line and an exit code: bad input 2, anything else 1.

    Messages come in the command line's words where the error has them (`--overwrite`, not `overwrite=True`);
    a full disk says so, and that the run can be resumed once space is freed.
    """
    from hfprune.errors import PruningError, WeakBaselineError
    from hfprune.io.output import is_disk_full

    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:
        fail("interrupted; nothing was written", EXIT_INTERRUPTED)
    except Exception as error:
        if os.environ.get("HFPRUNE_DEBUG"):
            raise
        from hfprune.export.gguf_check import GgufMismatchError
        from hfprune.export.hub import HubPushError
        from hfprune.tasks.specs import TaskDataError

        message = str(getattr(error, "cli_message", None) or error).strip()
        text = message.splitlines()[0] if message else type(error).__name__
        if is_disk_full(error):
            fail(f"no space left on device ({text}); free some space and rerun the same command with --resume", EXIT_FAILED)
        if isinstance(error, GgufMismatchError):  # the export ran and its check failed: not bad input
            fail(text, EXIT_FAILED)
        if isinstance(error, (TaskDataError, PruningError)):
            fail(text, EXIT_BAD_INPUT)
        if isinstance(error, (HubPushError, WeakBaselineError)):
            fail(text, EXIT_FAILED)
        fail(f"{type(error).__name__}: {text}", EXIT_FAILED)


PROGRESS_INTERVAL_S = 30.0  # between plain progress lines of one stage (HFPRUNE_PROGRESS_INTERVAL overrides)


class PlainProgress:
    """Progress as plain lines on stderr, for logs that are not a terminal (CI, `2> log`, nohup).

    Each stage prints when it starts, at most every 30 s while it runs, and when it ends:
    `[  1m02s] fine-tune the task head: 120/630 (19%)`.
    """

    def __init__(self, enabled: bool = True, interval: float | None = None):
        self.enabled = enabled
        self.interval = float(os.environ.get("HFPRUNE_PROGRESS_INTERVAL", PROGRESS_INTERVAL_S)) if interval is None else interval
        self.start = time.monotonic()
        self.last: dict[str, float] = {}

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def _print(self, text: str) -> None:
        elapsed = int(time.monotonic() - self.start)
        print(f"[{elapsed // 60:>3}m{elapsed % 60:02d}s] {text}", file=sys.stderr, flush=True)

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        finished = total is not None and done >= total
        if stage in self.last and not finished and now - self.last[stage] < self.interval:
            return
        if finished and self.last.get(stage) == float("inf"):
            return  # the end was already printed
        self.last[stage] = float("inf") if finished else now
        share = f" ({done / total:.0%})" if total else ""
        self._print(f"{stage}: {done}/{total if total is not None else '?'}{share}")

    def log(self, message: str) -> None:
        if self.enabled:
            self._print(message)


class Bars:
    """Rich progress bars on stderr, one per stage, fed by a job's `progress(stage, done, total)`."""

    def __init__(self, enabled: bool = True):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

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


def progress_display(enabled: bool = True) -> Bars | PlainProgress:
    """Live bars on a terminal; plain lines otherwise (live bars would show a log file nothing until the end)."""
    return Bars(enabled) if sys.stderr.isatty() else PlainProgress(enabled)


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
LabelColumnOption = typer.Option(PRUNE_DEFAULTS["label_column"], "--label-column", help="custom: label column.", rich_help_panel=DATA_PANEL)
LabelNameOption = typer.Option(None, "--label-name", help="custom: label names in id order (repeat); default: order of first appearance.", rich_help_panel=DATA_PANEL)
GgufFileOption = typer.Option(
    None, "--gguf-file", help="Load the GGUF checkpoint of this name inside the MODEL folder (weights dequantized to fp32).",
)
MaxEvalOption = typer.Option(None, "--max-eval-samples", **within("max_eval_samples"), help="Evaluate on the first N examples of each eval split.", rich_help_panel=DATA_PANEL)
MaxLengthOption = typer.Option(PRUNE_DEFAULTS["max_length"], "--max-length", **within("max_length"), help="Truncate inputs to this many tokens (also the benchmark sequence length).", rich_help_panel=DATA_PANEL)


def data_kwargs(
    data_dir: Any, train_file: Any, validation_file: Any, text_column: list[str] | None, label_column: str, label_name: list[str] | None
) -> dict[str, Any]:
    """Keyword arguments of `hfprune.tasks.load_task_data` from the shared options."""
    return dict(
        data_dir=data_dir,
        train_file=train_file,
        validation_file=validation_file,
        text_columns=tuple(text_column) if text_column else None,
        label_column=label_column,
        label_names=tuple(label_name) if label_name else None,
    )


def option_group(argument: str, options: Mapping[str, tuple[Any, Any]], collect: Callable[..., Any] = dict):
    """A decorator that gives a command the `options` (`{name: (annotation, typer.Option(...))}`), defined once, and
    hands their values to it as one `argument`: what `collect(**values)` makes of them (by default the dict of
    values, under the option names: the keyword arguments of the job the command calls)."""
    parameters = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)
        for name, (annotation, option) in options.items()
    ]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command, eval_str=True)
        own = [parameter for name, parameter in signature.parameters.items() if name != argument]

        @functools.wraps(command)
        def with_options(*args: Any, **kwargs: Any) -> Any:
            values = {parameter.name: kwargs.pop(parameter.name) for parameter in parameters}
            return command(*args, **{argument: collect(**values)}, **kwargs)

        with_options.__signature__ = signature.replace(parameters=[*own, *parameters])
        return with_options

    return decorate


DATA_OPTIONS = {
    "data_dir": (Optional[Path], DataDirOption),
    "train_file": (Optional[Path], TrainFileOption),
    "validation_file": (Optional[Path], ValidationFileOption),
    "text_column": (Optional[list[str]], TextColumnOption),
    "label_column": (str, LabelColumnOption),
    "label_name": (Optional[list[str]], LabelNameOption),
}
with_data_options = option_group("data_options", DATA_OPTIONS, data_kwargs)
"""Give a command the task-data options (--data-dir, --train-file, ... in the "Task data" panel), defined once
here, and hand them to it as one `data_options` argument: the `load_task_data` keywords (`data_kwargs`)."""


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
