"""Model cards for pruned checkpoints.

A pruned model on the Hub is only useful if a stranger can see what was removed, what it cost in accuracy and
what it gained in speed, and how to load it. `write_model_card` renders all of that from the model's own
record (`config.hfprune`) with huggingface_hub's `ModelCard` and the Jinja template in
`model_cards/hfprune_template.md`, and writes two heatmaps next to README.md.
"""

from __future__ import annotations

import importlib.resources
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from torch import nn

from ..constants import (
    HEADS_IMAGE,
    IMPORTANCE_IMAGE,
    README_FILE,
    REMOTE_CODE_FILE,
    RESULTS_FILE,
    SPEED_FILE,
    SPEED_IMAGE,
    __version__,
)
from ..engine.record import get_record, kept_ffn, unpruned_twin
from ..engine.structure import PATCH_KEY, restructured_class
from ..io.loading import _model_class
from ..io.per_layer_load import prepare_per_layer_config
from ..io.v4 import convert_v4_config
from ..measure.speed import NOISE_ADVICE, SpeedReport
from ..tasks.task_data import GLUE_HUB_ID, GLUE_TASKS, TaskSpec, get_task
from .onnx import ONNX_DIR, ONNX_FILE, read_onnx_report

__all__ = [
    "DEFAULT_TEMPLATE",
    "HEADS_IMAGE",
    "IMPORTANCE_IMAGE",
    "RESULTS_FILE",
    "card_inputs",
    "metrics_from_history",
    "plot_head_importance",
    "plot_surviving_heads",
    "regenerate_model_card",
    "sanitize_paths",
    "sparsity_summary",
    "unpruned_twin",
    "update_card_speed",
    "write_model_card",
]

DEFAULT_TEMPLATE = Path(str(importlib.resources.files("hfprune.model_cards") / "hfprune_template.md"))
_GLUE_DISPLAY = {
    "cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "qqp": "QQP", "stsb": "STS-B",
    "mnli": "MNLI", "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI",
}  # fmt: skip
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


def _sanitized(value: Any) -> Any:
    return sanitize_paths(value) if isinstance(value, str) else value


def _is_hub_id(name: str | None) -> bool:
    """A Hub model id (`org/name` or a legacy `name`), not a path that exists here."""
    return bool(name) and _REPO_ID.match(name) is not None and not Path(name).exists()


def _base_model_ids(base_model: str | None, base_model_id: str | None) -> tuple[str | None, str | None, bool]:
    """(Hub id for the metadata, name to show, whether the base is a local folder)."""
    hub_id = base_model_id or (base_model if _is_hub_id(base_model) else None)
    if hub_id:
        return hub_id, hub_id, False
    if base_model is None:
        return None, None, False
    return None, _local_name(base_model), True


def _original_parameter_count(model: nn.Module) -> int | None:
    """Parameters of the unpruned model (built on the meta device: no memory, no init cost)."""
    if not getattr(model.config, PATCH_KEY, None):
        return sum(p.numel() for p in model.parameters())
    try:
        return sum(p.numel() for p in unpruned_twin(model, "meta").parameters())
    except Exception:  # a family whose config cannot be rebuilt this way: leave the count out
        return None


def sparsity_summary(model: nn.Module, base_num_parameters: int | None = None) -> dict[str, dict[str, float]]:
    """`{"layers" | "heads" | "ffn_neurons" | "parameters": {"original", "kept", "removed", "sparsity"}}`.

    Heads and FFN neurons of dropped layers count as removed. `base_num_parameters` is the dense model's
    parameter count; without it, it is rebuilt from the config (on the meta device, no memory).
    """
    record = get_record(model)
    original = record["original"]
    num_layers = len(record["kept_layers"])
    totals = {
        "layers": (original["num_layers"], num_layers),
        "heads": (
            original["num_layers"] * original["num_heads"],
            sum(len(heads) for heads in record["kept_heads"]),
        ),
        "ffn_neurons": (
            original["num_layers"] * original["intermediate_size"],
            sum(len(kept_ffn(record, layer)) for layer in range(num_layers)),
        ),
    }
    base = base_num_parameters if base_num_parameters is not None else _original_parameter_count(model)
    if base:
        totals["parameters"] = (base, sum(p.numel() for p in model.parameters()))
    return {
        unit: {"original": total, "kept": kept, "removed": total - kept, "sparsity": (total - kept) / total if total else 0.0}
        for unit, (total, kept) in totals.items()
    }


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _setting(value: Any) -> str:
    """A setting as the user would type it: 5e-05 stays 5e-05, 0.4 stays 0.4."""
    if isinstance(value, float):
        return f"{value:g}"
    return _fmt(value)


