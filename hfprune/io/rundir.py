"""A prune run's work directory: what an interrupted `prune_for_task` left, so `resume=True` continues it.

Kept apart from `output.py`, which publishes a finished result atomically and knows nothing of a run in
progress: this module knows the run's files (state, fine-tuned model, scores, training checkpoints) and
refuses to resume a run with other settings.
"""

from __future__ import annotations

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
from ..errors import PipelineInputError, _first_line

if TYPE_CHECKING:
    from torch import nn

__all__ = ["FINETUNED_DIR", "IMPORTANCE_FILE", "RUN_STATE", "load_or_compute", "work_dir_for"]

RUN_STATE = "run.json"
FINETUNED_DIR = "finetuned"
IMPORTANCE_FILE = "importance.pt"


def work_dir_for(output_dir: str | os.PathLike) -> Path:
    """Where `prune_for_task` keeps checkpoints until the run succeeds: next to `output_dir`, so that running the
    same command again with `resume=True` (`hfprune prune ... --resume`) finds them after a crash or a kill."""
    output_dir = Path(output_dir)
    return output_dir.parent / f".{output_dir.name}.hfprune-work"


def _open_work_dir(work_dir: Path, run: dict[str, Any], resume: bool) -> dict[str, Any]:
    """Start a run's work directory, or check that the interrupted one in it is the same run and return its state."""
    state_file = work_dir / RUN_STATE
    if not resume:
        if work_dir.exists():
            raise PipelineInputError(
                f"{work_dir} holds an interrupted run: pass resume=True to continue it, or delete it",
                cli_message=f"{work_dir} holds an interrupted run: pass --resume to continue it, or delete it",
            )
        work_dir.mkdir(parents=True)
        _save_state(work_dir, run)
        return dict(run)
    if not state_file.is_file():
        raise PipelineInputError(f"nothing to resume: no interrupted run in {work_dir}")
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError) as error:
        raise PipelineInputError(f"the run state {state_file} cannot be read ({_first_line(error)}); delete {work_dir}") from None
    differ = sorted(key for key in run if state.get(key) != _jsonable(run[key]))
    if differ:
        raise PipelineInputError(f"the interrupted run in {work_dir} used other settings ({', '.join(differ)}); cannot resume")
    return state


def _save_state(work_dir: Path, state: dict[str, Any]) -> None:
    staging = work_dir / f"{RUN_STATE}.tmp"
    staging.write_text(json.dumps(_jsonable(state), indent=2) + "\n")
    staging.replace(work_dir / RUN_STATE)  # atomic: a kill never leaves half a state file


def _save_folder(folder: Path, model: nn.Module, tokenizer: Any) -> None:
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


def _jsonable(value: Any) -> Any:
    """JSON without NaN/inf (null instead) and with tensors as lists."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
