"""The progress signature that jobs, data loading and training callbacks share (imports nothing of hfprune)."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, int, "int | None"], None]
"""`progress(stage, done, total)`: called as long work advances (`total` None when unknown)."""
