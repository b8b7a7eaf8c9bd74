"""One set of number checks for every argument hfprune takes, so that all of them refuse the same things.

A bool is never a number here (`True` is an `int` to Python, but `steps=True` is a mistake), nor is NaN or
infinity. Each check raises the caller's error class with one line naming the argument, what it must be and
what it got.
"""

from __future__ import annotations

import math
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
        raise error(f"{name} must be {description}, got {value!r}")
    return value if integer else float(value)


def check_fraction(name: str, value: Any, *, error: type[Exception] = PruningError, expected: str | None = None) -> float:
    """A share of units to remove: in [0, 1), since removing everything is never a model."""
    return check_number(name, value, 0, 1, open_high=True, error=error, expected=expected)


def check_count(name: str, value: Any, low: int = 0, high: int | None = None, *, error: type[Exception] = PruningError, expected: str | None = None) -> int:
    """An integer in [low, high] (no upper bound when `high` is None)."""
    return check_number(name, value, low, high, integer=True, error=error, expected=expected)


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


__all__ = ["check_count", "check_device", "check_fraction", "check_number", "is_integer", "is_number"]
