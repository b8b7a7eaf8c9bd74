"""One call per job: prune a model for a task, evaluate it, drop layers, benchmark, all written atomically.

`prune_for_task` is what `hfprune prune MODEL --task TASK` runs: load the task and the model, fine-tune a
new task head first when the checkpoint has none, evaluate, score, prune and recover with `PruningTrainer`,
evaluate again, time dense vs pruned, and write the checkpoint, its model card and `hfprune_results.json`.
The CLI only parses options and prints; everything here is usable from Python as is.

Bad input (unknown task, missing file or column, a model that does not exist, a sparsity outside [0, 1),
an output directory that already holds something) raises `PipelineInputError` before any heavy work. The
output is built in a temporary directory next to `output_dir` and renamed into place once complete, so a
failed or interrupted run never leaves a half-written checkpoint (or destroys the previous one).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers.trainer_utils import get_last_checkpoint
from torch import nn

from .errors import PruningError
from .tasks import (
    GLUE_TASKS,
    TaskDataError,
    TaskSpec,
    compute_metrics,
    get_task,
    lm_blocks,
    load_files,
    load_lm_texts,
    load_task,
    make_compute_metrics,
    perplexity,
    tokenize_task,
)

logger = logging.getLogger(__name__)

__all__ = [
    "LM_TASK",
    "CUSTOM_TASK",
    "PipelineInputError",
    "PruneResult",
    "TaskData",
    "benchmark_checkpoint",
    "check_output_dir",
    "check_sparsity",
    "drop_layers_for_task",
    "evaluate_model",
    "load_model_for_task",
    "load_task_data",
    "prune_for_task",
    "score_heads",
    "write_atomically",
]

LM_TASK = "lm"
CUSTOM_TASK = "custom"
RESULTS_FILE = "hfprune_results.json"
_DATA_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl")
_TEXT_SUFFIXES = (".txt", ".text", ".raw")

Progress = Callable[[str, int, "int | None"], None]
"""`progress(stage, done, total)`: called as long work advances (`total` None when unknown)."""


class PipelineInputError(ValueError):
    """The job cannot run as asked (bad option, missing file, unknown model...); nothing was written."""


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


# ---- input checks -------------------------------------------------------------------------------------
def check_sparsity(name: str, value: float) -> float:
    """A target fraction must be in [0, 1): removing everything is never a model."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise PipelineInputError(f"{name} must be a fraction in [0, 1), got {value!r}")
    return float(value)


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse an existing non-empty directory (or a file) unless `overwrite`; nothing is touched here."""
    output_dir = Path(output_dir).expanduser()
    if output_dir.exists():
        if not output_dir.is_dir():
            raise PipelineInputError(f"output path {output_dir} exists and is not a directory")
        if any(output_dir.iterdir()) and not overwrite:
            raise PipelineInputError(
                f"output directory {output_dir} is not empty; choose another one or pass overwrite=True (--overwrite)"
            )
    return output_dir


def write_atomically(output_dir: str | os.PathLike, write: Callable[[Path], Any], overwrite: bool = False) -> Any:
    """Run `write(tmp_dir)` in a fresh directory next to `output_dir`, then rename it into place.

    On any failure the temporary directory is removed and `output_dir` is left as it was. With `overwrite`,
    an existing `output_dir` is replaced only after the new one is complete.
    """
    output_dir = check_output_dir(output_dir, overwrite)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        result = write(staging)
        if output_dir.exists():
            old = output_dir.with_name(f".{output_dir.name}.old-{uuid.uuid4().hex[:8]}")
            output_dir.rename(old)
            try:
                staging.rename(output_dir)
            except BaseException:
                old.rename(output_dir)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(output_dir)
        return result
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _resolve_model(model_name_or_path: str):
    """The model's config; a path that does not exist or a Hub id that cannot be resolved is bad input."""
    from transformers import AutoConfig

    from .arch import get_adapter

    path = Path(model_name_or_path).expanduser()
    # A Hub id is "name" or "org/name"; anything else that does not exist locally is a mistyped path.
    looks_local = model_name_or_path.startswith((".", "/", "~")) or model_name_or_path.count("/") > 1
    if looks_local and not path.exists():
        raise PipelineInputError(f"model path {model_name_or_path} does not exist")
    if path.exists() and path.is_dir() and not (path / "config.json").is_file():
        raise PipelineInputError(f"{model_name_or_path} is not a model directory (no config.json)")
    try:
        config = AutoConfig.from_pretrained(str(path) if path.exists() else model_name_or_path)
    except (OSError, ValueError) as error:
        raise PipelineInputError(
            f"cannot load model {model_name_or_path!r}: not a local model directory, and the Hub lookup failed "
            f"({_first_line(error)})"
        ) from None
    try:
        get_adapter(config)
    except PruningError as error:
        raise PipelineInputError(_first_line(error)) from None
    return config


