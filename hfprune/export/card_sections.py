"""The model card's sections as its template shows them: tables, sentences and model-index entries.

`card.py` writes the card; this module turns what a card is rendered from (the record, the metrics, the speed
report, the settings) into the strings and rows of each section: the results, what was removed, the speed and
its targets, how to load the model and how it was made.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import transformers
from huggingface_hub import EvalResult
from torch import nn

from ..constants import HEADS_IMAGE, IMPORTANCE_IMAGE, REMOTE_CODE_FILE, RESULTS_FILE, SPEED_IMAGE, __version__
from ..engine.arch import get_adapter
from ..engine.record import kept_ffn
from ..measure.llama_cpp_speed import LlamaCppSpeedReport
from ..measure.noise import NOISE_ADVICE
from ..tasks.specs import GLUE_HUB_ID, GLUE_TASKS, TaskSpec, get_task
from .card_source import sanitize_paths, sanitized, speed_report
from .gguf_layout import FAMILIES
from .onnx import ONNX_DIR, ONNX_FILE, read_onnx_report

__all__ = [
    "eval_results",
    "is_score",
    "loading_section",
    "provenance_section",
    "results_section",
    "speed_section",
    "structure_section",
    "task_info",
]

_GLUE_DISPLAY = {
    "cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "qqp": "QQP", "stsb": "STS-B",
    "mnli": "MNLI", "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI",
}  # fmt: skip


# ---- formatting -------------------------------------------------------------------------------------
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


def is_score(name: str) -> bool:
    """Metric keys worth a row: scores, not Trainer bookkeeping such as runtime or samples per second."""
    skip = ("runtime", "samples_per_second", "steps_per_second", "preparation_time", "epoch", "loss")
    return not any(part in name for part in skip) or name in ("perplexity",)


# ---- task and results -------------------------------------------------------------------------------
def task_info(task: str | TaskSpec | None) -> dict[str, Any] | None:
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


def eval_results(
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
            if not is_score(metric) or value is None or (isinstance(value, float) and math.isnan(value)):
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
        for metric in (name for name in names if is_score(name)):
            b, a = before.get(split, {}), after.get(split, {})
            reference = control.get(split, {}) if control else b
            majority = [_metric_cell(baselines.get(split, {}), metric)] if baselines else []
            row = [split, metric, *majority, _metric_cell(b, metric)]
            cells = [*([_metric_cell(reference, metric)] if control else []), _metric_cell(a, metric)]
            rows.append([*row, *cells, _change(a, reference, metric)])
    return columns, rows


UNDEFINED = "undefined (NaN)"


def _undefined(values: Mapping[str, Any], metric: str) -> bool:
    """A metric that was computed but has no value: NaN (a constant predictor's correlation), or the null that
    NaN is stored as in `hfprune_results.json`. A metric that is absent is not undefined but missing."""
    value = values.get(metric)
    return metric in values and (value is None or (isinstance(value, float) and math.isnan(value)))


def _metric_cell(values: Mapping[str, Any], metric: str) -> str:
    """A metric as the results table shows it: `undefined (NaN)` when it was computed and is undefined, `n/a` when
    it is missing."""
    return UNDEFINED if _undefined(values, metric) else _fmt(values.get(metric))


def _change(after: Mapping[str, Any], reference: Mapping[str, Any], metric: str) -> str:
    """The change of a metric against its reference: `undefined` when either is undefined (never `+nan`), `n/a`
    when either is missing."""
    a, r = after.get(metric), reference.get(metric)
    if _undefined(after, metric) or _undefined(reference, metric):
        return "undefined"
    if isinstance(a, bool) or isinstance(r, bool) or not isinstance(a, (int, float)) or not isinstance(r, (int, float)):
        return "n/a"
    delta = a - r
    return "undefined" if math.isnan(delta) else f"{delta:+.4f}"


def results_section(
    task: dict[str, Any] | None,
    before: dict[str, dict[str, float]],
    after: dict[str, dict[str, float]],
    baselines: dict[str, dict[str, float]],
    control: dict[str, dict[str, float]],
    *,
    weak_baseline: str | None,
    dense_control_note: str | None,
    max_eval_samples: int | None,
) -> dict[str, Any]:
    """The template's results fields: the task, the metrics table (beside the majority-class baseline and the
    dense control, when there are ones), the weak-baseline note and what the eval sets were cut to."""
    columns, rows = _metric_table(before, after, baselines, control)
    return {
        "task": task,
        "weak_baseline": weak_baseline,
        "eval_subset": f"the first {max_eval_samples:,} examples of each split" if max_eval_samples else None,
        "metrics_columns": columns,
        "metrics_rows": rows,
        "has_baselines": bool(baselines),
        "dense_control_note": dense_control_note if control else None,
    }


# ---- what was removed -------------------------------------------------------------------------------
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


def _sparsity_rows(sparsity: dict[str, dict[str, float]]) -> list[dict[str, str]]:
    return [
        {
            "unit": _UNIT_LABELS[unit],
            "original": _fmt(int(values["original"])),
            "kept": _fmt(int(values["kept"])),
            "removed": _fmt(int(values["removed"])),
            "sparsity": f"{values['sparsity']:.1%}",
        }
        for unit, values in sparsity.items()
    ]


def structure_section(
    record: dict[str, Any], sparsity: dict[str, dict[str, float]], *, has_importance: bool, importance_note: str | None
) -> dict[str, Any]:
    """The template's fields on what was removed: the summary line, the sparsity table, the heads and FFN width
    of every original layer, and the heatmaps (`has_importance`: the importance one was drawn)."""
    dropped = sorted(set(range(record["original"]["num_layers"])) - set(record["kept_layers"]))
    return {
        "summary": _summary(sparsity),
        "sparsity_rows": _sparsity_rows(sparsity),
        "heads_rows": _heads_rows(record, dropped),
        "heads_image": HEADS_IMAGE,
        "heads_legend": "Blue: kept head, orange: pruned head, grey: dropped layer."
        + (f" Dropped layers: {', '.join(map(str, dropped))}." if dropped else ""),
        "importance_image": IMPORTANCE_IMAGE if has_importance else None,
        "importance_source": "scored on training examples, never on the evaluation split"
        + (f"; {importance_note}" if importance_note else ""),
    }


# ---- speed ------------------------------------------------------------------------------------------
def _speed_info(speed: Any) -> dict[str, Any] | None:
    """A SpeedReport (or its JSON form, `{"device": ..., "rows": [...]}`) as rows ready for the table, with
    the noise verdict: a warning and the reasons when the timing is not trustworthy."""
    if speed is None:
        return None
    report = speed_report(speed)
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
        "latency": LATENCY_SOURCES["cached" if str(report.get("latency_source", "")).startswith("cached") else "measured"],
    }


LATENCY_SOURCES = {
    "measured": "the latency model measured before pruning",
    "cached": "the latency model measured for this model's shapes in an earlier run on this machine (`latency_cache`)",
}
"""How the card names the latency model a speed target planned with, by where it came from."""


BUDGET_METHODS = {
    "l0": "L0 gates on the heads, FFN neurons and whole attention and MLP blocks, trained with CoFi's Lagrangian; the "
    "least open gates closed",
    "stream": "planned from forward-only activation scores with one layer in memory at a time: the layers and KV "
    "groups asked for, then the same FFN width in every layer",
    None: "allocated by importance per parameter across layers, heads and FFN neurons",
}
"""How a parameter budget was spent, by the `method` of its report, for the card."""


def _param_target_info(report: Mapping[str, Any] | None) -> dict[str, str] | None:
    """The card's sentence parts for an allocated parameter budget (None without one)."""
    if not report or report.get("parameters") is None:
        return None
    info = {
        "budget": f"{report['target_param_budget'] * 100:g}%",
        "how": BUDGET_METHODS.get(report.get("method"), BUDGET_METHODS[None]),
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


def _generation_rows(generation_speed: Sequence[Mapping[str, Any]] | None) -> list[dict[str, str]]:
    """Decoder prefill and decode speed rows (`hfprune.measure_generation_speed`) as the table shows them."""
    return [
        {
            "model": row["model"], "shape": f"{row['batch_size']} x {row['prompt_len']} + {row['new_tokens']}",
            "prefill": f"{row['prefill_tokens_per_s']:,.0f}", "decode": f"{row['decode_tokens_per_s']:,.1f}",
            "prefill_speedup": f"{row['prefill_speedup']:.2f}x", "decode_speedup": f"{row['decode_speedup']:.2f}x",
        }
        for row in generation_speed or ()
    ]  # fmt: skip


def _llama_cpp_speed(report: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The llama.cpp timing (`LlamaCppSpeedReport.to_dict()`) as the card shows it: settings, rows, noise warning."""
    if not report:
        return None
    rows = [
        {
            "model": row["model"], "prefill": f"{row['prefill_tokens_per_s']:,.0f}", "decode": f"{row['decode_tokens_per_s']:,.1f}",
            "prefill_speedup": f"{row['prefill_speedup']:.2f}x", "decode_speedup": f"{row['decode_speedup']:.2f}x",
            "ideal": f"{row['ideal_prefill_speedup']:.2f}x" if row.get("ideal_prefill_speedup") else "",
            "noise": "noisy" if row["noise"]["noisy"] else "ok",
        }
        for row in report["rows"]
    ]  # fmt: skip
    return {**report["settings"], "rows": rows, "warning": LlamaCppSpeedReport(**report).noise_warning()}


def speed_section(
    speed: Any,
    *,
    speed_target: Mapping[str, Any] | None,
    param_target: Mapping[str, Any] | None,
    generation_speed: Sequence[Mapping[str, Any]] | None,
    llama_cpp_speed: Mapping[str, Any] | None,
    selection_note: str | None,
    checkpoint_dir: Path,
) -> dict[str, Any]:
    """The template's speed fields: the timing table with its noise verdict, the speed or parameter target it
    was pruned to, decoder generation speed in PyTorch and in llama.cpp, how a `max_drop` run chose its step, and
    `speed.png` if present."""
    return {
        "llama_cpp_speed": _llama_cpp_speed(llama_cpp_speed),
        "speed": _speed_info(speed),
        "speed_target": _speed_target_info(speed_target),
        "param_target": _param_target_info(param_target),
        "generation_rows": _generation_rows(generation_speed),
        "selection_note": selection_note,
        "speed_image": SPEED_IMAGE if speed is not None and (checkpoint_dir / SPEED_IMAGE).exists() else None,
    }


# ---- loading ----------------------------------------------------------------------------------------
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


def _engines(model: nn.Module, record: dict[str, Any]) -> str:
    """Which engines load this checkpoint, from the saved record's `stock_loadable` (not from how it was pruned).
    Decoders: vLLM, TGI and SGLang with stock shapes only; llama.cpp for the Llama family (`llama` architecture for
    stock shapes, `deci` for per-layer ones). Encoders: transformers or hfprune, and ONNX."""
    adapter, llama_cpp = get_adapter(model), getattr(model.config, "model_type", None) in FAMILIES
    gguf = "llama.cpp (`{}` architecture via `hfprune export --format gguf`{})"
    onnx = "ONNX (`hfprune export --format onnx`)"
    if record["stock_loadable"]:
        engines = ["transformers (no hfprune needed)", "vLLM, TGI, SGLang" if adapter.causal_lm else onnx]
        return ", ".join(engines + ([gguf.format("llama", "")] if llama_cpp else []))
    engines = ["hfprune.from_pretrained", onnx] + ([gguf.format("deci", ", Llama family")] if llama_cpp else [])
    if not adapter.causal_lm:
        return ", ".join(engines)
    hint = ": prune with --uniform for those" if adapter.uniform_heads_in_config else ""
    return ", ".join(engines) + f"; not vLLM/TGI/SGLang{hint}"


def _gguf_door(gguf: Mapping[str, Any] | None, checkpoint_dir: Path) -> dict[str, Any] | None:
    """The card's llama.cpp lines when the checkpoint folder holds the GGUF file `export_gguf` wrote and checked."""
    if not gguf or not (checkpoint_dir / str(gguf.get("file"))).is_file():
        return None
    checked = gguf.get("max_relative_difference")
    check = f"{checked:.1e} of the largest logit" if isinstance(checked, (int, float)) else None
    return {"file": gguf["file"], "dtype": gguf["dtype"], "architecture": gguf["architecture"], "check": check}


def loading_section(
    model: nn.Module, record: dict[str, Any], repo_id: str, checkpoint_dir: Path, gguf: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The template's "how to load it" fields: the repo id, the Auto class, whether stock transformers loads
    it and which engines do, the remote code, `per_layer_config`, and an ONNX or GGUF export when the checkpoint
    holds them."""
    return {
        "repo_id": repo_id,
        "auto_class": _auto_class(model),
        "stock_loadable": bool(record["stock_loadable"]),
        "engines": _engines(model, record),
        "remote_code": (checkpoint_dir / REMOTE_CODE_FILE).exists(),
        "per_layer_config": _per_layer_fields(model),
        "transformers_version": transformers.__version__,
        "onnx": _onnx_door(checkpoint_dir),
        "gguf": _gguf_door(gguf, checkpoint_dir),
    }


# ---- how it was made --------------------------------------------------------------------------------
def _fine_tuning(finetuned_first: bool, pruning: Mapping[str, Any]) -> dict[str, Any]:
    """What training really happened, for the card's wording: a head fine-tuned before pruning, and recovery
    training after it (`recovery_steps`, else `recovery_epochs`, in the settings; absent means none) and the
    precision it ran in ("1 epoch, trained in bf16 mixed precision")."""
    epochs = _number(pruning.get("recovery_epochs"))
    steps = _number(pruning.get("recovery_steps"))
    if steps > 0:  # as in PruningArguments, steps override epochs
        words = f"{steps:g} step{'' if steps == 1 else 's'}"
    elif epochs > 0:
        words = f"{epochs:g} epoch{'' if epochs == 1 else 's'}"
    else:
        words = None
    precision = pruning.get("precision")
    if words is not None and precision in PRECISION_WORDS:  # cards of runs before precision was recorded: nothing
        words += f", trained in {PRECISION_WORDS[precision]}"
    reconstruct = bool(pruning.get("reconstruct"))
    return {"head_first": bool(finetuned_first), "recovery": words is not None, "recovery_words": words, "reconstruct": reconstruct}


PRECISION_WORDS = {"fp32": "fp32", "bf16": "bf16 mixed precision", "fp16": "fp16 mixed precision"}
"""The card's words for the precision a job trained in (its `precision` setting, "auto" already resolved)."""


def _number(value: Any) -> float:
    try:
        return float(value) if value is not None and not isinstance(value, bool) else 0.0
    except (TypeError, ValueError):
        return 0.0


def provenance_section(
    finetuned_first: bool, pruning: Mapping[str, Any], command: str | None, checkpoint_dir: Path
) -> dict[str, Any]:
    """The template's "how it was made" fields: the training that happened, the settings and the command (their
    absolute paths reduced to their last part), and the results file when the checkpoint holds it."""
    return {
        "training": _fine_tuning(finetuned_first, pruning),
        "pruning": {key: _setting(sanitized(value)) for key, value in pruning.items()},
        "command": sanitize_paths(command) if command else None,
        "results_file": RESULTS_FILE if (checkpoint_dir / RESULTS_FILE).exists() else None,
        "hfprune_version": __version__,
    }
