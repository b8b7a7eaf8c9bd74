"""Atomic output folders: a job's result appears at OUTPUT complete, or not at all, and never destroys the old one.

A result is built in `.OUTPUT.tmp-*` next to OUTPUT and renamed into place. Replacing an existing OUTPUT swaps
the two folders in one `renameat2(RENAME_EXCHANGE)` call on Linux, so OUTPUT always holds the old or the new
result, whenever the process dies. Where that call is missing, OUTPUT is moved aside to `.OUTPUT.old-*` first;
a process killed between the two renames leaves the old result there, and the next run puts it back
(`repair_output_dir`). Leftovers of killed runs are removed once a run succeeds; a folder another live process is
still building (`.OUTPUT.tmp-PID-*`, `.OUTPUT.old-PID-*`) is left alone: its builder holds an `flock` on it, and
its pid is in its name. Every file and folder of a result gets the permissions the umask gives new ones.

`check_output_dir` also refuses an output that is, contains or lies inside one of the job's inputs (the model
folder, the data): with `overwrite` it would delete them.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..constants import HEADS_IMAGE, IMPORTANCE_IMAGE, SCORES_FILE, SPEED_FILE, SPEED_IMAGE
from ..errors import PipelineInputError

__all__ = ["check_not_an_input", "check_output_dir", "check_output_file", "is_disk_full", "job_inputs", "repair_output_dir", "write_atomically"]

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
    """`.OUTPUT.tmp-*` / `.OUTPUT.old-*` folders that no live process is still building or swapping."""
    found = (path for path in output_dir.parent.glob(f".{output_dir.name}.{kind}-*") if path.is_dir())
    return sorted(path for path in found if not _in_use(path))


def _lock_folder(folder: Path) -> int:
    """Hold an exclusive `flock` on `folder` (it follows the folder through renames; the kernel drops it when the
    process dies) and return the descriptor to close when done. Waits while another run holds it: a run holds
    the lock of a result it renames into place only for those renames."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        pass  # a file system without flock: the pid in the folder's name still marks it as live
    except BaseException:
        os.close(fd)
        raise
    return fd


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, as another user's process
        return True
    return True