# ---- tasks --------------------------------------------------------------------------------------------
@dataclass
class TaskData:
    """A task's splits, untokenized: `train` and one or more eval sets (MNLI has two)."""

    name: str
    spec: TaskSpec | None  # None for the language-modelling task
    train: Dataset | list[str] | None
    eval: dict[str, Dataset | list[str]]
    source: str

    @property
    def is_lm(self) -> bool:
        return self.spec is None

    @property
    def card_task(self) -> str | TaskSpec:
        return LM_TASK if self.spec is None else (self.spec.name if self.spec.name in GLUE_TASKS else self.spec)


def _find_file(data_dir: Path, stems: Sequence[str], suffixes: Sequence[str]) -> Path | None:
    for stem in stems:
        for suffix in suffixes:
            if (data_dir / f"{stem}{suffix}").is_file():
                return data_dir / f"{stem}{suffix}"
    return None


def load_task_data(
    task: str,
    *,
    data_dir: str | os.PathLike | None = None,
    train_file: str | os.PathLike | None = None,
    validation_file: str | os.PathLike | None = None,
    text_columns: Sequence[str] | None = None,
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 42,
    need_train: bool = True,
) -> TaskData:
    """Load a task by name: a GLUE task (`"sst2"`, `"mnli"`, ...; Hub `nyu-mll/glue`, or the original TSV
    layout under `data_dir`), `"custom"` (CSV/TSV/JSON files with named text and label columns, given as
    `train_file`/`validation_file` or found as `data_dir/train.*` and `data_dir/validation.*`/`dev.*`), or
    `"lm"` (plain text files, scored by perplexity).

    `max_train_samples` takes a seeded random subset of train; `max_eval_samples` the first examples of
    every eval split. Raises `TaskDataError` (a `ValueError`) for any data problem.
    """
    for name, value in (("max_train_samples", max_train_samples), ("max_eval_samples", max_eval_samples)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise TaskDataError(f"{name} must be a positive integer, got {value!r}")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise TaskDataError(f"data directory {data_dir} does not exist")
    key = task.lower().replace("-", "").replace("_", "")

    if key == LM_TASK:
        data_dir = Path(data_dir) if data_dir is not None else None
        if train_file is None and data_dir is not None:
            train_file = _find_file(data_dir, ["train"], _TEXT_SUFFIXES)
        if validation_file is None and data_dir is not None:
            validation_file = _find_file(data_dir, ["validation", "valid", "dev", "test"], _TEXT_SUFFIXES)
        if validation_file is None:
            raise TaskDataError("task 'lm' needs a text file to evaluate on: --validation-file or DATA_DIR/validation.txt")
        train = load_lm_texts(train_file) if need_train and train_file is not None else None
        if need_train and train is None:
            raise TaskDataError("task 'lm' needs a training text file: --train-file or DATA_DIR/train.txt")
        return TaskData(LM_TASK, None, train, {"validation": load_lm_texts(validation_file)}, f"text files ({validation_file})")

    if key == CUSTOM_TASK:
        data_dir = Path(data_dir) if data_dir is not None else None
        if train_file is None and data_dir is not None:
            train_file = _find_file(data_dir, ["train"], _DATA_SUFFIXES)
        if validation_file is None and data_dir is not None:
            validation_file = _find_file(data_dir, ["validation", "dev", "test"], _DATA_SUFFIXES)
        if train_file is None or validation_file is None:
            raise TaskDataError(
                "task 'custom' needs a train and a validation file (CSV/TSV/JSON): --train-file/--validation-file, "
                "or DATA_DIR/train.csv and DATA_DIR/validation.csv"
            )
        columns = tuple(text_columns or ("text",))
        files = load_files(train_file, validation_file, columns, label_column, label_names)
        feature = files["train"].features["label"]
        spec = TaskSpec.custom(columns, getattr(feature, "names", ()), name=CUSTOM_TASK)
        train, evals = files["train"], {"validation": files["validation"]}
        source = f"files {train_file}, {validation_file}"
    else:
        if train_file is not None or validation_file is not None:
            raise TaskDataError(f"--train-file/--validation-file are for task 'custom' or 'lm', not {task!r}")
        try:
            spec = get_task(task)
        except TaskDataError:
            raise TaskDataError(
                f"unknown task {task!r}; choose a GLUE task ({', '.join(GLUE_TASKS)}), 'custom' (CSV/JSON files) or 'lm'"
            ) from None
        try:
            train = load_task(spec, data_dir, "train") if need_train else None
            evals = {split: load_task(spec, data_dir, split) for split in spec.eval_splits}
        except TaskDataError:
            raise
        except Exception as error:  # the Hub could not be reached, or the dataset was not found
            raise TaskDataError(
                f"could not load GLUE {spec.name!r} from the Hub ({_first_line(error)}); "
                "pass --data-dir with the original GLUE TSV files to work offline"
            ) from None
        source = f"GLUE TSV files in {data_dir}" if data_dir is not None else "Hub dataset nyu-mll/glue"

    if train is not None and max_train_samples is not None and max_train_samples < len(train):
        train = train.shuffle(seed=seed).select(range(max_train_samples))
    if max_eval_samples is not None:
        evals = {split: ds.select(range(min(max_eval_samples, len(ds)))) for split, ds in evals.items()}
    return TaskData(spec.name, spec, train, evals, source)


# ---- model --------------------------------------------------------------------------------------------
def load_model_for_task(model_name_or_path: str, data: TaskData, *, config=None, **kwargs) -> tuple[nn.Module, Any, bool]:
    """Load `(model, tokenizer, has_trained_head)` for a task, pruned checkpoints included.

    A sequence-classification model gets `num_labels` and the task's label names; when the checkpoint has
    no classifier for them (a bare encoder such as `bert-base-uncased`, or another label count) a new head
    is initialised and `has_trained_head` is False: fine-tune before trusting any score or metric.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from .loading import from_pretrained

    config = config if config is not None else _resolve_model(model_name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
    except (OSError, ValueError, TypeError) as error:
        raise PipelineInputError(f"cannot load a tokenizer from {model_name_or_path!r} ({_first_line(error)})") from None
    if data.is_lm:
        model = from_pretrained(model_name_or_path, config=config, model_class=AutoModelForCausalLM, **kwargs)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return model, tokenizer, True

    spec = data.spec
    architectures = getattr(config, "architectures", None) or []
    had_head = any(name.endswith("ForSequenceClassification") for name in architectures)
    same_labels = had_head and config.num_labels == spec.num_labels
    if not same_labels:
        config.num_labels = spec.num_labels
    generic = all(str(label).startswith("LABEL_") for label in (config.id2label or {}).values())
    if spec.label_names and (not same_labels or generic):
        config.id2label = dict(enumerate(spec.label_names))
        config.label2id = {name: i for i, name in enumerate(spec.label_names)}
    if spec.is_regression:
        config.problem_type = "regression"
    model, info = from_pretrained(
        model_name_or_path,
        config=config,
        model_class=AutoModelForSequenceClassification,
        output_loading_info=True,
        ignore_mismatched_sizes=True,
        **kwargs,
    )
    new_weights = list(info.get("missing_keys", ())) + list(info.get("mismatched_keys", ()))
    return model, tokenizer, same_labels and not new_weights


def _collator(tokenizer):
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer)


def _tokenized(data: TaskData, split: Dataset | list[str], tokenizer, max_length: int) -> Dataset:
    if data.is_lm:
        return lm_blocks(split, tokenizer, block_size=max_length)
    return tokenize_task(split, tokenizer, data.spec, max_length=max_length)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def evaluate_model(
    model: nn.Module,
    tokenizer: Any,
    data: TaskData,
    *,
    batch_size: int = 64,
    max_length: int = 128,
    progress: Progress | None = None,
    stage: str = "evaluate",
) -> dict[str, dict[str, float]]:
    """`{split: {metric: value}}` on every eval split of the task (GLUE's metrics, or perplexity);
    `progress(f"{stage} {split}", batches done, batches)` follows it."""
    from torch.utils.data import DataLoader

    results: dict[str, dict[str, float]] = {}
    training = model.training
    model.eval()
    try:
        for split, raw in data.eval.items():
            dataset = _tokenized(data, raw, tokenizer, max_length)
            if data.is_lm:
                results[split] = {"perplexity": perplexity(model, DataLoader(dataset, batch_size=max(1, batch_size // 8)))}
                continue
            loader = DataLoader(dataset, batch_size=batch_size, collate_fn=_collator(tokenizer))
            predictions, labels = [], []
            label = f"{stage} {split}"
            with torch.no_grad():
                for step, batch in enumerate(loader, start=1):
                    labels.append(batch.pop("labels"))
                    batch = {key: value.to(_device(model)) for key, value in batch.items()}
                    predictions.append(model(**batch).logits.float().cpu())
                    if progress is not None:
                        progress(label, step, len(loader))
            results[split] = compute_metrics(data.spec, torch.cat(predictions).numpy(), torch.cat(labels).numpy())
    finally:
        model.train(training)
    return results


def score_heads(
    model: nn.Module,
    tokenizer: Any,
    data: TaskData,
    *,
    method: str = "importance",
    num_examples: int = 512,
    batch_size: int = 32,
    max_length: int = 128,
    seed: int = 42,
) -> torch.Tensor:
    """`[num_layers, num_heads]` head scores on the first `num_examples` train examples (never the eval
    split): "importance" (Michel et al. gradient), "taylor", "magnitude", "random" or "ablation"."""
    from torch.utils.data import DataLoader

    from . import scores

    if method == "magnitude":
        return scores.magnitude_head_scores(model)
    if method == "random":
        return scores.random_head_scores(model, seed=seed)
    if data.train is None:
        raise TaskDataError("scoring needs training examples")
    dataset = _tokenized(data, data.train, tokenizer, max_length)
    dataset = dataset.select(range(min(num_examples, len(dataset))))
    collate = None if data.is_lm else _collator(tokenizer)
    loader = list(DataLoader(dataset, batch_size=batch_size, collate_fn=collate))
    if method == "importance":
        return scores.head_importance(model, loader)
    if method == "taylor":
        return scores.taylor_head_scores(model, loader)
    if method == "ablation":
        return scores.head_ablation_scores(model, loader)
    raise PipelineInputError(f"unknown scoring method {method!r}; choose importance, taylor, ablation, magnitude or random")


# ---- training -----------------------------------------------------------------------------------------
def _progress_callback(progress: Progress | None, stage: str):
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            progress(stage, 0, state.max_steps)

        def on_step_end(self, args, state, control, **kwargs):
            progress(stage, state.global_step, state.max_steps)

    return [_Progress()] if progress is not None else []


def _quiet(trainer) -> None:
    """With a progress callback the Trainer's own tqdm bars and log printing only add noise."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)


def _training_kwargs(
    output_dir: Path, *, batch_size: int, learning_rate: float, seed: int, quiet: bool, save_steps: int = 0
) -> dict[str, Any]:
    """Shared arguments; `save_steps > 0` checkpoints training every so many steps (for `resume=True`)."""
    return dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size * 2,
        learning_rate=learning_rate,
        weight_decay=0.01,
        warmup_steps=0.06,
        seed=seed,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        save_total_limit=2 if save_steps else None,
        eval_strategy="no",
        report_to="none",
        logging_steps=50,
        disable_tqdm=quiet,
        dataloader_pin_memory=torch.cuda.is_available(),
    )


def _finetune(model, tokenizer, train: Dataset, data: TaskData, work_dir: Path, *, epochs: float, progress, **kwargs):
    """Train a fresh task head (and the encoder) with a plain `Trainer`: pruning scores and the "before"
    metrics only mean something for a model that solves the task."""
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(num_train_epochs=epochs, **_training_kwargs(work_dir / "finetune", quiet=progress is not None, **kwargs))
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        processing_class=tokenizer,
        data_collator=None if data.is_lm else _collator(tokenizer),
        callbacks=_progress_callback(progress, "fine-tune the task head"),
    )
    if progress is not None:
        _quiet(trainer)
    trainer.train(resume_from_checkpoint=get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None)
    model.eval()
    return model


