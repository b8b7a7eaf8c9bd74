"""What a model card is rendered from: its JSON-safe inputs, as stored in `hfprune_results.json`.

A card is rendered once by the job that made the checkpoint and again by `hfprune card` or a push from the
inputs stored with it. This module builds and cleans those inputs (no absolute local path travels to the Hub)
and turns their stored forms back into objects; `card.py` renders them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..constants import README_FILE, RESULTS_FILE
from ..engine.structure import PATCH_KEY
from ..errors import PipelineInputError, first_line
from ..measure.speed_report import SpeedReport

__all__ = [
    "LOCAL_PLACEHOLDER",
    "base_model_ids",
    "card_inputs",
    "importance_tensor",
    "metrics_from_history",
    "per_split",
    "prune_card_inputs",
    "python_call",
    "sanitize_paths",
    "sanitized",
    "speed_report",
    "stored_card_inputs",
]

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# An absolute path (POSIX, ~, or Windows drive) that starts a token: at the start, after a space, a quote,
# "=", "(", "[" or ","; so "me/model", "../data" and "https://..." are left alone. A quoted one may hold spaces.
_QUOTED_PATH = re.compile(r"""(?<![^\s=(,\[])(['"])((?:~|[A-Za-z]:)?[/\\][^'"]*)\1""")
_BARE_PATH = re.compile(r"""(?<![^\s'"=(,\[])(?:~|[A-Za-z]:)?[/\\][^\s'",)\]]*""")
LOCAL_PLACEHOLDER = "<local>"


# ---- paths ------------------------------------------------------------------------------------------
def _local_name(path: str) -> str:
    """The last component of a local path (its folder name), or `<local>` for a root."""
    parts = [part for part in re.split(r"[/\\]", str(path)) if part not in ("", ".", "~") and not part.endswith(":")]
    return parts[-1] if parts else LOCAL_PLACEHOLDER


def sanitize_paths(text: str) -> str:
    """`text` with every absolute local path (and `~/...`) replaced by its last component.

    Cards and the commands they record travel to the Hub; a path such as `/home/alice/work/model` says
    nothing useful to a stranger and something about the machine. Relative paths and Hub ids are kept.
    """
    text = _QUOTED_PATH.sub(lambda match: match.group(1) + _local_name(match.group(2)) + match.group(1), text)
    return _BARE_PATH.sub(lambda match: _local_name(match.group(0)), text)


def sanitized(value: Any) -> Any:
    """A setting with its absolute paths reduced to their last part (strings only)."""
    return sanitize_paths(value) if isinstance(value, str) else value


def _is_hub_id(name: str | None) -> bool:
    """A Hub model id (`org/name` or a legacy `name`), not a path that exists here."""
    return bool(name) and _REPO_ID.match(name) is not None and not Path(name).exists()


def base_model_ids(base_model: str | None, base_model_id: str | None) -> tuple[str | None, str | None, bool]:
    """(Hub id for the metadata, name to show, whether the base is a local folder)."""
    hub_id = base_model_id or (base_model if _is_hub_id(base_model) else None)
    if hub_id:
        return hub_id, hub_id, False
    if base_model is None:
        return None, None, False
    return None, _local_name(base_model), True


# ---- stored forms -----------------------------------------------------------------------------------
def per_split(metrics: Mapping[str, Any] | None) -> dict[str, dict[str, float]]:
    """`{metric: value}` (one split) or `{split: {metric: value}}` -> the nested form."""
    if not metrics:
        return {}
    if all(isinstance(value, Mapping) for value in metrics.values()):
        return {split: dict(values) for split, values in metrics.items()}
    return {"validation": dict(metrics)}


def importance_tensor(importance: Any) -> torch.Tensor | None:
    """`[num_layers, num_heads]` head importance as a float tensor, from a tensor or its JSON form (None: NaN)."""
    if importance is None:
        return None
    scores = torch.as_tensor(
        [[float("nan") if v is None else v for v in row] for row in importance]
        if not isinstance(importance, torch.Tensor)
        else importance.detach().cpu(),
        dtype=torch.float32,
    )
    if scores.dim() != 2:
        raise ValueError(f"importance must be a [num_layers, num_heads] matrix, got shape {tuple(scores.shape)}")
    return scores


def speed_report(speed: Any) -> SpeedReport:
    """A SpeedReport from a report or its JSON form (old JSON without noise gets the checks its rows allow)."""
    return speed if isinstance(speed, SpeedReport) else SpeedReport.from_dict(speed)


def _speed_json(speed: Any) -> dict[str, Any] | None:
    return None if speed is None else speed_report(speed).to_dict()


# ---- the inputs -------------------------------------------------------------------------------------
def card_inputs(
    *,
    base_model: str | None,
    task: str | None,
    metrics_before: Mapping[str, Any] | None,
    metrics_after: Mapping[str, Any] | None,
    speed: Any,
    importance: torch.Tensor | None,
    command: str | None,
    pruning: Mapping[str, Any] | None,
    base_num_parameters: int | None,
    finetuned_first: bool,
    repo_id: str | None = None,
    importance_note: str | None = None,
    base_model_id: str | None = None,
    baselines: Mapping[str, Any] | None = None,
    weak_baseline: str | None = None,
    max_eval_samples: int | None = None,
    dense_control: Mapping[str, Any] | None = None,
    dense_control_note: str | None = None,
    speed_target: Mapping[str, Any] | None = None,
    param_target: Mapping[str, Any] | None = None,
    selection_note: str | None = None,
    generation_speed: Sequence[Mapping[str, Any]] | None = None,
    llama_cpp_speed: Mapping[str, Any] | None = None,
    gguf: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON-safe keyword arguments of `write_model_card`, as stored in `hfprune_results.json`.

    They travel with the checkpoint, so no absolute path is kept: the command and settings are sanitized,
    and a local base model is stored as `./<folder name>` (resolved now, while the path exists, so a later
    re-render cannot mistake the folder name for a Hub id).
    """
    scores = importance_tensor(importance)
    hub_id, base_name, base_local = base_model_ids(base_model, base_model_id)
    return {
        "base_model": f"./{base_name}" if base_local else base_name,
        "base_model_id": hub_id,
        "task": task,
        "metrics_before": per_split(metrics_before),
        "metrics_after": per_split(metrics_after),
        "baselines": per_split(baselines),
        "weak_baseline": weak_baseline,
        "dense_control": per_split(dense_control) or None,
        "dense_control_note": dense_control_note,
        "max_eval_samples": max_eval_samples,
        "speed": _speed_json(speed),
        "speed_target": dict(speed_target) if speed_target else None,
        "param_target": dict(param_target) if param_target else None,
        "selection_note": selection_note,
        "generation_speed": [dict(row) for row in generation_speed] if generation_speed else None,
        "llama_cpp_speed": dict(llama_cpp_speed) if llama_cpp_speed else None,
        "gguf": dict(gguf) if gguf else None,
        "importance": None
        if scores is None
        else [[None if math.isnan(v) else v for v in row] for row in scores.tolist()],
        "command": sanitize_paths(command) if command else None,
        "pruning": {key: sanitized(value) for key, value in (pruning or {}).items()},
        "base_num_parameters": base_num_parameters,
        "finetuned_first": finetuned_first,
        "repo_id": repo_id,
        "importance_note": importance_note,
    }


def python_call(function: str, *args: Any, **kwargs: Any) -> str:
    """The Python call that reproduces a job, for the card of a job run from Python (None values left out)."""
    arguments = [repr(value) for value in args] + [f"{key}={value!r}" for key, value in kwargs.items() if value is not None]
    return f"{function}({', '.join(arguments)})"


def _reconstruction_minutes(result: Any) -> dict[str, float]:
    """The minutes layer-wise reconstruction took, for the card's settings (nothing when it did not run)."""
    seconds = sum(report["seconds"] for report in getattr(result, "reconstruction", None) or ())
    return {"reconstruction_minutes": round(seconds / 60, 2)} if seconds else {}


def prune_card_inputs(
    result: Any,
    *,
    base_model: str,
    base_model_id: str | None,
    task_name: str,
    command: str,
    repo_id: str,
    base_num_parameters: int,
) -> dict[str, Any]:
    """`card_inputs` of a `prune_for_task` run, from its `PruneResult` (`task_name`: the card's task line)."""
    method, schedule = result.settings["method"], result.settings["schedule"]
    return card_inputs(
        base_model=base_model,
        base_model_id=base_model_id,
        task=task_name,
        metrics_before=result.metrics_before,
        metrics_after=result.metrics_after,
        baselines={split: value["majority"] for split, value in result.baselines.items()} if result.baselines else None,
        weak_baseline=result.weak_baseline,
        dense_control=(result.dense_control or {}).get("metrics"),
        dense_control_note=(result.dense_control or {}).get("protocol"),
        speed=result.speed,
        speed_target=result.speed_target,
        param_target=result.param_target,
        generation_speed=result.generation_speed,
        llama_cpp_speed=result.llama_cpp_speed,
        gguf=result.gguf,
        selection_note=(result.selection or {}).get("protocol"),
        importance=result.importance,
        command=command,
        pruning={key: value for key, value in result.settings.items() if value is not None} | _reconstruction_minutes(result),
        base_num_parameters=base_num_parameters,
        finetuned_first=result.finetuned_first,
        repo_id=repo_id,
        importance_note=(
            "the same scores, on the same training examples, that chose the heads to remove"
            if method == "importance" and schedule == "one_shot"
            else f"for reference: the heads were chosen by {method!r} scores ({schedule.replace('_', '-')} schedule)"
        ),
    )


def metrics_from_history(history: Sequence[Mapping[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """(before, after) eval metrics from a `PruningTrainer.pruning_history`: step 0 is the model as given,
    the last step the pruned one; `eval_accuracy` becomes `accuracy`."""

    def metrics(entry: Mapping[str, Any]) -> dict[str, float]:
        return {key[len("eval_"):]: value for key, value in entry.items() if key.startswith("eval_")}

    if not history:
        return {}, {}
    return metrics(history[0]), metrics(history[-1])


# ---- reading them back ------------------------------------------------------------------------------
def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise PipelineInputError(f"{what} {path} is not valid JSON ({first_line(error)})") from None


def stored_card_inputs(checkpoint_dir: str | Path) -> dict[str, Any]:
    """The card inputs stored in a checkpoint's `hfprune_results.json` (`{}` when it has none), after checking
    that the folder is one a card may be rendered for. Raises a one-line `PipelineInputError`, before anything
    is written, for a path that is not a model folder, a `config.json` or `hfprune_results.json` that is not
    valid JSON (or not an object), and a folder hfprune did not write: neither an `hfprune` record in its
    config.json nor an `hfprune_results.json` (a model downloaded from the Hub, whose README.md a card of
    "nothing removed" would replace)."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir() or not (checkpoint_dir / "config.json").is_file():
        raise PipelineInputError(f"{checkpoint_dir} is not a model directory (no config.json)")
    config = _read_json(checkpoint_dir / "config.json", "the config")
    if not isinstance(config, dict):
        raise PipelineInputError(f"the config {checkpoint_dir / 'config.json'} is not a JSON object")
    results_path = checkpoint_dir / RESULTS_FILE
    if not config.get(PATCH_KEY) and not results_path.is_file():
        raise PipelineInputError(
            f"{checkpoint_dir} was not written by hfprune (its config.json has no '{PATCH_KEY}' record and there is "
            f"no {RESULTS_FILE}): its {README_FILE} is left as it is; render cards only for checkpoints hfprune pruned"
        )
    if not results_path.exists():
        return {}
    results = _read_json(results_path, "the results file")
    stored = results.get("card", {}) if isinstance(results, dict) else None
    if not isinstance(stored, dict):
        raise PipelineInputError(f"the results file {results_path} is not what hfprune writes (no card inputs object)")
    return stored