def _per_split(metrics: Mapping[str, Any] | None) -> dict[str, dict[str, float]]:
    """`{metric: value}` (one split) or `{split: {metric: value}}` -> the nested form."""
    if not metrics:
        return {}
    if all(isinstance(value, Mapping) for value in metrics.values()):
        return {split: dict(values) for split, values in metrics.items()}
    return {"validation": dict(metrics)}


def _is_score(name: str) -> bool:
    """Metric keys worth a row: scores, not Trainer bookkeeping such as runtime or samples per second."""
    skip = ("runtime", "samples_per_second", "steps_per_second", "preparation_time", "epoch", "loss")
    return not any(part in name for part in skip) or name in ("perplexity",)


# ---- task -------------------------------------------------------------------------------------------
def _task_info(task: str | TaskSpec | None) -> dict[str, Any] | None:
    if task is None:
        return None
    if isinstance(task, str) and task.lower() in ("lm", "perplexity", "causal-lm"):
        return {"name": "lm", "display": "causal language modelling (perplexity)", "dataset": None, "config": None,
                "task_type": "text-generation", "pipeline_tag": "text-generation"}  # fmt: skip
    spec = task if isinstance(task, TaskSpec) else (get_task(task) if _is_glue(task) else TaskSpec.custom(name=str(task)))
    glue = spec.name in GLUE_TASKS and spec.hub_config is not None
    return {
        "name": spec.name,
        "display": f"GLUE {_GLUE_DISPLAY.get(spec.name, spec.name)}" if glue else spec.name,
        "dataset": GLUE_HUB_ID if glue else None,
        "config": spec.hub_config if glue else None,
        "task_type": "text-classification",
        "pipeline_tag": "text-classification",
    }


def _is_glue(task: str) -> bool:
    try:
        get_task(task)
        return True
    except ValueError:
        return False


def _subset(split: str, max_eval_samples: int | None) -> tuple[str, str]:
    """(split as the model-index records it, words for the dataset name) of an eval set cut to its first
    `max_eval_samples` examples: `validation[:200]`, "first 200 validation examples"."""
    if not max_eval_samples:
        return split, ""
    return f"{split}[:{max_eval_samples}]", f"first {max_eval_samples:,} {split} examples"


def _eval_results(
    task: dict[str, Any] | None, metrics_after: dict[str, dict[str, float]], max_eval_samples: int | None = None
) -> list[EvalResult]:
    """model-index entries: this model's (pruned) results, one per split and metric; an eval set cut to its
    first examples says so in the dataset name and the split."""
    if task is None:
        return []
    results = []
    for split, values in metrics_after.items():
        split_name, subset = _subset(split, max_eval_samples)
        for metric, value in values.items():
            if not _is_score(metric) or value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            results.append(
                EvalResult(
                    task_type=task["task_type"],
                    dataset_type=task["dataset"] or task["name"],
                    dataset_name=f"{task['display']} ({subset})" if subset else task["display"],
                    dataset_config=task["config"],
                    dataset_split=split_name,
                    metric_type=metric,
                    metric_name=metric,
                    metric_value=round(float(value), 6),
                )
            )
    return results


# ---- pictures ---------------------------------------------------------------------------------------
def _kept_matrix(record: dict[str, Any]) -> torch.Tensor:
    """[original layers, original heads]: 1 kept, 0 pruned, -1 for a dropped layer."""
    original = record["original"]
    matrix = torch.full((original["num_layers"], original["num_heads"]), -1.0)
    for current, layer in enumerate(record["kept_layers"]):
        matrix[layer] = 0.0
        matrix[layer, record["kept_heads"][current]] = 1.0
    return matrix


