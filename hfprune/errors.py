"""hfprune's errors: `PruningError` (and its subclass `PipelineInputError`) for bad input, exit 2 in the CLI;
`WeakBaselineError` for a dense model that did not learn its task, exit 1."""


def first_line(error: BaseException) -> str:
    """An error as one line (its type's name when it has no message), for wrapping it in a hfprune error."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


class PruningError(ValueError):
    """Bad pruning input (index out of range, unsupported model, uneven GQA pattern...). One line, says what to do."""


class TargetOutOfReachError(PruningError):
    """No structure the latency model knows meets the time asked for (a speed target beyond what is left)."""


class PipelineInputError(PruningError):
    """A job cannot run as asked (bad option, missing file, unusable output path...); nothing was written.

    `cli_message`, when given, is the same message in the command line's words (`--overwrite` rather than
    `overwrite=True`); the CLI prints it instead of the Python one.
    """

    def __init__(self, message: str, *, cli_message: str | None = None):
        super().__init__(message)
        self.cli_message = cli_message or message


class WeakBaselineError(RuntimeError):
    """The dense model did not clearly learn the task, so pruning it would report noise (exit 1, not bad input).

    The run's state is kept: resume it with `allow_weak_baseline=True` (`--allow-weak-baseline --resume`) to
    prune it anyway. `cli_message` says the same in the command line's words.
    """

    def __init__(self, message: str, *, cli_message: str | None = None):
        super().__init__(message)
        self.cli_message = cli_message or message