# ---- resuming an interrupted run ------------------------------------------------------------------------
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
                f"{work_dir} holds an interrupted run: pass --resume (resume=True) to continue it, or delete it"
            )
        work_dir.mkdir(parents=True)
        state_file.write_text(json.dumps(_jsonable(run), indent=2) + "\n")
        return dict(run)
    if not state_file.is_file():
        raise PipelineInputError(f"nothing to resume: no interrupted run in {work_dir}")
    state = json.loads(state_file.read_text())
    differ = sorted(key for key in run if state.get(key) != _jsonable(run[key]))
    if differ:
        raise PipelineInputError(f"the interrupted run in {work_dir} used other settings ({', '.join(differ)}); cannot resume")
    return state


def _save_state(work_dir: Path, state: dict[str, Any]) -> None:
    staging = work_dir / f"{RUN_STATE}.tmp"
    staging.write_text(json.dumps(_jsonable(state), indent=2) + "\n")
    staging.replace(work_dir / RUN_STATE)  # atomic: a kill never leaves half a state file


def _has_pruning_checkpoint(folder: Path) -> bool:
    return any(folder.glob("pruning-step-*/checkpoint-*/trainer_state.json"))


# ---- the main job -------------------------------------------------------------------------------------
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
    speed: Any = None  # hfprune.speed.SpeedReport
    importance: torch.Tensor | None = None
    pruning_history: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "output_dir": str(self.output_dir),
            "base_model": self.base_model,
            "task": self.task,
            "metrics_before": self.metrics_before,
            "metrics_after": self.metrics_after,
            "sparsity": self.sparsity,
            "finetuned_first": self.finetuned_first,
            "speed": _jsonable(self.speed.to_dict()) if self.speed is not None else None,
            "pruning_history": _jsonable(self.pruning_history),
            "settings": _jsonable(self.settings),
            "timings_s": {key: round(value, 2) for key, value in self.timings.items()},
        }


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