def plot_surviving_heads(record: dict[str, Any], path: str | Path) -> None:
    """Heatmap of the original layers x heads: kept, pruned, or in a dropped layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    matrix = _kept_matrix(record).numpy()
    layers, heads = matrix.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * heads + 2), max(2.5, 0.35 * layers + 1.5)))
    colors = ["#d9d9d9", "#f4a582", "#2166ac"]  # dropped layer, pruned head, kept head
    ax.imshow(matrix, cmap=ListedColormap(colors), vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
    ax.set_xlabel("head (original index)")
    ax.set_ylabel("layer (original index)")
    ax.set_xticks(range(heads))
    ax.set_yticks(range(layers))
    ax.set_xticks([x - 0.5 for x in range(1, heads)], minor=True)
    ax.set_yticks([y - 0.5 for y in range(1, layers)], minor=True)
    ax.grid(which="minor", color="white", linewidth=1)
    ax.tick_params(which="minor", length=0)
    kept = int((matrix == 1).sum())
    ax.set_title(f"surviving heads: {kept} of {layers * heads}")
    labels = ["kept head", "pruned head", "dropped layer"]
    ax.legend(handles=[Patch(color=c, label=l) for c, l in zip(colors[::-1], labels)],
              loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_head_importance(
    scores: torch.Tensor, record: dict[str, Any] | None, path: str | Path, title: str = "head importance before pruning"
) -> None:
    """Heatmap of `[num_layers, num_heads]` scores; with a `record`, the heads it no longer has are crossed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers, heads = scores.shape
    matrix = _kept_matrix(record) if record is not None else torch.ones(layers, heads)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * heads + 2.5), max(2.5, 0.35 * layers + 1.5)))
    image = ax.imshow(scores.numpy(), cmap="viridis", aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="importance")
    removed = [(h, l) for l in range(layers) for h in range(heads) if l < matrix.shape[0] and matrix[l, h] != 1]
    if removed:
        ax.scatter(*zip(*removed), marker="x", color="white", s=30, linewidths=1.2, label="removed")
    ax.set_xlabel("head (original index)")
    ax.set_ylabel("layer (original index)")
    ax.set_xticks(range(heads))
    ax.set_yticks(range(layers))
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _importance_tensor(importance: Any) -> torch.Tensor | None:
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


# ---- speed ------------------------------------------------------------------------------------------
def _speed_report(speed: Any):
    """A SpeedReport from a report or its JSON form (old JSON without noise gets the checks its rows allow)."""
    return speed if isinstance(speed, SpeedReport) else SpeedReport.from_dict(speed)


def _speed_info(speed: Any) -> dict[str, Any] | None:
    """A SpeedReport (or its JSON form, `{"device": ..., "rows": [...]}`) as rows ready for the table, with
    the noise verdict: a warning and the reasons when the timing is not trustworthy."""
    if speed is None:
        return None
    report = _speed_report(speed)
    rows = []
    for row in report.rows:
        latency = _fmt(row.get("median_ms"), 2)
        if row.get("p25_ms") is not None and row.get("p75_ms") is not None:
            latency += f" [{row['p25_ms']:.2f}-{row['p75_ms']:.2f}]"
        speedup, ideal = row.get("speedup"), row.get("ideal_speedup")
        rows.append(
            {
                "model": row.get("model", ""),
                "batch_size": row.get("batch_size", ""),
                "seq_len": row.get("seq_len", ""),
                "latency": latency,
                "throughput": _fmt(row.get("throughput"), 1),
                "params": _fmt(row.get("params")),
                "speedup": f"{speedup:.2f}x" if isinstance(speedup, (int, float)) else "n/a",
                "ideal_speedup": f"{ideal:.2f}x" if isinstance(ideal, (int, float)) else "n/a",
                "noise": "**noisy**" if row.get("noise", {}).get("noisy") else "ok",
            }
        )
    return {
        "device": report.device,
        "rows": rows,
        "noisy": report.noisy,
        "noisy_rows": sum(1 for row in report.rows if row.get("noise", {}).get("noisy")),
        "reasons": list(report.noise.get("reasons", [])),
        "advice": NOISE_ADVICE,
    }


def _speed_target_info(report: Mapping[str, Any] | None) -> dict[str, str] | None:
    """The card's sentence parts for a speed target (None without one, or before it was measured)."""
    if not report or report.get("measured_speedup") is None:
        return None
    extra = len(report.get("measurements", [])) - report.get("planned_steps", 1)  # one measurement per step
    verdict = "met" if report["met"] else "missed: the extra pruning steps ran out"
    if extra > 0:
        verdict += f", after {extra} extra pruning step{'s' if extra > 1 else ''} to close the gap"
    return {
        "target": f"{report['target_speedup']:.2f}x",
        "shape": f"{report['batch_size']} x {report['seq_len']}",
        "predicted": f"{report['predicted_speedup']:.2f}x",
        "measured": f"{report['measured_speedup']:.2f}x",
        "verdict": verdict,
    }


