"""A prune run's work directory: what an interrupted `prune_for_task` left, so `resume=True` continues it.

Kept apart from `output.py`, which publishes a finished result atomically and knows nothing of a run in
progress: this module knows the run's files (state, fine-tuned model, scores, training checkpoints) and
refuses to resume a run with other settings.

A run holds an `flock` on `WORK_DIR/lock` (with its pid in it) from `open_work_dir` until the process ends or
`release_work_dir` is called, so a second run on the same output, resumed or not, is refused with one line instead
of both writing one folder. The kernel drops the lock of a process that dies: a killed run's folder is resumable.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..constants import PRUNING_PHASES, PRUNING_STATE_FILE
from ..errors import PipelineInputError, first_line

if TYPE_CHECKING:
    from torch import nn

__all__ = ["FINETUNED_DIR", "IMPORTANCE_FILE", "RUN_STATE", "load_or_compute", "release_work_dir", "work_dir_for"]

RUN_STATE = "run.json"
LOCK_FILE = "lock"  # in the work directory: flock'ed by the run that owns it, holds its pid
_HELD: dict[Path, int] = {}  # work directory (resolved) -> descriptor of the lock this process holds on it
FINETUNED_DIR = "finetuned"
IMPORTANCE_FILE = "importance.pt"


def work_dir_for(output_dir: str | os.PathLike) -> Path:
    """Where `prune_for_task` keeps checkpoints until the run succeeds: next to `output_dir`, so that running the
    same command again with `resume=True` (`hfprune prune ... --resume`) finds them after a crash or a kill."""
    output_dir = Path(output_dir)
    return output_dir.parent / f".{output_dir.name}.hfprune-work"


def _output_of(work_dir: Path) -> Path:
    """The output folder a work directory belongs to (`.OUT.hfprune-work` -> `OUT`)."""
    name = work_dir.name.removeprefix(".").removesuffix(".hfprune-work")
    return work_dir.with_name(name)


def _lock_work_dir(work_dir: Path) -> bool:
    """Take the work directory's lock for this process (False: it does not exist). A lock of this process from an
    earlier run (one that failed) is given up first; a live lock of another process is one line naming its pid."""
    _forget_removed()
    key = work_dir.resolve()
    if key in _HELD:
        os.close(_HELD.pop(key))
    lock = work_dir / LOCK_FILE
    for _ in range(10):  # the folder may be removed by the run that owned it while it is being locked
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            return False
        except OSError as error:  # not a directory, not writable
            raise PipelineInputError(f"cannot lock {lock} ({first_line(error)}); check {work_dir}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = _read_pid(fd)
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise PipelineInputError(f"cannot lock {lock} ({first_line(error)})") from None
            output = _output_of(work_dir)
            raise PipelineInputError(
                f"another hfprune run is writing {output} (pid {holder or 'unknown'}); wait for it to finish, "
                "or choose another output path"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # locked a file that was removed meanwhile: look again
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _HELD[key] = fd
        return True
    raise PipelineInputError(f"cannot lock {lock}: it keeps being removed by another run")


def _forget_removed() -> None:
    """Close the locks this process still holds on work directories that are gone (their runs succeeded)."""
    for key, fd in list(_HELD.items()):
        try:
            alive = os.stat(key / LOCK_FILE).st_ino == os.fstat(fd).st_ino
        except OSError:
            alive = False
        if not alive:
            os.close(_HELD.pop(key))


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""


def release_work_dir(work_dir: str | os.PathLike) -> None:
    """Give up this process's lock on a run's work directory (the run is over); a no-op when none is held."""
    fd = _HELD.pop(Path(work_dir).resolve(), None)
    if fd is not None:
        os.close(fd)


def open_work_dir(work_dir: Path, run: dict[str, Any], resume: bool) -> dict[str, Any]:
    """Start a run's work directory, or check that the interrupted one in it is the same run and return its state.

    The run holds the directory's lock from here on (see the module notes): a second run on the same output, with
    or without `resume`, is refused while this one lives."""
    state_file = work_dir / RUN_STATE
    for _ in range(10):
        if _lock_work_dir(work_dir):
            break  # it exists and is ours
        if resume:
            raise PipelineInputError(f"nothing to resume: no interrupted run in {work_dir}")
        try:
            work_dir.mkdir(parents=True)
        except FileExistsError:
            continue  # another run made it meanwhile: its lock decides
        if not _lock_work_dir(work_dir):
            continue
        save_state(work_dir, run)
        return dict(run)
    else:
        raise PipelineInputError(f"cannot take the lock of {work_dir}: it keeps appearing and disappearing")
    if not resume:
        release_work_dir(work_dir)
        raise PipelineInputError(
            f"{work_dir} holds an interrupted run: pass resume=True to continue it, or delete it",
            cli_message=f"{work_dir} holds an interrupted run: pass --resume to continue it, or delete it",
        )
    if not state_file.is_file():
        release_work_dir(work_dir)
        raise PipelineInputError(f"nothing to resume: no interrupted run in {work_dir}")
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError) as error:
        release_work_dir(work_dir)
        raise PipelineInputError(f"the run state {state_file} cannot be read ({first_line(error)}); delete {work_dir}") from None
    differ = sorted(key for key in run if state.get(key) != jsonable(run[key]))
    if differ:
        release_work_dir(work_dir)
        raise PipelineInputError(f"the interrupted run in {work_dir} used other settings ({', '.join(differ)}); cannot resume")
    return state


def save_state(work_dir: Path, state: dict[str, Any]) -> None:
    staging = work_dir / f"{RUN_STATE}.tmp"
    staging.write_text(json.dumps(jsonable(state), indent=2) + "\n")
    staging.replace(work_dir / RUN_STATE)  # atomic: a kill never leaves half a state file


def save_folder(folder: Path, model: nn.Module, tokenizer: Any) -> None:
    """Save next to `folder`, then rename: a run killed (or out of disk) while saving leaves no half a model."""
    staging = folder.with_name(f"{folder.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.rename(folder)


def load_or_compute(path: Path, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The tensor an earlier try of the run saved at `path`, or `compute()` saved there now.

    It is written next to `path` and renamed, so a kill or a full disk never leaves half a file to resume from.
    """
    if path.is_file():
        return torch.load(path)
    value = compute()
    staging = path.with_name(f"{path.name}.tmp")
    torch.save(value, staging)
    staging.replace(path)
    return value


def latest_pruning_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The latest complete `PruningTrainer` checkpoint under `output_dir` (by pruning step, phase, then
    optimizer step), or None. A checkpoint is complete once its `trainer_state.json` is written (the last file)."""
    found = []
    for state_file in Path(output_dir).glob(f"pruning-step-*/checkpoint-*/{PRUNING_STATE_FILE}"):
        folder = state_file.parent
        match = re.fullmatch(r"checkpoint-(\d+)", folder.name)
        if match is None or not (folder / "trainer_state.json").is_file():
            continue  # killed while saving: not complete
        state = json.loads(state_file.read_text())
        found.append(((state["pruning_step"], PRUNING_PHASES.index(state["phase"]), int(match.group(1))), str(folder)))
    return max(found)[1] if found else None


def jsonable(value: Any) -> Any:
    """JSON without NaN/inf (null instead) and with tensors as lists."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
