"""One set of number checks for every argument hfprune takes, so that all of them refuse the same things.

A bool is never a number here (`True` is an `int` to Python, but `steps=True` is a mistake), nor is NaN or
infinity. Each check raises the caller's error class with one line naming the argument, what it must be and
what it got.

`SETTING_BOUNDS` is the one rule for each value of the prune job and of `PruningConfig`: the command line (before
it imports torch), `prune_for_task` (before it loads anything) and `PruningConfig` (for a `PruningTrainer` built
directly) all check a value with `check_setting`, each naming it in its own words (`--heads`, `head_sparsity`,
`target_head_sparsity`).

No float setting is NaN or infinite, bounded or not: `check_finite` is the rule for those without bounds (the
command line applies it to every option, `PruningConfig` to every field, TrainingArguments' own included). A seed
is an integer in [0, 2**32 - 1] (`SEED`, what numpy accepts), and a seed derived from it wraps (`offset_seed`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .errors import PruningError


def is_number(value: Any) -> bool:
    """A finite int or float, and not a bool."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def is_integer(value: Any) -> bool:
    """An int, and not a bool."""
    return not isinstance(value, bool) and isinstance(value, int)


def _expected(low: float | None, high: float | None, open_low: bool, open_high: bool, integer: bool) -> str:
    noun = "an integer" if integer else "a number"
    if low is not None and high is not None:
        return f"{noun} in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    if low is not None:
        return f"{noun} {'>' if open_low else '>='} {low}"
    if high is not None:
        return f"{noun} {'<' if open_high else '<='} {high}"
    return noun


def check_number(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    open_low: bool = False,
    open_high: bool = False,
    integer: bool = False,
    error: type[Exception] = PruningError,
    expected: str | None = None,
) -> Any:
    """`value` if it is a number (an integer with `integer=True`) within the bounds, else `error`.

    The bounds are inclusive unless `open_low`/`open_high`; `expected` replaces the generated description
    ("a number in [0, 1)") where a plainer one reads better ("a fraction in [0, 1)").
    """
    ok = is_integer(value) if integer else is_number(value)
    if ok and low is not None:
        ok = value > low if open_low else value >= low
    if ok and high is not None:
        ok = value < high if open_high else value <= high
    if not ok:
        description = expected or _expected(low, high, open_low, open_high, integer)
        if is_non_finite(value) and not integer:  # "--lr must be a number >= 0, got inf" reads as if inf were one
            description = _finite(description)
        raise error(f"{name} must be {description}, got {value!r}")
    return value if integer else float(value)


def _finite(description: str) -> str:
    """"a number >= 0" -> "a finite number >= 0", "a fraction in [0, 1)" -> "a finite fraction in [0, 1)",
    "above 1" -> "a finite number above 1"."""
    if description.startswith("a "):
        return f"a finite {description[2:]}"
    return f"a finite number {description}"


def is_non_finite(value: Any) -> bool:
    """NaN or an infinity (a float, or a number type such as numpy's that converts to one)."""
    if isinstance(value, bool):
        return False
    try:
        return not math.isfinite(value)
    except (TypeError, OverflowError):  # not a number, or an int too large for a float (and so finite)
        return False


def check_finite(name: str, value: Any, *, error: type[Exception] = PruningError) -> Any:
    """`value` unchanged unless it is NaN or infinite: the one rule every float setting follows, bounded or not
    (a learning rate of inf turns every weight into NaN, and the run would still "succeed")."""
    if is_non_finite(value):
        raise error(f"{name} must be a finite number, got {value!r}")
    return value


def check_fraction(name: str, value: Any, *, error: type[Exception] = PruningError, expected: str | None = None) -> float:
    """A share of units to remove: in [0, 1), since removing everything is never a model."""
    return check_number(name, value, 0, 1, open_high=True, error=error, expected=expected)


def check_count(name: str, value: Any, low: int = 0, high: int | None = None, *, error: type[Exception] = PruningError, expected: str | None = None) -> int:
    """An integer in [low, high] (no upper bound when `high` is None)."""
    return check_number(name, value, low, high, integer=True, error=error, expected=expected)