def _param_target_info(report: Mapping[str, Any] | None) -> dict[str, str] | None:
    """The card's sentence parts for an allocated parameter budget (None without one)."""
    if not report or report.get("parameters") is None:
        return None
    info = {
        "budget": f"{report['target_param_budget'] * 100:g}%",
        "how": (
            "L0 gates on the heads, FFN neurons and whole attention and MLP blocks, trained with CoFi's Lagrangian; "
            "the least open gates closed"
            if report.get("method") == "l0"
            else "allocated by importance per parameter across layers, heads and FFN neurons"
        ),
        "kept": f"{report['parameters']:,} of {report['dense_parameters']:,} ({report['kept_fraction']:.1%})",
        "width": None,
    }
    steps = [step for step in report.get("steps", []) if step.get("candidates")]
    if report.get("prune_width") and steps:

        def tried(step: Mapping[str, Any]) -> str:
            return ", ".join(
                f"{c['hidden_size']}" + (f" (loss {c['loss']:.4f})" if c.get("loss") is not None else "") for c in step["candidates"]
            )

        widths = tried(steps[0]) if len(steps) == 1 else "; ".join(f"step {n}: {tried(step)}" for n, step in enumerate(steps, 1))
        info["width"] = f"hidden width {report['hidden_size']}, the least loss on the scoring data among the widths tried: {widths}"
    return info


def _speed_json(speed: Any) -> dict[str, Any] | None:
    return None if speed is None else _speed_report(speed).to_dict()


# ---- the card ---------------------------------------------------------------------------------------
def _auto_class(model: nn.Module) -> str:
    name = type(model).__name__
    for suffix, auto in (
        ("ForSequenceClassification", "AutoModelForSequenceClassification"),
        ("ForCausalLM", "AutoModelForCausalLM"),
        ("LMHeadModel", "AutoModelForCausalLM"),
        ("ForMaskedLM", "AutoModelForMaskedLM"),
        ("ForTokenClassification", "AutoModelForTokenClassification"),
        ("ForQuestionAnswering", "AutoModelForQuestionAnswering"),
    ):
        if suffix in name:
            return auto
    return "AutoModel"


_UNIT_LABELS = {"layers": "layers", "heads": "attention heads", "ffn_neurons": "FFN neurons", "parameters": "parameters"}


def _summary(sparsity: dict[str, dict[str, float]]) -> str:
    parts = [
        f"{int(sparsity[unit]['removed']):,} of {int(sparsity[unit]['original']):,} {_UNIT_LABELS[unit]}"
        for unit in ("heads", "ffn_neurons", "layers")
        if sparsity[unit]["removed"]
    ]
    text = "nothing removed" if not parts else (", ".join(parts[:-1]) + " and " if len(parts) > 1 else "") + parts[-1] + " removed"
    if "parameters" in sparsity:
        text += f" ({sparsity['parameters']['sparsity']:.1%} of the parameters)"
    return text


def _metric_table(
    before: dict, after: dict, baselines: dict | None = None, control: dict | None = None
) -> tuple[list[str], list[list[str]]]:
    """`(columns, rows)` of the results table, one row per (split, metric): the majority-class baseline when
    `baselines` has it, the dense value, the dense model given the same training (`control`) when there is one,
    the pruned value, and its change against the dense model (against the control, when there is one)."""
    baselines, control = baselines or {}, control or {}
    columns = ["split", "metric", *(["majority class"] if baselines else []), "dense (before pruning)"]
    columns += ["dense, same training", "pruned", "change vs same training"] if control else ["pruned", "change"]
    rows = []
    for split in dict.fromkeys([*before, *after]):
        names = dict.fromkeys([*before.get(split, {}), *after.get(split, {})])
        for metric in (name for name in names if _is_score(name)):
            b, a = before.get(split, {}).get(metric), after.get(split, {}).get(metric)
            reference = control.get(split, {}).get(metric) if control else b
            delta = f"{a - reference:+.4f}" if isinstance(a, (int, float)) and isinstance(reference, (int, float)) else "n/a"
            row = [split, metric, *([_fmt(baselines.get(split, {}).get(metric))] if baselines else []), _fmt(b)]
            rows.append([*row, *([_fmt(reference)] if control else []), _fmt(a), delta])
    return columns, rows


