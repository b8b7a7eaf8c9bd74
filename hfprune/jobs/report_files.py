"""The single files a job writes on request (`eval --json`, `bench --json` and `--plot`): checked before any work
with `hfprune.io.output.check_output_file`, written atomically here.

A file is written next to its final path under a temporary name and renamed over it, so PATH holds the old file
or the complete new one, never half of one; a failed write removes the temporary file. JSON is strict: NaN and
infinity (a constant predictor's Pearson, say) are written as null, never as the `NaN` that JSON parsers refuse.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..io.rundir import jsonable

__all__ = ["write_file_atomically", "write_json_atomically"]


def write_file_atomically(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Run `write(tmp_path)` on a temporary path next to `path` (same suffix, so writers that pick the format
    by it still do), then rename it into place. The parent folder is created if missing. Returns `path`."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        write(staging)
        os.replace(staging, path)
    finally:
        if staging.exists():
            staging.unlink()
    return path


def write_json_atomically(path: str | os.PathLike, payload: Any) -> Path:
    """`payload` as indented, strict JSON (NaN and infinity as null, tensors as lists), written atomically."""
    text = json.dumps(jsonable(payload), indent=2, allow_nan=False) + "\n"
    return write_file_atomically(path, lambda staging: staging.write_text(text))
