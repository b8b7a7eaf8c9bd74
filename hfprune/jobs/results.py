"""What a job did and measured, and the one way a job's output folder is filled.

Every job that writes a checkpoint (`prune_for_task`, `drop_layers_for_task`) writes the same files: the
model, its tokenizer, the model card and `hfprune_results.json` (whose `card` entry lets the card be rendered
again later), plus the speed table and plot when it timed the model.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..constants import RESULTS_FILE, SPEED_FILE, SPEED_IMAGE
from ..export.card import write_model_card
from ..io.rundir import jsonable

__all__ = ["PruneResult", "Stopwatch", "write_output_folder"]


class Stopwatch:
    """Wall-clock seconds of a job's stages, in the order they ran (`PruneResult.timings`)."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._clock = time.perf_counter()

    def lap(self, name: str) -> None:
        """End the stage `name`: the time since the previous lap (or the start) is its time."""
        now = time.perf_counter()
        self.timings[name] = now - self._clock
        self._clock = now


@dataclass
class PruneResult:
    """What `prune_for_task` did and measured; also written to `output_dir/hfprune_results.json`."""

    output_dir: Path
    base_model: str
    task: str
    metrics_before: dict[str, dict[str, float]]
    metrics_after: dict[str, dict[str, float]]
    sparsity: dict[str, dict[str, float]]
    finetuned_first: bool
    speed: Any = None  # hfprune.measure.speed.SpeedReport
    importance: torch.Tensor | None = None
    pruning_history: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    baselines: dict[str, dict[str, dict[str, float]]] | None = None  # {split: {"majority"|"chance": metrics}}
    weak_baseline: str | None = None  # why the dense model is not clearly above them (None: it is)
    finetune: dict[str, Any] | None = None  # epochs, steps and best validation score of the head's fine-tuning
    # the dense model trained on the same examples for the same steps: {"metrics", "steps", "pruned_steps", "protocol"}
    dense_control: dict[str, Any] | None = None
    # target_speedup: target, predicted and measured speedups (`SpeedTarget.report`); max_drop: how the step was chosen
    speed_target: dict[str, Any] | None = None
    selection: dict[str, Any] | None = None
    # an allocated param_budget: what was kept and each step's width choice (`ParamTarget.report`)
    param_target: dict[str, Any] | None = None
    # reconstruct: one `ReconstructionReport.to_dict()` per pruning step (each block's error before and after, seconds)
    reconstruction: list[dict[str, Any]] | None = None
    generation_speed: list[dict[str, Any]] | None = None  # decoders: prefill / decode tokens/s, dense vs pruned
    llama_cpp_speed: dict[str, Any] | None = None  # gguf_dtype: the same in llama.cpp (`LlamaCppSpeedReport.to_dict()`)
    gguf: dict[str, Any] | None = None  # gguf_dtype: the GGUF file written into the checkpoint (`GgufExport.to_dict()`)
    dry_run: bool = False  # the plan only: nothing was trained or written

    def to_dict(self) -> dict[str, Any]:
        return {
            "output_dir": str(self.output_dir),
            "base_model": self.base_model,
            "task": self.task,
            "metrics_before": self.metrics_before,
            "metrics_after": self.metrics_after,
            "sparsity": self.sparsity,
            "finetuned_first": self.finetuned_first,
            "speed": jsonable(self.speed.to_dict()) if self.speed is not None else None,
            "pruning_history": jsonable(self.pruning_history),
            "settings": jsonable(self.settings),
            "timings_s": {key: round(value, 2) for key, value in self.timings.items()},
            "baselines": jsonable(self.baselines),
            "weak_baseline": self.weak_baseline,
            "finetune": jsonable(self.finetune),
            "dense_control": jsonable(self.dense_control),
            "speed_target": jsonable(self.speed_target),
            "selection": jsonable(self.selection),
            "param_target": jsonable(self.param_target),
            "reconstruction": jsonable(self.reconstruction),
            "generation_speed": jsonable(self.generation_speed),
            "llama_cpp_speed": jsonable(self.llama_cpp_speed),
            "gguf": jsonable(self.gguf),
            "dry_run": self.dry_run,
        }


def write_output_folder(
    folder: Path,
    model: nn.Module,
    tokenizer: Any,
    *,
    results: dict[str, Any],
    card_kwargs: dict[str, Any],
    card_task: Any,
    speed: Any = None,
) -> None:
    """Fill `folder` (a staging folder of `write_atomically`) with everything a job publishes.

    `card_task` is the task as the card wants it (a GLUE name, or a task's description); `card_kwargs` are the
    JSON-safe `card_inputs`, stored next to the results so that the card can be rendered again.
    """
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    (folder / RESULTS_FILE).write_text(json.dumps(jsonable({**results, "card": card_kwargs}), indent=2) + "\n")
    if speed is not None:
        speed.save_json(folder / SPEED_FILE)
        speed.plot(folder / SPEED_IMAGE)
    write_model_card(model, folder, **{**card_kwargs, "task": card_task})