def _fine_tuning(finetuned_first: bool, pruning: Mapping[str, Any]) -> dict[str, Any]:
    """What training really happened, for the card's wording: a head fine-tuned before pruning, and recovery
    training after it (`recovery_steps`, else `recovery_epochs`, in the settings; absent means none)."""
    epochs = _number(pruning.get("recovery_epochs"))
    steps = _number(pruning.get("recovery_steps"))
    if steps > 0:  # as in PruningArguments, steps override epochs
        words = f"{steps:g} step{'' if steps == 1 else 's'}"
    elif epochs > 0:
        words = f"{epochs:g} epoch{'' if epochs == 1 else 's'}"
    else:
        words = None
    return {"head_first": bool(finetuned_first), "recovery": words is not None, "recovery_words": words}


def _number(value: Any) -> float:
    try:
        return float(value) if value is not None and not isinstance(value, bool) else 0.0
    except (TypeError, ValueError):
        return 0.0


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
    task_info = _task_info(task)
    before, after = _per_split(metrics_before), _per_split(metrics_after)
    majority, control = _per_split(baselines), _per_split(dense_control)
    metric_columns, metric_rows = _metric_table(before, after, majority, control)
    sparsity = sparsity_summary(model, base_num_parameters)
    pruning = dict(pruning or {})
    if max_eval_samples is None:
        max_eval_samples = pruning.get("max_eval_samples")
    hub_id, base_name, base_local = _base_model_ids(base_model, base_model_id)
    name = repo_id or output_dir.name

    plot_surviving_heads(record, output_dir / HEADS_IMAGE)
    scores = _importance_tensor(importance)
    if scores is not None:
        plot_head_importance(scores, record, output_dir / IMPORTANCE_IMAGE)

    card_data = ModelCardData(
        base_model=hub_id,
        datasets=[task_info["dataset"]] if task_info and task_info["dataset"] else None,
        eval_results=_eval_results(task_info, after, max_eval_samples) or None,
        library_name="transformers",
        license=license,
        metrics=sorted({m for values in after.values() for m in values if _is_score(m)}) or None,
        model_name=name,
        pipeline_tag=task_info["pipeline_tag"] if task_info else None,
        tags=list(dict.fromkeys(["hfprune", "pruned", "structured-pruning", *(tags or [])])),
        hfprune={
            "base_model": base_name,
            "sparsity": {unit: round(values["sparsity"], 6) for unit, values in sparsity.items()},
            "stock_loadable": bool(record["stock_loadable"]),
        },
    )
    dropped = sorted(set(range(record["original"]["num_layers"])) - set(record["kept_layers"]))
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path or DEFAULT_TEMPLATE),
        model_name=name,
        base_model=base_name,
        base_local=base_local,
        summary=_summary(sparsity),
        task=task_info,
        training=_fine_tuning(finetuned_first, pruning),
        weak_baseline=weak_baseline,
        eval_subset=f"the first {max_eval_samples:,} examples of each split" if max_eval_samples else None,
        metrics_columns=metric_columns,
        metrics_rows=metric_rows,
        has_baselines=bool(majority),
        dense_control_note=dense_control_note if control else None,
        sparsity_rows=[
            {
                "unit": _UNIT_LABELS[unit],
                "original": _fmt(int(values["original"])),
                "kept": _fmt(int(values["kept"])),
                "removed": _fmt(int(values["removed"])),
                "sparsity": f"{values['sparsity']:.1%}",
            }
            for unit, values in sparsity.items()
        ],
        heads_rows=_heads_rows(record, dropped),
        heads_image=HEADS_IMAGE,
        heads_legend="Blue: kept head, orange: pruned head, grey: dropped layer."
        + (f" Dropped layers: {', '.join(map(str, dropped))}." if dropped else ""),
        importance_image=IMPORTANCE_IMAGE if scores is not None else None,
        importance_source="scored on training examples, never on the evaluation split"
        + (f"; {importance_note}" if importance_note else ""),
        speed=_speed_info(speed),
        speed_target=_speed_target_info(speed_target),
        param_target=_param_target_info(param_target),
        generation_rows=[
            {
                "model": row["model"], "shape": f"{row['batch_size']} x {row['prompt_len']} + {row['new_tokens']}",
                "prefill": f"{row['prefill_tokens_per_s']:,.0f}", "decode": f"{row['decode_tokens_per_s']:,.1f}",
                "prefill_speedup": f"{row['prefill_speedup']:.2f}x", "decode_speedup": f"{row['decode_speedup']:.2f}x",
            }
            for row in generation_speed or ()
        ],  # fmt: skip
        selection_note=selection_note,
        speed_image=SPEED_IMAGE if speed is not None and (checkpoint_dir / SPEED_IMAGE).exists() else None,
        repo_id=name,
        auto_class=_auto_class(model),
        stock_loadable=bool(record["stock_loadable"]),
        remote_code=(checkpoint_dir / REMOTE_CODE_FILE).exists(),
        per_layer_config=_per_layer_fields(model),
        transformers_version=transformers.__version__,
        onnx=_onnx_door(checkpoint_dir),
        pruning={key: _setting(_sanitized(value)) for key, value in pruning.items()},
        command=sanitize_paths(command) if command else None,
        results_file=RESULTS_FILE if (checkpoint_dir / RESULTS_FILE).exists() else None,
        hfprune_version=__version__,
    )
    card = ModelCard(re.sub(r"\n{3,}", "\n\n", str(card)))  # Jinja leaves blank lines where blocks were
    card.save(output_dir / README_FILE)
    return card


