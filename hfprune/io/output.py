"""Atomic output folders: a job's result appears at OUTPUT complete, or not at all, and never destroys the old one.

A result is built in `.OUTPUT.tmp-*` next to OUTPUT and renamed into place. Replacing an existing OUTPUT swaps
the two folders in one `renameat2(RENAME_EXCHANGE)` call on Linux, so OUTPUT always holds the old or the new
result, whenever the process dies. Where that call is missing, OUTPUT is moved aside to `.OUTPUT.old-*` first;
a process killed between the two renames leaves the old result there, and the next run puts it back
(`repair_output_dir`). Leftovers of killed runs are removed once a run succeeds.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import PipelineInputError

__all__ = ["check_output_dir", "is_disk_full", "repair_output_dir", "write_atomically"]

_RENAME_EXCHANGE = 2  # from <linux/fs.h>
_AT_FDCWD = -100


def _rename_exchange(first: Path, second: Path) -> bool:
    """Atomically swap two paths (Linux >= 3.15 with glibc >= 2.28); False where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # the kernel or file system has no exchange: fall back to two renames
    raise OSError(code, os.strerror(code), str(first))


def _leftovers(output_dir: Path, kind: str) -> list[Path]:
    return sorted(path for path in output_dir.parent.glob(f".{output_dir.name}.{kind}-*") if path.is_dir())


def repair_output_dir(output_dir: str | os.PathLike) -> Path | None:
    """Put back the old result that a run killed between its two renames left in `.OUTPUT.old-*`.

    Only when OUTPUT itself is missing; returns the restored path, or None when there was nothing to repair.
    """
    output_dir = Path(output_dir).expanduser()
    if output_dir.exists() or output_dir.is_symlink():
        return None
    old = _leftovers(output_dir, "old")
    if not old:
        return None
    newest = max(old, key=lambda path: path.stat().st_mtime)
    newest.rename(output_dir)
    return output_dir


def _remove_leftovers(output_dir: Path, keep: Path | None = None) -> None:
    for path in _leftovers(output_dir, "old") + _leftovers(output_dir, "tmp"):
        if path != keep:
            shutil.rmtree(path, ignore_errors=True)


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse, before any work, an output path the job could not write at its end.

    The one change made here is `repair_output_dir`: an old result that a killed run left aside is put back
    first, so that it is neither lost nor silently replaced. Refused: an existing file, a non-empty directory without `overwrite`, the current directory or one of its
    parents (renaming it into place would pull the ground from under the shell), a path under a file, and a
    place that is not writable.
    """
    output_dir = Path(output_dir).expanduser()
    repair_output_dir(output_dir)
    resolved = output_dir.resolve()
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents or resolved == resolved.parent:
        raise PipelineInputError(f"output path {output_dir} is the current directory or one of its parents; name a new folder")
    ancestor = _nearest_existing(resolved.parent)
    if not ancestor.is_dir():
        raise PipelineInputError(f"output path {output_dir} is inside {ancestor}, which is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PipelineInputError(f"cannot write to {ancestor} (permission denied); choose another output path")
    if output_dir.exists():
        if not output_dir.is_dir():
            raise PipelineInputError(f"output path {output_dir} exists and is not a directory")
        if any(output_dir.iterdir()) and not overwrite:
            raise PipelineInputError(
                f"output directory {output_dir} is not empty; choose another one or pass overwrite=True",
                cli_message=f"output directory {output_dir} is not empty; choose another one or pass --overwrite",
            )
    return output_dir


def _apply_umask(folder: Path) -> None:
    """`mkdtemp` makes a 0700 folder; a result should get the permissions any other new folder gets."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)


def write_atomically(output_dir: str | os.PathLike, write: Callable[[Path], Any], overwrite: bool = False) -> Any:
    """Run `write(tmp_dir)` in a fresh directory next to `output_dir`, then move it into place.

    On any failure the temporary directory is removed and `output_dir` is left as it was. With `overwrite`,
    an existing `output_dir` is replaced only after the new one is complete, in one atomic swap where the
    system allows it. Once the result is in place, leftovers of earlier killed runs are removed.
    """
    output_dir = check_output_dir(output_dir, overwrite)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        _apply_umask(staging)
        result = write(staging)
        if not output_dir.exists():
            staging.rename(output_dir)
        elif not _rename_exchange(staging, output_dir):
            old = output_dir.with_name(f".{output_dir.name}.old-{uuid.uuid4().hex[:8]}")
            output_dir.rename(old)
            try:
                staging.rename(output_dir)
            except BaseException:
                old.rename(output_dir)
                raise
        # after an exchange, `staging` holds the old result
        _remove_leftovers(output_dir)
        return result
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` means the disk filled up: an ENOSPC OSError, or torch's serializer failing to write."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(error)
        # torch.save on a full disk: "[enforce fail at inline_container.cc:...] . unexpected pos ..." or
        # "PytorchStreamWriter failed writing file ...: file write failed"
        if any(sign in text for sign in ("No space left on device", "file write failed", "PytorchStreamWriter")):
            return True
        if "inline_container" in text and "unexpected pos" in text:
            return True
        error = error.__cause__ or error.__context__
    return False