@dataclass(frozen=True)
class Bounds:
    """The numbers a setting takes: between `low` and `high` (inclusive unless `open_low`/`open_high`), whole
    numbers only with `integer`. `plain`, where set, is how the job and the command line say it."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    integer: bool = False
    plain: str | None = None

    def check(self, name: str, value: Any, *, error: type[Exception] = PruningError, plain: bool = True) -> Any:
        """`value` if within the bounds (a float, or an int with `integer`), else `error` naming it `name`."""
        return check_number(
            name, value, self.low, self.high, open_low=self.open_low, open_high=self.open_high, integer=self.integer,
            error=error, expected=self.plain if plain else None,
        )  # fmt: skip


FRACTION = Bounds(0, 1, open_high=True, plain="a fraction in [0, 1)")
"""A share of units to remove: removing everything is never a model."""

SEED_MAX = 2**32 - 1
"""The largest seed: numpy (which `transformers.set_seed` and `datasets`' shuffles seed) takes [0, 2**32 - 1]."""

SEED = Bounds(0, SEED_MAX, integer=True, plain=f"an integer in [0, {SEED_MAX}] (2**32 - 1)")


def offset_seed(seed: int, offset: int) -> int:
    """The seed `offset` places after `seed`, wrapped into [0, SEED_MAX]: a run seeded with SEED_MAX can still seed
    its pruning steps `seed + step`."""
    return (seed + offset) % (SEED_MAX + 1)


SETTING_BOUNDS: Mapping[str, Bounds] = MappingProxyType(
    {
        # under the prune job's names (`PruningConfig` holds some under other ones: `FIELD_OF_SETTING`)
        "head_sparsity": FRACTION,
        "ffn_sparsity": FRACTION,
        "layer_sparsity": FRACTION,
        "param_budget": Bounds(0, 1, open_low=True, plain="a fraction in (0, 1]"),
        "target_speedup": Bounds(1, open_low=True, plain="above 1"),
        "max_drop": Bounds(0, 100, plain="a number of points in [0, 100]"),  # 100 points: the whole scale of an accuracy
        "speedup_batch_size": Bounds(1, integer=True),
        "speedup_seq_len": Bounds(1, integer=True),
        "steps": Bounds(1, integer=True),
        "score_num_examples": Bounds(1, integer=True),
        "recovery_epochs": Bounds(0),
        "finetune_epochs": Bounds(0),
        "learning_rate": Bounds(0),
        "batch_size": Bounds(1, integer=True),
        "distillation_alpha": Bounds(0, 1),
        "distillation_layer_weight": Bounds(0),
        "save_steps": Bounds(1, integer=True, plain="a positive integer"),
        "max_train_samples": Bounds(1, integer=True),
        "max_eval_samples": Bounds(1, integer=True),
        "max_length": Bounds(8, integer=True),
        "bench_threads": Bounds(1, integer=True),
        "seed": SEED,
        # `PruningConfig` only
        "speedup_extra_steps": Bounds(0, integer=True),
        "round_to_multiple": Bounds(1, integer=True),
        "round_heads_to_multiple": Bounds(1, integer=True),
        "recovery_steps": Bounds(0, integer=True),
        "distillation_temperature": Bounds(0, open_low=True),
        "l0_lambda": Bounds(0),
        "l0_warmup_steps": Bounds(0, integer=True),
        "l0_init_keep": Bounds(0, 1, open_low=True, open_high=True),
        "l0_learning_rate": Bounds(0, open_low=True),
        "l0_epochs": Bounds(0),
        "l0_steps": Bounds(0, integer=True),
    }
)
"""The one rule for each number the prune job and `PruningConfig` take, under the job's name for it."""


def check_setting(key: str, value: Any, *, name: str | None = None, error: type[Exception] = PruningError, plain: bool = True) -> Any:
    """`value` checked against `SETTING_BOUNDS[key]`; the message calls it `name` (default `key`), in the plain
    words of the job and the command line, or with `plain=False` as the bounds themselves ("a number in [0, 1)")."""
    return SETTING_BOUNDS[key].check(name or key, value, error=error, plain=plain)


def check_device(device: str | None, *, error: type[Exception] = PruningError) -> str | None:
    """`None` (the GPU when there is one), "cpu", "cuda", "cuda:N" or "mps", checked before any work."""
    if device is None:
        return None
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise error(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cuda" and (not torch.cuda.is_available() or (parsed.index or 0) >= torch.cuda.device_count()):
        raise error(f"device {device!r} is not available here (CUDA devices: {torch.cuda.device_count()})")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise error("device 'mps' is not available here")
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise error(f"unsupported device {device!r}; use cpu, cuda, cuda:N or mps")
    return str(parsed)


__all__ = [
    "FRACTION",
    "SEED",
    "SEED_MAX",
    "SETTING_BOUNDS",
    "Bounds",
    "check_count",
    "check_device",
    "check_finite",
    "check_fraction",
    "check_number",
    "check_setting",
    "is_integer",
    "is_non_finite",
    "is_number",
    "offset_seed",
]