def _per_layer_fields(model: nn.Module) -> str | None:
    """What the config's `per_layer_config` sets per layer, in words (None when it has none)."""
    overrides = model.config.to_dict().get("per_layer_config") or {}
    names = sorted({name for entry in overrides.values() for name in entry})
    if not names:
        return None
    words = [f"`{name}`" for name in names]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _onnx_door(checkpoint_dir: Path) -> dict[str, Any] | None:
    """The card's ONNX Runtime lines when the checkpoint holds an export checked by `hfprune export` (in `onnx/`)."""
    report = read_onnx_report(checkpoint_dir / ONNX_DIR)
    if not (checkpoint_dir / ONNX_DIR / ONNX_FILE).is_file() or not report or not report.get("checks"):
        return None
    outputs = report.get("outputs") or ["logits"]
    call = f"session.run(None, {{name: batch[name] for name in {report.get('inputs')!r}}})"
    run = f"{outputs[0]} = {call}[0]" if len(outputs) == 1 else f"{', '.join(outputs)} = {call}"
    shapes = " and ".join(f"{check['batch_size']} x {check['seq_len']}" for check in report["checks"])
    return {"dir": ONNX_DIR, "opset": report.get("opset"), "max_abs_diff": f"{report['max_abs_diff']:.1e}", "shapes": shapes, "run": run}


def _heads_rows(record: dict[str, Any], dropped: list[int]) -> list[dict[str, Any]]:
    """The surviving heads and FFN width of every ORIGINAL layer, dropped layers included."""
    rows = []
    for current, layer in enumerate(record["kept_layers"]):
        heads = record["kept_heads"][current]
        rows.append(
            {
                "layer": layer,
                "count": f"{len(heads)}/{record['original']['num_heads']}",
                "heads": ", ".join(map(str, heads)) if heads else "none (attention removed)",
                "ffn": f"{len(kept_ffn(record, current))}/{record['original']['intermediate_size']}",
            }
        )
    rows += [{"layer": layer, "count": "0", "heads": "layer dropped", "ffn": "0"} for layer in dropped]
    return sorted(rows, key=lambda row: row["layer"])


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
) -> dict[str, Any]:
    """The JSON-safe keyword arguments of `write_model_card`, as stored in `hfprune_results.json`.

    They travel with the checkpoint, so no absolute path is kept: the command and settings are sanitized,
    and a local base model is stored as `./<folder name>` (resolved now, while the path exists, so a later
    re-render cannot mistake the folder name for a Hub id).
    """
    scores = _importance_tensor(importance)
    hub_id, base_name, base_local = _base_model_ids(base_model, base_model_id)
    return {
        "base_model": f"./{base_name}" if base_local else base_name,
        "base_model_id": hub_id,
        "task": task,
        "metrics_before": _per_split(metrics_before),
        "metrics_after": _per_split(metrics_after),
        "baselines": _per_split(baselines),
        "weak_baseline": weak_baseline,
        "dense_control": _per_split(dense_control) or None,
        "dense_control_note": dense_control_note,
        "max_eval_samples": max_eval_samples,
        "speed": _speed_json(speed),
        "speed_target": dict(speed_target) if speed_target else None,
        "param_target": dict(param_target) if param_target else None,
        "selection_note": selection_note,
        "generation_speed": [dict(row) for row in generation_speed] if generation_speed else None,
        "importance": None
        if scores is None
        else [[None if math.isnan(v) else v for v in row] for row in scores.tolist()],
        "command": sanitize_paths(command) if command else None,
        "pruning": {key: _sanitized(value) for key, value in (pruning or {}).items()},
        "base_num_parameters": base_num_parameters,
        "finetuned_first": finetuned_first,
        "repo_id": repo_id,
        "importance_note": importance_note,
    }


