"""Model cards for pruned checkpoints.

A pruned model on the Hub is only useful if a stranger can see what was removed, what it cost in accuracy and
what it gained in speed, and how to load it. `write_model_card` renders all of that from the model's own
record (`config.hfprune`) with huggingface_hub's `ModelCard` and the Jinja template in
`model_cards/hfprune_template.md`, and writes two heatmaps next to README.md. What it renders from lives in
`card_source`, the text of each section in `card_sections`, the heatmaps in `plots`.
"""

from __future__ import annotations

import importlib.resources
import inspect
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard, ModelCardData
from torch import nn

from ..constants import HEADS_IMAGE, IMPORTANCE_IMAGE, README_FILE, RESULTS_FILE, SPEED_FILE, SPEED_IMAGE
from ..engine.record import get_record
from ..errors import PipelineInputError
from ..io.skeleton import checkpoint_skeleton
from ..measure.sparsity import sparsity_summary
from ..tasks.specs import TaskSpec
from .card_sections import (
    eval_results,
    is_score,
    loading_section,
    provenance_section,
    results_section,
    speed_section,
    structure_section,
    task_info,
)
from .card_source import base_model_ids, importance_tensor, per_split, stored_card_inputs
from .plots import plot_head_importance, plot_surviving_heads

__all__ = [
    "DEFAULT_TEMPLATE",
    "check_card_checkpoint",
    "regenerate_model_card",
    "update_card_gguf",
    "update_card_llama_cpp_speed",
    "update_card_speed",
    "write_model_card",
]

DEFAULT_TEMPLATE = Path(str(importlib.resources.files("hfprune.model_cards") / "hfprune_template.md"))


def _draw_heatmaps(record: dict[str, Any], importance: Any, output_dir: Path) -> torch.Tensor | None:
    """Write `heads.png`, and `importance.png` when there are importance scores; returns the scores."""
    plot_surviving_heads(record, output_dir / HEADS_IMAGE)
    scores = importance_tensor(importance)
    if scores is not None:
        plot_head_importance(scores, record, output_dir / IMPORTANCE_IMAGE)
    return scores


def _card_data(
    task: dict[str, Any] | None,
    after: dict[str, dict[str, float]],
    sparsity: dict[str, dict[str, float]],
    record: dict[str, Any],
    *,
    hub_id: str | None,
    base_name: str | None,
    name: str,
    max_eval_samples: int | None,
    license: str | None,
    tags: Sequence[str] | None,
) -> ModelCardData:
    """The card's YAML metadata: base model, dataset, model-index (the pruned results), tags, and the
    `hfprune` block (base model, sparsity per unit, whether stock transformers loads it)."""
    return ModelCardData(
        base_model=hub_id,
        datasets=[task["dataset"]] if task and task["dataset"] else None,
        eval_results=eval_results(task, after, max_eval_samples) or None,
        library_name="transformers",
        license=license,
        metrics=sorted({m for values in after.values() for m in values if is_score(m)}) or None,
        model_name=name,
        pipeline_tag=task["pipeline_tag"] if task else None,
        tags=list(dict.fromkeys(["hfprune", "pruned", "structured-pruning", *(tags or [])])),
        hfprune={
            "base_model": base_name,
            "sparsity": {unit: round(values["sparsity"], 6) for unit, values in sparsity.items()},
            "stock_loadable": bool(record["stock_loadable"]),
        },
    )