def _python_call(model_name_or_path: str, task: str, settings: Mapping[str, Any]) -> str:
    args = ", ".join(f"{key}={value!r}" for key, value in settings.items() if value is not None)
    return f"hfprune.pipeline.prune_for_task({model_name_or_path!r}, {task!r}, {args})"


def prune_for_task(
    model_name_or_path: str,
    task: str,
    *,
    output_dir: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    train_file: str | os.PathLike | None = None,
    validation_file: str | os.PathLike | None = None,
    text_columns: Sequence[str] | None = None,
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
    head_sparsity: float = 0.4,
    ffn_sparsity: float = 0.0,
    layer_sparsity: float = 0.0,
    layer_strategy: str = "top",
    method: str = "importance",
    schedule: str = "one_shot",
    steps: int = 1,
    per_layer: bool = False,
    recovery_epochs: float = 1.0,
    finetune_epochs: float = 1.0,
    learning_rate: float = 5e-5,
    batch_size: int = 32,
    distillation_alpha: float = 0.0,
    score_num_examples: int = 512,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    max_length: int = 128,
    seed: int = 42,
    overwrite: bool = False,
    resume: bool = False,
    save_steps: int = 200,
    bench: bool = True,
    bench_batch_sizes: Sequence[int] = (1, 8, 32),
    bench_threads: int | None = None,
    bench_repeats: int = 10,
    repo_id: str | None = None,
    command: str | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> PruneResult:
    """Prune `model_name_or_path` for `task` end to end and save the result to `output_dir`.

    Steps: load the task (see `load_task_data`) and the model; fine-tune first when the checkpoint has no
    trained head for the task (`finetune_epochs`); evaluate ("before"); score head importance on train
    examples (for the card's heatmap); prune to the targets and recover with `PruningTrainer`
    (`method`, `schedule`, `steps`, `recovery_epochs`, optional distillation from the dense model);
    evaluate ("after"); time dense vs pruned (`bench`); write model, tokenizer, README.md model card,
    heatmaps and `hfprune_results.json` atomically.

    Until it succeeds, the run keeps its state in `work_dir_for(output_dir)`: the fine-tuned model, the "before"
    metrics and scores, and training checkpoints every `save_steps` steps. After a crash or a kill, the same call
    with `resume=True` continues from there (the pruned structure of the last checkpoint is rebuilt before its
    weights load); without `resume`, an interrupted run's directory is refused rather than thrown away.

    Returns:
        A `PruneResult`. Raises `PipelineInputError`/`TaskDataError` (both `ValueError`) for bad input,
        before any model weights are loaded.
    """
    say = log or (lambda message: logger.info(message))
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now

    # -- everything that can be checked cheaply, before any weights are loaded
    head_sparsity = check_sparsity("head sparsity", head_sparsity)
    ffn_sparsity = check_sparsity("FFN sparsity", ffn_sparsity)
    layer_sparsity = check_sparsity("layer sparsity", layer_sparsity)
    if head_sparsity == ffn_sparsity == layer_sparsity == 0.0:
        raise PipelineInputError("nothing to prune: give a head, FFN or layer sparsity above 0")
    for name, value in (("recovery_epochs", recovery_epochs), ("finetune_epochs", finetune_epochs)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise PipelineInputError(f"{name} must be a number >= 0, got {value!r}")
    if not 0.0 <= distillation_alpha <= 1.0:
        raise PipelineInputError(f"distillation_alpha must be in [0, 1], got {distillation_alpha!r}")
    output_dir = check_output_dir(output_dir, overwrite)
    config = _resolve_model(model_name_or_path)
    data = load_task_data(
        task,
        data_dir=data_dir,
        train_file=train_file,
        validation_file=validation_file,
        text_columns=text_columns,
        label_column=label_column,
        label_names=label_names,
        max_train_samples=max_train_samples,
        max_eval_samples=max_eval_samples,
        seed=seed,
    )
    from .trainer import PruningArguments, PruningTrainer  # noqa: F401  (fails early if missing)

    settings = dict(
        method=method,
        schedule=schedule,
        steps=steps,
        head_sparsity=head_sparsity,
        ffn_sparsity=ffn_sparsity,
        layer_sparsity=layer_sparsity,
        layer_strategy=layer_strategy,
        per_layer=per_layer,
        recovery_epochs=recovery_epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        distillation_alpha=distillation_alpha,
        score_num_examples=score_num_examples,
        max_train_samples=max_train_samples,
        max_eval_samples=max_eval_samples,
        max_length=max_length,
        seed=seed,
    )
    if isinstance(save_steps, bool) or not isinstance(save_steps, int) or save_steps < 1:
        raise PipelineInputError(f"save_steps must be a positive integer, got {save_steps!r}")
    work_dir = work_dir_for(output_dir)
    run = {"model": str(model_name_or_path), "task": task, "settings": settings, "finetune_epochs": finetune_epochs}
    # Building the arguments validates method, schedule and steps before the model is loaded.
    try:
        pruning_args = PruningArguments(
            pruning_method=method,
            pruning_schedule=schedule,
            pruning_steps=steps,
            target_head_sparsity=head_sparsity,
            target_ffn_sparsity=ffn_sparsity,
            target_layer_sparsity=layer_sparsity,
            layer_strategy=layer_strategy,
            per_layer_ranking=per_layer,
            score_num_examples=score_num_examples,
            recovery_epochs=recovery_epochs,
            distillation_alpha=distillation_alpha,
            **_training_kwargs(
                work_dir / "prune", batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                quiet=progress is not None, save_steps=save_steps,
            ),
        )  # fmt: skip
    except (ValueError, PruningError) as error:
        raise PipelineInputError(_first_line(error)) from None
    state = _open_work_dir(work_dir, run, resume)
    try:
        lap("check inputs")

        from transformers import set_seed

        set_seed(seed)
        finetuned = work_dir / FINETUNED_DIR
        if state.get("finetuned_first") and finetuned.is_dir():
            say(f"resuming from the fine-tuned model in {finetuned}")
            model, tokenizer, _ = load_model_for_task(str(finetuned), data)
        else:
            say(f"loading {model_name_or_path} for {data.name} ({data.source})")
            model, tokenizer, has_head = load_model_for_task(model_name_or_path, data, config=config)
            state["finetuned_first"] = not has_head
        train = _tokenized(data, data.train, tokenizer, max_length)
        lap("load")

        finetuned_first = state["finetuned_first"]
        if finetuned_first and not finetuned.is_dir():
            if finetune_epochs == 0:
                raise PipelineInputError(
                    f"{model_name_or_path} has no trained head for {data.name}; it needs finetune_epochs > 0"
                )
            say(f"{model_name_or_path} has no trained {data.name} head: fine-tuning it first ({finetune_epochs:g} epoch(s), {len(train)} examples)")
            _finetune(
                model, tokenizer, train, data, work_dir, epochs=finetune_epochs, progress=progress,
                batch_size=batch_size, learning_rate=learning_rate, seed=seed, save_steps=save_steps,
            )  # fmt: skip
            model.save_pretrained(finetuned)
            tokenizer.save_pretrained(finetuned)
            lap("fine-tune head")

        eval_batch = batch_size * 2
        if "metrics_before" in state:
            metrics_before = state["metrics_before"]
        else:
            say("evaluating the dense model")
            metrics_before = evaluate_model(
                model, tokenizer, data, batch_size=eval_batch, max_length=max_length, progress=progress, stage="evaluate dense"
            )
            state["metrics_before"] = metrics_before
            _save_state(work_dir, state)
        lap("evaluate before")

        # The card's importance heatmap is computed on exactly the examples (and batches) the trainer scores on,
        # so for one-shot importance pruning it shows the very scores that chose the heads.
        score_dataset = train.shuffle(seed=seed + 1).select(range(min(score_num_examples, len(train))))
        say(f"scoring head importance on {len(score_dataset)} training examples")
        from torch.utils.data import DataLoader

        from .scores import head_importance

        collate = None if data.is_lm else _collator(tokenizer)
        if (work_dir / IMPORTANCE_FILE).is_file():
            importance = torch.load(work_dir / IMPORTANCE_FILE)
        else:
            importance = head_importance(model, DataLoader(score_dataset, batch_size=eval_batch, collate_fn=collate))
            torch.save(importance, work_dir / IMPORTANCE_FILE)
        lap("score")

        # The dense model stays for timing and as the distillation teacher; the pruned one is edited in place.
        dense = copy.deepcopy(model).eval() if bench or distillation_alpha > 0 else None
        base_parameters = sum(p.numel() for p in model.parameters())
        # The trainer evaluates after every pruning step when given an eval set: worth it only for an iterative
        # schedule (the curve goes into the history); before/after on every split is measured here anyway.
        step_eval = None
        if schedule == "iterative" and steps > 1:
            step_eval = _tokenized(data, next(iter(data.eval.values())), tokenizer, max_length)
        say(f"pruning ({method}, {schedule}) and recovering ({recovery_epochs:g} epoch(s))")
        trainer = PruningTrainer(
            model=model,
            args=pruning_args,
            train_dataset=train,
            eval_dataset=step_eval,
            processing_class=tokenizer,
            data_collator=None if data.is_lm else _collator(tokenizer),
            compute_metrics=None if data.is_lm else make_compute_metrics(data.spec),
            score_dataset=score_dataset,
            teacher_model=dense if distillation_alpha > 0 else None,
            callbacks=_progress_callback(progress, "prune + recover"),
        )
        if progress is not None:
            _quiet(trainer)
        trainer.train(resume_from_checkpoint=True if resume and _has_pruning_checkpoint(work_dir / "prune") else None)
        model = trainer.model.eval()
        history = list(getattr(trainer, "pruning_history", []) or [])
        lap("prune + recover")

        say("evaluating the pruned model")
        metrics_after = evaluate_model(
            model, tokenizer, data, batch_size=eval_batch, max_length=max_length, progress=progress, stage="evaluate pruned"
        )
        lap("evaluate after")

        speed = None
        if bench:
            from .speed import measure_speed

            say("timing dense vs pruned")
            speed_progress = (lambda done, total, row: progress("time dense vs pruned", done, total)) if progress else None
            speed = measure_speed(
                {"dense": dense, "pruned": model},
                batch_sizes=tuple(bench_batch_sizes),
                seq_lengths=(max_length,),
                num_threads=bench_threads,
                repeats=bench_repeats,
                progress=speed_progress,
            )
            lap("time")
        del dense

        from .card import card_inputs, sparsity_summary, write_model_card

        result = PruneResult(
            output_dir=output_dir,
            base_model=model_name_or_path,
            task=data.name,
            metrics_before=metrics_before,
            metrics_after=metrics_after,
            sparsity=sparsity_summary(model, base_parameters),
            finetuned_first=finetuned_first,
            speed=speed,
            importance=importance,
            pruning_history=history,
            settings=settings,
            timings=timings,
        )
        command = command or _python_call(model_name_or_path, task, {"output_dir": str(output_dir), **settings})
        card_kwargs = card_inputs(
            base_model=model_name_or_path,
            task=data.card_task if isinstance(data.card_task, str) else data.name,
            metrics_before=metrics_before,
            metrics_after=metrics_after,
            speed=speed,
            importance=importance,
            command=command,
            pruning={k: v for k, v in settings.items() if v is not None},
            base_num_parameters=base_parameters,
            finetuned_first=finetuned_first,
            repo_id=repo_id or output_dir.name,
            importance_note=(
                "the same scores, on the same training examples, that chose the heads to remove"
                if method == "importance" and schedule == "one_shot"
                else f"for reference: the heads were chosen by {method!r} scores ({schedule.replace('_', '-')} schedule)"
            ),
        )

        def write(folder: Path) -> None:
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            payload = {**result.to_dict(), "output_dir": str(output_dir), "card": card_kwargs}
            (folder / RESULTS_FILE).write_text(json.dumps(_jsonable(payload), indent=2) + "\n")
            if speed is not None:
                speed.save_json(folder / "speed.json")
                speed.plot(folder / "speed.png")
            write_model_card(model, folder, **{**card_kwargs, "task": data.card_task})

        say(f"writing {output_dir}")
        write_atomically(output_dir, write, overwrite=overwrite)
        lap("write")
    except PipelineInputError:
        if not resume:  # bad input found late (e.g. a model without a head and no fine-tuning): nothing to resume
            shutil.rmtree(work_dir, ignore_errors=True)
        raise
    shutil.rmtree(work_dir, ignore_errors=True)  # only now: any failure above leaves it for resume=True
    return result


# ---- the smaller jobs ---------------------------------------------------------------------------------
def drop_layers_for_task(
    model_name_or_path: str,
    output_dir: str | os.PathLike,
    *,
    k: int | None = None,
    layers: Sequence[int] | None = None,
    strategy: str = "top",
    task: str | None = None,
    data_kwargs: Mapping[str, Any] | None = None,
    max_length: int = 128,
    batch_size: int = 32,
    overwrite: bool = False,
    repo_id: str | None = None,
    command: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Drop `k` layers chosen by a Sajjad et al. strategy (or the given original `layers`) and save the
    checkpoint with its card. With a `task`, the model is evaluated before and after (no fine-tuning), and
    the "contribution" strategy scores layers on its training examples."""
    from .loading import from_pretrained
    from .plan import LAYER_STRATEGIES, layers_to_drop
    from .record import get_record
    from .surgery import drop_layers

    if (k is None) == (layers is None):
        raise PipelineInputError("give exactly one of k (with a strategy) and layers")
    if strategy not in LAYER_STRATEGIES:
        raise PipelineInputError(f"unknown strategy {strategy!r}; choose from {', '.join(LAYER_STRATEGIES)}")
    if strategy == "contribution" and task is None:
        raise PipelineInputError("strategy 'contribution' scores layers on data: give a task")
    output_dir = check_output_dir(output_dir, overwrite)
    config = _resolve_model(model_name_or_path)
    data = load_task_data(task, need_train=strategy == "contribution", **(data_kwargs or {})) if task else None

    if data is not None:
        model, tokenizer, _ = load_model_for_task(model_name_or_path, data, config=config)
    else:
        from transformers import AutoTokenizer

        model = from_pretrained(model_name_or_path, config=config)
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
        except (OSError, ValueError, TypeError):
            tokenizer = None
    model.eval()
    kept = get_record(model)["kept_layers"]
    if layers is None:
        scores = None
        if strategy == "contribution":
            from torch.utils.data import DataLoader

            from .scores import layer_cosine_scores

            dataset = _tokenized(data, data.train, tokenizer, max_length).select(range(min(512, len(data.train))))
            loader = list(DataLoader(dataset, batch_size=batch_size, collate_fn=None if data.is_lm else _collator(tokenizer)))
            scores = layer_cosine_scores(model, loader)
            scores = scores[kept] if scores.shape[0] != len(kept) else scores
        try:
            positions = layers_to_drop(len(kept), k, strategy, scores)
        except PruningError as error:
            raise PipelineInputError(_first_line(error)) from None
        layers = [kept[i] for i in positions]
    else:
        unknown = sorted(set(layers) - set(kept))
        if unknown or len(set(layers)) >= len(kept):
            raise PipelineInputError(f"layers {sorted(set(layers))} cannot be dropped: the model has layers {kept}")

    before = evaluate_model(model, tokenizer, data, batch_size=batch_size * 2, max_length=max_length, progress=progress) if data else None
    base_parameters = sum(p.numel() for p in model.parameters())
    drop_layers(model, list(layers))
    after = evaluate_model(model, tokenizer, data, batch_size=batch_size * 2, max_length=max_length, progress=progress) if data else None

    from .card import card_inputs, write_model_card

    card_kwargs = card_inputs(
        base_model=model_name_or_path, task=data.name if data else None, metrics_before=before, metrics_after=after,
        speed=None, importance=None, command=command, pruning={"layers dropped": ", ".join(map(str, sorted(layers))), "strategy": strategy if k is not None else "given"},
        base_num_parameters=base_parameters, finetuned_first=False, repo_id=repo_id or output_dir.name,
    )  # fmt: skip
    summary = {"dropped_layers": sorted(layers), "metrics_before": before, "metrics_after": after}

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        (folder / RESULTS_FILE).write_text(json.dumps(_jsonable({**summary, "card": card_kwargs}), indent=2) + "\n")
        write_model_card(model, folder, **{**card_kwargs, "task": data.card_task if data else None})

    write_atomically(output_dir, write, overwrite=overwrite)
    return summary


def benchmark_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    base_model: str | None = None,
    batch_sizes: Iterable[int] = (1, 8, 32),
    seq_lengths: Iterable[int] = (128,),
    num_threads: int | None = 1,
    repeats: int = 10,
    warmup: int = 3,
    device: str | None = None,
    progress: Progress | None = None,
):
    """Time a pruned checkpoint against its dense original with `hfprune.speed.measure_speed`.

    The dense model is `base_model` when given, else a random-weight model with the original shapes
    (`hfprune.card.unpruned_twin`): timing does not depend on weight values, so no download is needed.
    """
    from .loading import from_pretrained
    from .speed import measure_speed

    checkpoint = Path(checkpoint)
    if not (checkpoint / "config.json").is_file():
        raise PipelineInputError(f"{checkpoint} is not a model directory (no config.json)")
    _resolve_model(str(checkpoint))
    pruned = from_pretrained(checkpoint).eval()
    if base_model is not None:
        config = _resolve_model(base_model)
        stock_class = type(pruned)
        while getattr(stock_class, "_hfprune_restructured", False):
            stock_class = stock_class.__base__
        dense = from_pretrained(base_model, config=config, model_class=stock_class).eval()
    else:
        from .card import unpruned_twin

        dense = unpruned_twin(pruned).to(dtype=next(pruned.parameters()).dtype).eval()
    callback = (lambda done, total, row: progress("time dense vs pruned", done, total)) if progress else None
    try:
        return measure_speed(
            {"dense": dense, "pruned": pruned},
            batch_sizes=tuple(batch_sizes),
            seq_lengths=tuple(seq_lengths),
            num_threads=num_threads,
            repeats=repeats,
            warmup=warmup,
            device=device,
            progress=callback,
        )
    except PruningError as error:
        raise PipelineInputError(_first_line(error)) from None