def python_call(function: str, *args: Any, **kwargs: Any) -> str:
    """The Python call that reproduces a job, for the card of a job run from Python (None values left out)."""
    arguments = [repr(value) for value in args] + [f"{key}={value!r}" for key, value in kwargs.items() if value is not None]
    return f"{function}({', '.join(arguments)})"


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
        selection_note=(result.selection or {}).get("protocol"),
        importance=result.importance,
        command=command,
        pruning={key: value for key, value in result.settings.items() if value is not None},
        base_num_parameters=base_num_parameters,
        finetuned_first=result.finetuned_first,
        repo_id=repo_id,
        importance_note=(
            "the same scores, on the same training examples, that chose the heads to remove"
            if method == "importance" and schedule == "one_shot"
            else f"for reference: the heads were chosen by {method!r} scores ({schedule.replace('_', '-')} schedule)"
        ),
    )


def _checkpoint_skeleton(checkpoint_dir: Path) -> nn.Module:
    """The checkpoint's model with its pruned shapes on the meta device: all a card needs (structure and
    parameter counts), without reading the weights."""
    from transformers import AutoConfig


    config, _ = convert_v4_config(AutoConfig.from_pretrained(checkpoint_dir))  # its structure in any of its forms
    model_class = _model_class(config)
    prepare_per_layer_config(config, model_class)
    if (getattr(config, PATCH_KEY, None) or {}).get("patch"):
        model_class = restructured_class(model_class)
    with torch.device("meta"):
        return model_class(config)


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
    other pruned checkpoint gets a card of its structure (what was removed, how to load it).

    Only README.md and the PNGs are written: into the checkpoint, or into `output_dir` when given (the
    checkpoint is then only read). The weights are not loaded.
    """
    checkpoint_dir = Path(checkpoint_dir)
    results_path = checkpoint_dir / RESULTS_FILE
    stored = json.loads(results_path.read_text()).get("card", {}) if results_path.exists() else {}
    overrides["base_model_id"] = base_model_id
    kwargs = {**stored, **{key: value for key, value in overrides.items() if value is not None}}
    model = _checkpoint_skeleton(checkpoint_dir)
    return write_model_card(
        model, output_dir or checkpoint_dir, template_path=template_path, checkpoint_dir=checkpoint_dir, **kwargs
    )


def update_card_speed(checkpoint_dir: str | Path, report: Any) -> ModelCard:
    """Store a new `SpeedReport` in a checkpoint (`hfprune_results.json`, `speed.json`, `speed.png`) and
    re-render its card with it, so that a later `hfprune card` keeps the timings and their noise verdict."""
    checkpoint_dir = Path(checkpoint_dir)
    results_path = checkpoint_dir / RESULTS_FILE
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results.setdefault("card", {})["speed"] = report.to_dict()
    results["speed"] = report.to_dict()
    results_path.write_text(json.dumps(results, indent=2) + "\n")
    report.save_json(checkpoint_dir / SPEED_FILE)
    report.plot(checkpoint_dir / SPEED_IMAGE)
    return regenerate_model_card(checkpoint_dir)


def metrics_from_history(history: Sequence[Mapping[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """(before, after) eval metrics from a `PruningTrainer.pruning_history`: step 0 is the model as given,
    the last step the pruned one; `eval_accuracy` becomes `accuracy`."""

    def metrics(entry: Mapping[str, Any]) -> dict[str, float]:
        return {key[len("eval_"):]: value for key, value in entry.items() if key.startswith("eval_")}

    if not history:
        return {}, {}
    return metrics(history[0]), metrics(history[-1])