def write_model_card(
    model: nn.Module,
    output_dir: str | Path,
    *,
    base_model: str | None = None,
    base_model_id: str | None = None,
    task: str | TaskSpec | None = None,
    metrics_before: Mapping[str, Any] | None = None,
    metrics_after: Mapping[str, Any] | None = None,
    baselines: Mapping[str, Any] | None = None,
    weak_baseline: str | None = None,
    dense_control: Mapping[str, Any] | None = None,
    dense_control_note: str | None = None,
    max_eval_samples: int | None = None,
    speed: Any = None,
    speed_target: Mapping[str, Any] | None = None,
    param_target: Mapping[str, Any] | None = None,
    selection_note: str | None = None,
    generation_speed: Sequence[Mapping[str, Any]] | None = None,
    llama_cpp_speed: Mapping[str, Any] | None = None,
    gguf: Mapping[str, Any] | None = None,
    importance: torch.Tensor | Sequence[Sequence[float | None]] | None = None,
    command: str | None = None,
    repo_id: str | None = None,
    pruning: Mapping[str, Any] | None = None,
    base_num_parameters: int | None = None,
    finetuned_first: bool = False,
    importance_note: str | None = None,
    license: str | None = None,
    tags: Sequence[str] | None = None,
    template_path: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
) -> ModelCard:
    """Render README.md (+ `heads.png`, and `importance.png` when `importance` is given) into `output_dir`.

    Args:
        model: the pruned model; its `config.hfprune` record is the source of truth for what was removed.
        base_model: the Hub id or path the model was pruned from; a local path is named by its folder name
            only. `base_model_id`: the Hub id of the base, when `base_model` is a local copy of it. The Hub id
            (given, or `base_model` itself when it is one) becomes the card's `base_model` metadata.
        metrics_before / metrics_after: `{metric: value}` or, for tasks with several eval sets such as
            MNLI, `{split: {metric: value}}`. The "after" values become the card's model-index.
        baselines: the majority-class baseline in the same form, shown beside dense and pruned;
            `weak_baseline`: a note shown at the top when the dense model is not clearly above it.
        dense_control: the metrics of the dense model trained on the same examples for the same steps as the
            pruned one, without pruning: the honest "before", and what the change is measured against.
            `dense_control_note` states that protocol in one sentence under the table.
        max_eval_samples: the eval sets were cut to their first N examples (default: the `pruning` setting
            of that name); the model-index and the results say so.
        speed: a `hfprune.measure.speed.SpeedReport`, or its JSON form; a noisy one is marked as such.
        speed_target: `PruningTrainer.speedup_report` of a `target_speedup` run: target, predicted and measured.
        param_target: `PruningTrainer.param_report` of an allocated `target_param_budget` run: the budget, what
            was kept and, with `prune_width`, the widths tried and their losses.
        selection_note: how a `max_drop` run chose its step, in one sentence.
        generation_speed: decoders: `hfprune.measure_generation_speed` rows (prefill and decode tokens/s).
        llama_cpp_speed: the same in llama.cpp, dense and pruned GGUF files of one type
            (`hfprune.measure_llama_cpp_speed`'s report, or its JSON form).
        gguf: `GgufExport.to_dict()` of the GGUF file in the checkpoint folder: the card's llama.cpp lines.
        importance: `[num_layers, num_heads]` head importance of the unpruned model (original indices);
            `importance_note` says how it relates to what was pruned.
        command: the command line that produced the checkpoint (absolute paths reduced to their last part).
        repo_id: where the card says to load the model from (default: the folder name).
        pruning: settings (method, schedule, `recovery_epochs`, ...) listed under "How it was made"; the card
            claims recovery fine-tuning only when `recovery_epochs` or `recovery_steps` is above 0.
        tags: extra metadata tags.
        checkpoint_dir: the folder the card will sit in, when it is rendered elsewhere (default `output_dir`):
            the card links `speed.png`, `modeling_hfprune.py` and the results file only if they are there.
    Returns:
        The rendered `ModelCard` (already saved as `output_dir/README.md`).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else output_dir
    record = get_record(model)
    task_fields = task_info(task)
    before, after = per_split(metrics_before), per_split(metrics_after)
    majority, control = per_split(baselines), per_split(dense_control)
    sparsity = sparsity_summary(model, base_num_parameters)
    pruning = dict(pruning or {})
    if max_eval_samples is None:
        max_eval_samples = pruning.get("max_eval_samples")
    hub_id, base_name, base_local = base_model_ids(base_model, base_model_id)
    name = repo_id or output_dir.name
    scores = _draw_heatmaps(record, importance, output_dir)

    card_data = _card_data(
        task_fields, after, sparsity, record, hub_id=hub_id, base_name=base_name, name=name,
        max_eval_samples=max_eval_samples, license=license, tags=tags,
    )  # fmt: skip
    results = results_section(
        task_fields, before, after, majority, control, weak_baseline=weak_baseline,
        dense_control_note=dense_control_note, max_eval_samples=max_eval_samples,
    )  # fmt: skip
    timings = speed_section(
        speed, speed_target=speed_target, param_target=param_target, generation_speed=generation_speed,
        llama_cpp_speed=llama_cpp_speed, selection_note=selection_note, checkpoint_dir=checkpoint_dir,
    )  # fmt: skip
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path or DEFAULT_TEMPLATE),
        model_name=name,
        base_model=base_name,
        base_local=base_local,
        **results,
        **structure_section(record, sparsity, has_importance=scores is not None, importance_note=importance_note),
        **timings,
        **loading_section(model, record, name, checkpoint_dir, gguf),
        **provenance_section(finetuned_first, pruning, command, checkpoint_dir),
    )
    card = ModelCard(re.sub(r"\n{3,}", "\n\n", str(card)))  # Jinja leaves blank lines where blocks were
    card.save(output_dir / README_FILE)
    return card


def check_card_checkpoint(checkpoint_dir: str | Path) -> tuple[dict[str, Any], nn.Module]:
    """`(stored card inputs, model skeleton)` of a checkpoint a card may be rendered for, or a one-line
    `PipelineInputError` / `PruningError` before anything is written.

    Refused: a folder hfprune did not write (no `config.hfprune` and no `hfprune_results.json`: a downloaded
    model, whose README.md would be replaced), a `config.json` or `hfprune_results.json` that is not valid JSON
    or holds card inputs this hfprune does not know, and a checkpoint `from_pretrained` would refuse: weight files
    missing or truncated, weights missing or with other shapes than the config and its record. The weights are
    not loaded: their shapes come from the safetensors headers (`checkpoint_skeleton(check_weights=True)`).
    """
    checkpoint_dir = Path(checkpoint_dir)
    stored = stored_card_inputs(checkpoint_dir)
    known = set(inspect.signature(write_model_card).parameters) - {"model", "output_dir", "template_path", "checkpoint_dir"}
    unknown = sorted(set(stored) - known)
    if unknown:
        raise PipelineInputError(
            f"the card inputs in {checkpoint_dir / RESULTS_FILE} have field(s) this hfprune does not know "
            f"({', '.join(map(str, unknown))}); upgrade hfprune or rerun the job"
        )
    return stored, checkpoint_skeleton(checkpoint_dir, check_weights=True)


def regenerate_model_card(
    checkpoint_dir: str | Path,
    *,
    template_path: str | Path | None = None,
    output_dir: str | Path | None = None,
    base_model_id: str | None = None,
    **overrides: Any,
) -> ModelCard:
    """Re-render README.md and the heatmaps of a checkpoint written by `hfprune prune` from the card inputs
    stored in its `hfprune_results.json`; `overrides` (e.g. `repo_id="me/model"`) replace stored values. Any
    other pruned checkpoint (one with a `config.hfprune` record) gets a card of its structure (what was removed,
    how to load it).

    Before anything is written, the checkpoint is checked as `check_card_checkpoint` does: a folder hfprune did not
    write, broken JSON, and weights that are missing or disagree with the record are refused (`PipelineInputError`
    / `PruningError`, one line), so a card never describes a model that does not load, and a downloaded model's
    README.md is never replaced. Only README.md and the PNGs are written: into the checkpoint, or into
    `output_dir` when given (the checkpoint is then only read). The weights are not loaded.
    """
    checkpoint_dir = Path(checkpoint_dir)
    stored, model = check_card_checkpoint(checkpoint_dir)
    overrides["base_model_id"] = base_model_id
    kwargs = {**stored, **{key: value for key, value in overrides.items() if value is not None}}
    return write_model_card(
        model, output_dir or checkpoint_dir, template_path=template_path, checkpoint_dir=checkpoint_dir, **kwargs
    )


def _store_card_inputs(checkpoint_dir: Path, **inputs: Any) -> None:
    """Set card inputs (and the same top-level results) in a checkpoint's `hfprune_results.json`, so that a later
    `hfprune card` keeps them; the checkpoint is checked first (`check_card_checkpoint`): a folder hfprune did not
    write is refused before any of its files changes."""
    check_card_checkpoint(checkpoint_dir)
    results_path = checkpoint_dir / RESULTS_FILE
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results.setdefault("card", {}).update(inputs)
    results.update(inputs)
    results_path.write_text(json.dumps(results, indent=2) + "\n")


def update_card_speed(checkpoint_dir: str | Path, report: Any) -> ModelCard:
    """Store a new `SpeedReport` in a checkpoint (`hfprune_results.json`, `speed.json`, `speed.png`) and
    re-render its card with it, so that a later `hfprune card` keeps the timings and their noise verdict."""
    checkpoint_dir = Path(checkpoint_dir)
    _store_card_inputs(checkpoint_dir, speed=report.to_dict())
    report.save_json(checkpoint_dir / SPEED_FILE)
    report.plot(checkpoint_dir / SPEED_IMAGE)
    return regenerate_model_card(checkpoint_dir)


def update_card_llama_cpp_speed(checkpoint_dir: str | Path, report: Any) -> ModelCard:
    """Store a `LlamaCppSpeedReport` in a checkpoint and re-render its card with it, beside the PyTorch timings."""
    _store_card_inputs(Path(checkpoint_dir), llama_cpp_speed=report.to_dict())
    return regenerate_model_card(checkpoint_dir)


def update_card_gguf(checkpoint_dir: str | Path, export: Mapping[str, Any]) -> ModelCard:
    """Store the `GgufExport.to_dict()` of a GGUF file written into a checkpoint and re-render its card, which then
    shows how to run the file in llama.cpp."""
    _store_card_inputs(Path(checkpoint_dir), gguf=dict(export))
    return regenerate_model_card(checkpoint_dir)