def _in_use(folder: Path) -> bool:
    """Whether a live process still owns a tmp/old folder: it holds the folder's flock, or the pid in its name
    (`.OUT.tmp-PID-xxxx`; set before the lock is taken) is alive. Folders of older hfprune carry no pid."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return False  # gone already
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        pass  # a file system without flock: the pid decides
    finally:
        os.close(fd)  # closing drops a lock taken here
    pid = folder.name.rpartition(".")[2].split("-")[1:2]
    return bool(pid) and pid[0].isdigit() and _pid_alive(int(pid[0]))


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


def check_output_dir(
    output_dir: str | os.PathLike,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike | None] = (),
    *,
    inside_inputs: bool = False,
) -> Path:
    """Refuse, before any work, an output path the job could not write at its end, or whose writing would destroy
    the job's own input.

    The one change made here is `repair_output_dir`: an old result that a killed run left aside is put back
    first, so that it is neither lost nor silently replaced. Refused: an existing file, a non-empty directory without `overwrite`, the current directory or one of its
    parents (renaming it into place would pull the ground from under the shell), a path under a file, a
    place that is not writable, and a path that is, contains or lies inside one of `inputs` (the job's model folder
    or file, data folder and files; symlinks resolved; paths that do not exist, such as Hub ids, are skipped).
    `inside_inputs=True` allows an output inside an input (an export kept in its checkpoint, `CKPT/onnx`).
    """
    output_dir = Path(output_dir).expanduser()
    repair_output_dir(output_dir)
    resolved = output_dir.resolve()
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents or resolved == resolved.parent:
        raise PipelineInputError(f"output path {output_dir} is the current directory or one of its parents; name a new folder")
    check_not_an_input(output_dir, inputs, inside_inputs=inside_inputs)
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


REPORT_FILES = (SPEED_FILE, SPEED_IMAGE, SCORES_FILE, IMPORTANCE_IMAGE, HEADS_IMAGE)
"""Measurement files hfprune writes beside a checkpoint; no model reads them back."""


def check_output_file(
    path: str | os.PathLike,
    *,
    name: str = "output file",
    cli_name: str | None = None,
    inputs: Iterable[str | os.PathLike | None] = (),
) -> Path:
    """Refuse, before any work, a path a job was asked to write one file to (`--json`, `--plot`) that it could not
    write at its end: a directory, something that is not a regular file (a device, a FIFO: it would be replaced),
    a path under a file, a folder that cannot be written (permissions, a read-only file system), one of the job's
    `inputs` (its model folder or data files), or an existing file inside one of them (the checkpoint's weights).
    A new file inside an input folder is allowed, and so is replacing hfprune's own reports there (`REPORT_FILES`).

    `name` names the path in the Python message (`json_path`), `cli_name` in the command line's (`--json`).
    Nothing is created. Returns the path with `~` expanded.
    """
    path = Path(path).expanduser()

    def refuse(problem: str) -> PipelineInputError:
        return PipelineInputError(f"{name} {path} {problem}", cli_message=f"{cli_name or name} {path} {problem}")

    if str(path) in ("", ".") or path.name in ("", ".", ".."):
        raise refuse("names no file; give a file path")
    if path.is_dir():
        raise refuse("is a directory; give a file path")
    if path.exists() and not path.is_file():
        raise refuse("exists and is not a regular file")
    for given in inputs:
        source = Path(given).expanduser() if given is not None and str(given) != "" else None
        if source is None or not source.exists():
            continue  # a Hub id, or nothing the job could destroy
        if path.resolve() == source.resolve():
            raise refuse(f"is the job's input {given}: writing it would destroy the input; choose another path")
        replaceable = path.name in REPORT_FILES  # hfprune's own measurements: a rerun may replace them
        if path.exists() and source.resolve() in path.resolve().parents and not replaceable:
            raise refuse(f"would replace a file of the job's input {given}; choose a new file name")
    ancestor = _nearest_existing(path.resolve().parent)
    if not ancestor.is_dir():
        raise refuse(f"is inside {ancestor}, which is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise refuse(f"cannot be written: {ancestor} is not writable (permission denied or a read-only file system)")
    return path


DATA_PATH_KEYS = ("data_dir", "train_file", "validation_file")  # the paths among `load_task_data`'s arguments


def job_inputs(*paths: str | os.PathLike | None, data_kwargs: Any = None) -> list[str | os.PathLike]:
    """The paths a job reads, for `check_output_dir(..., inputs=...)`: `paths` (the model folder or file) and the
    data folder and files among `data_kwargs` (`load_task_data`'s keyword arguments). None entries are dropped."""
    data = [(data_kwargs or {}).get(key) for key in DATA_PATH_KEYS]
    return [path for path in (*paths, *data) if path is not None and str(path) != ""]


def check_not_an_input(
    output_dir: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], *, inside_inputs: bool = False
) -> None:
    """Refuse an output path that is, contains or (unless `inside_inputs`) lies inside one of `inputs`."""
    output_dir = Path(output_dir).expanduser()
    resolved = output_dir.resolve()
    for given in inputs:
        if given is None or str(given) == "":
            continue
        path = Path(given).expanduser()
        if not path.exists():
            continue  # a Hub id, or nothing the job could destroy
        source = path.resolve()
        if resolved == source:
            relation = "is"
        elif resolved in source.parents:
            relation = "contains"
        elif source in resolved.parents and not inside_inputs:
            relation = "lies inside"
        else:
            continue
        raise PipelineInputError(
            f"output path {output_dir} {relation} the input {given}: writing it could destroy the input; "
            "choose an output folder outside the job's inputs"
        )


def _umask() -> int:
    try:  # Linux: read it without setting it (os.umask(0) would briefly change it for every thread)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _apply_umask(folder: Path) -> None:
    """Give every folder and file under `folder` (itself included) the permissions a new one gets under the umask:
    `mkdtemp` makes a 0700 folder, and writers that go through a temporary file (safetensors, `tempfile`) leave
    0600 files. Executable files stay executable; symlinks are left alone."""
    umask = _umask()
    folder.chmod(0o777 & ~umask)
    for root, folders, files in os.walk(folder):
        for name in folders + files:
            path = Path(root) / name
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                continue
            if stat.S_ISDIR(mode) or mode & 0o111:
                path.chmod(0o777 & ~umask)
            else:
                path.chmod(0o666 & ~umask)


def write_atomically(
    output_dir: str | os.PathLike,
    write: Callable[[Path], Any],
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike | None] = (),
    *,
    inside_inputs: bool = False,
) -> Any:
    """Run `write(tmp_dir)` in a fresh directory next to `output_dir`, then move it into place.

    On any failure the temporary directory is removed and `output_dir` is left as it was. With `overwrite`,
    an existing `output_dir` is replaced only after the new one is complete, in one atomic swap where the
    system allows it. Once the result is in place, leftovers of earlier killed runs are removed (never what a live
    process is building). `inputs` / `inside_inputs`: as `check_output_dir`.
    """
    inputs = list(inputs)
    output_dir = check_output_dir(output_dir, overwrite, inputs, inside_inputs=inside_inputs)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-{os.getpid()}-", dir=output_dir.parent))
    locks = []
    try:
        locks.append(_lock_folder(staging))  # no other run's cleanup removes it while it is built
        result = write(staging)
        _apply_umask(staging)
        if not output_dir.exists():
            staging.rename(output_dir)
        elif not _rename_exchange(staging, output_dir):
            old = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            locks.append(_lock_folder(output_dir))  # neither removed nor put back by another run while aside
            output_dir.rename(old)
            try:
                staging.rename(output_dir)
            except BaseException:
                old.rename(output_dir)
                raise
        # after an exchange, `staging` holds the old result
        for fd in locks:
            os.close(fd)
        locks = []
        _remove_leftovers(output_dir)
        return result
    finally:
        for fd in locks:
            os.close(fd)
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
