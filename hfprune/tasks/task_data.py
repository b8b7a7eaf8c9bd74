"""Tasks, data loading and metrics for pruning experiments.

Covers GLUE sequence classification (from the Hugging Face Hub or from the original GLUE TSV files),
plain CSV/JSON classification files, and causal language modelling (blocks + perplexity). Every job
names its task the same way (`load_task_data` -> `TaskData`) and is measured the same way (`evaluate_model`).

Metrics are computed with `hfprune.tasks.metrics` (numpy) rather than ``evaluate.load("glue", ...)`` so that they
work offline; the numbers and key names are the same as the official GLUE metric.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from .._validation import check_count
from ..errors import _first_line
from . import metrics

if TYPE_CHECKING:
    from ..progress import Progress

logger = logging.getLogger(__name__)

GLUE_HUB_ID = "nyu-mll/glue"
LM_TASK = "lm"
CUSTOM_TASK = "custom"

__all__ = [
    "CUSTOM_TASK",
    "GLUE_HUB_ID",
    "GLUE_TASKS",
    "LM_TASK",
    "TaskData",
    "TaskDataError",
    "TaskSpec",
    "TsvLayout",
    "compute_metrics",
    "evaluate_model",
    "get_task",
    "lm_blocks",
    "load_files",
    "load_lm_texts",
    "load_task",
    "load_task_data",
    "make_compute_metrics",
    "metric_for_task",
    "perplexity",
    "tokenize_task",
]


class TaskDataError(ValueError):
    """A task name, data file or label that cannot be used as given."""


@dataclass(frozen=True)
class TsvLayout:
    """Where a task's fields live in the original GLUE TSV files.

    Fields are header names, or column indices for files without a header (CoLA).
    """

    files: Mapping[str, str]
    """Split name -> file name inside the task's GLUE directory."""
    text_fields: tuple[str | int, ...]
    """One per entry of ``TaskSpec.text_columns``, in the same order."""
    label_field: str | int
    has_header: bool = True


@dataclass(frozen=True)
class TaskSpec:
    """Everything needed to load, tokenize and score one sequence-classification task.

    ``label_names`` is empty for a regression task (``num_labels == 1``). For GLUE tasks the names are
    in GLUE's own order, so label ids match the Hub dataset and published checkpoints.
    """

    name: str
    text_columns: tuple[str, ...]
    label_names: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ("accuracy",)
    """Metric names returned by :func:`compute_metrics`; the first is the main one."""
    eval_splits: tuple[str, ...] = ("validation",)
    hub_config: str | None = None
    glue_dir: str | None = None
    tsv: TsvLayout | None = field(default=None, repr=False)

    @property
    def is_regression(self) -> bool:
        return not self.label_names

    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.label_names)

    @property
    def main_metric(self) -> str:
        return self.metrics[0]

    @classmethod
    def custom(
        cls,
        text_columns: Sequence[str] = ("text",),
        label_names: Sequence[str] = (),
        name: str = "custom",
        metrics: Sequence[str] | None = None,
    ) -> TaskSpec:
        """Spec for data from :func:`load_files`; leave ``label_names`` empty for regression."""
        if metrics is None:
            metrics = ("pearson", "spearmanr", "combined_score") if not label_names else ("accuracy",)
        return cls(name=name, text_columns=tuple(text_columns), label_names=tuple(label_names), metrics=tuple(metrics))


_DEV = {"train": "train.tsv", "validation": "dev.tsv"}
_PAIR = ("sentence1", "sentence2")

GLUE_TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in [
        TaskSpec(
            name="cola",
            hub_config="cola",
            text_columns=("sentence",),
            label_names=("unacceptable", "acceptable"),
            metrics=("matthews_correlation",),
            glue_dir="CoLA",
            # No header: source, label, original judgement mark, sentence.
            tsv=TsvLayout(_DEV, text_fields=(3,), label_field=1, has_header=False),
        ),
        TaskSpec(
            name="sst2",
            hub_config="sst2",
            text_columns=("sentence",),
            label_names=("negative", "positive"),
            glue_dir="SST-2",
            tsv=TsvLayout(_DEV, text_fields=("sentence",), label_field="label"),
        ),
        TaskSpec(
            name="mrpc",
            hub_config="mrpc",
            text_columns=_PAIR,
            label_names=("not_equivalent", "equivalent"),
            metrics=("f1", "accuracy"),
            glue_dir="MRPC",
            tsv=TsvLayout(_DEV, text_fields=("#1 String", "#2 String"), label_field="Quality"),
        ),
        TaskSpec(
            name="qqp",
            hub_config="qqp",
            text_columns=("question1", "question2"),
            label_names=("not_duplicate", "duplicate"),
            metrics=("f1", "accuracy"),
            glue_dir="QQP",
            tsv=TsvLayout(_DEV, text_fields=("question1", "question2"), label_field="is_duplicate"),
        ),
        TaskSpec(
            name="stsb",
            hub_config="stsb",
            text_columns=_PAIR,
            metrics=("spearmanr", "pearson", "combined_score"),
            glue_dir="STS-B",
            tsv=TsvLayout(_DEV, text_fields=_PAIR, label_field="score"),
        ),
        TaskSpec(
            name="mnli",
            hub_config="mnli",
            text_columns=("premise", "hypothesis"),
            label_names=("entailment", "neutral", "contradiction"),
            eval_splits=("validation_matched", "validation_mismatched"),
            glue_dir="MNLI",
            tsv=TsvLayout(
                {
                    "train": "train.tsv",
                    "validation_matched": "dev_matched.tsv",
                    "validation_mismatched": "dev_mismatched.tsv",
                },
                text_fields=_PAIR,
                label_field="gold_label",
            ),
        ),
        TaskSpec(
            name="qnli",
            hub_config="qnli",
            text_columns=("question", "sentence"),
            label_names=("entailment", "not_entailment"),
            glue_dir="QNLI",
            tsv=TsvLayout(_DEV, text_fields=("question", "sentence"), label_field="label"),
        ),
        TaskSpec(
            name="rte",
            hub_config="rte",
            text_columns=_PAIR,
            label_names=("entailment", "not_entailment"),
            glue_dir="RTE",
            tsv=TsvLayout(_DEV, text_fields=_PAIR, label_field="label"),
        ),
        TaskSpec(
            name="wnli",
            hub_config="wnli",
            text_columns=_PAIR,
            label_names=("not_entailment", "entailment"),
            glue_dir="WNLI",
            tsv=TsvLayout(_DEV, text_fields=_PAIR, label_field="label"),
        ),
    ]
}


def get_task(task: str | TaskSpec) -> TaskSpec:
    """Look a GLUE task up by name ("sst2", "SST-2", "sts-b", ...); a ``TaskSpec`` is returned as is."""
    if isinstance(task, TaskSpec):
        return task
    key = str(task).lower().replace("-", "").replace("_", "")
    if key not in GLUE_TASKS:
        raise TaskDataError(f"Unknown task {task!r}; known tasks: {', '.join(GLUE_TASKS)}.")
    return GLUE_TASKS[key]


def _resolve_split(spec: TaskSpec, split: str) -> str:
    # "validation" means the main eval split, so callers need not special-case MNLI.
    return spec.eval_splits[0] if split == "validation" else split


def _features(spec: TaskSpec) -> Features:
    label = Value("float32") if spec.is_regression else ClassLabel(names=list(spec.label_names))
    return Features({**{c: Value("string") for c in spec.text_columns}, "label": label})


# --------------------------------------------------------------------------------------------------
# GLUE loading
# --------------------------------------------------------------------------------------------------


def load_task(name: str | TaskSpec, data_dir: str | os.PathLike | None = None, split: str = "train") -> Dataset:
    """Load one split of a GLUE task as a ``Dataset`` with the text column(s) and ``label``.

    Without ``data_dir`` the split comes from the Hub (``nyu-mll/glue``). With ``data_dir`` it is read
    from the original GLUE download (``data_dir/SST-2/train.tsv``, ``data_dir/MNLI/dev_matched.tsv``, ...)
    and has the same columns, label ids and features as the Hub version. ``split="validation"`` means
    the task's first eval split (``validation_matched`` for MNLI).
    """
    spec = get_task(name)
    split = _resolve_split(spec, split)
    if data_dir is None:
        ds = datasets.load_dataset(GLUE_HUB_ID, spec.hub_config, split=split)
        return ds.select_columns([*spec.text_columns, "label"])
    if spec.tsv is None or spec.glue_dir is None:
        raise TaskDataError(f"Task {spec.name!r} has no GLUE TSV layout; use load_files() for custom data.")
    if split not in spec.tsv.files:
        raise TaskDataError(
            f"Task {spec.name!r} has no local split {split!r}; available: {', '.join(spec.tsv.files)}."
        )
    return _read_glue_tsv(spec, Path(data_dir) / spec.glue_dir / spec.tsv.files[split])


def _read_glue_tsv(spec: TaskSpec, path: Path) -> Dataset:
    try:
        return _parse_glue_tsv(spec, path)
    except UnicodeDecodeError as error:
        raise TaskDataError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start}); re-save it as UTF-8") from None
    except csv.Error as error:
        raise TaskDataError(f"{path} cannot be parsed as a GLUE TSV file ({error})") from None


def _parse_glue_tsv(spec: TaskSpec, path: Path) -> Dataset:
    layout = spec.tsv
    assert layout is not None
    if not path.is_file():
        raise TaskDataError(f"GLUE file not found: {path} (expected the original GLUE layout for {spec.name!r}).")

    columns: dict[str, list[Any]] = {c: [] for c in spec.text_columns}
    labels: list[int | float] = []
    skipped: list[int] = []
    # utf-8-sig drops MRPC's byte-order mark; QUOTE_NONE keeps quote characters inside sentences (SST-2).
    with path.open(encoding="utf-8-sig", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        first_line = 1
        if layout.has_header:
            header = next(rows, None) or []
            wanted = [*layout.text_fields, layout.label_field]
            missing = [c for c in wanted if c not in header]
            if missing:
                raise TaskDataError(
                    f"{path}: missing column(s) {missing} for task {spec.name!r}; "
                    f"expected {wanted}, header has {header}."
                )
            text_idx = [header.index(c) for c in layout.text_fields]
            label_idx = header.index(layout.label_field)
            first_line = 2
        else:
            text_idx = [int(c) for c in layout.text_fields]
            label_idx = int(layout.label_field)
        width = max(*text_idx, label_idx) + 1

        for line, row in enumerate(rows, start=first_line):
            if not row:
                continue
            if len(row) < width:
                # Same as the Hub loader, which drops rows with missing fields.
                skipped.append(line)
                continue
            for col, i in zip(spec.text_columns, text_idx):
                columns[col].append(row[i])
            labels.append(_parse_label(spec, row[label_idx], path, line))

    if skipped:
        logger.warning(
            "%s: skipped %d row(s) with fewer than %d fields (first at line %d).", path, len(skipped), width, skipped[0]
        )
    if not labels:
        raise TaskDataError(f"{path}: no usable rows for task {spec.name!r} (expected at least {width} fields a row).")
    return Dataset.from_dict({**columns, "label": labels}, features=_features(spec))


def _parse_label(spec: TaskSpec, value: str, path: Path, line: int) -> int | float:
    value = value.strip()
    if spec.is_regression:
        try:
            return float(value)
        except ValueError:
            raise TaskDataError(f"{path}:{line}: label {value!r} is not a number (task {spec.name!r}).") from None
    if value in spec.label_names:
        return spec.label_names.index(value)
    if value.isdigit() and int(value) < spec.num_labels:
        return int(value)
    raise TaskDataError(
        f"{path}:{line}: unknown label {value!r} for task {spec.name!r}; "
        f"expected one of {list(spec.label_names)} or 0..{spec.num_labels - 1}."
    )


# --------------------------------------------------------------------------------------------------
# Custom CSV / JSON files
# --------------------------------------------------------------------------------------------------


def _read_table(path: str | os.PathLike) -> Dataset:
    path = Path(path)
    if not path.is_file():
        raise TaskDataError(f"Data file not found: {path}.")
    suffix = path.suffix.lower()
    readers = {
        ".csv": lambda: Dataset.from_csv(str(path)),
        ".tsv": lambda: Dataset.from_csv(str(path), sep="\t"),
        ".json": lambda: Dataset.from_json(str(path)),
        ".jsonl": lambda: Dataset.from_json(str(path)),
    }
    if suffix not in readers:
        raise TaskDataError(f"{path}: unsupported file type {suffix!r}; expected .csv, .tsv, .json or .jsonl.")
    try:
        return readers[suffix]()
    except Exception as error:  # pandas / pyarrow parser errors, bad encodings: all mean "this file cannot be read"
        text = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise TaskDataError(f"{path} cannot be read as {suffix[1:].upper()} ({text})") from None


def load_files(
    train_file: str | os.PathLike,
    validation_file: str | os.PathLike | None = None,
    text_columns: Sequence[str] = ("text",),
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
) -> DatasetDict:
    """Load classification or regression data from CSV / TSV / JSON(L) files.

    Returns a ``DatasetDict`` with ``train`` (and ``validation``) holding ``text_columns`` and ``label``.
    String labels become class ids in the order of ``label_names``; without ``label_names`` the order is
    that of first appearance in the train file, so pass ``label_names`` to get stable ids. Integer labels
    are kept as ids, float labels make a regression task. Build the matching spec with
    ``TaskSpec.custom(text_columns, dd["train"].features["label"].names)`` (no names for regression).
    """
    files = {"train": train_file} | ({"validation": validation_file} if validation_file is not None else {})
    tables = {split: _read_table(path) for split, path in files.items()}
    wanted = [*text_columns, label_column]
    for split, table in tables.items():
        missing = [c for c in wanted if c not in table.column_names]
        if missing:
            raise TaskDataError(
                f"{files[split]}: missing column(s) {missing}; expected {wanted}, found {table.column_names}."
            )

    dtype = tables["train"].features[label_column]
    dtype = dtype.dtype if isinstance(dtype, Value) else str(dtype)
    raw = {split: table[label_column] for split, table in tables.items()}
    if dtype in ("string", "large_string"):
        names = list(label_names) if label_names is not None else list(dict.fromkeys(raw["train"]))
        label_feature: ClassLabel | Value = ClassLabel(names=names)
        ids = {split: _map_labels(values, names, files[split]) for split, values in raw.items()}
    elif dtype.startswith(("int", "uint")):
        largest = max((max(v, default=-1) for v in raw.values()), default=-1)
        num = len(label_names) if label_names is not None else largest + 1
        names = list(label_names) if label_names is not None else [str(i) for i in range(num)]
        label_feature = ClassLabel(names=names)
        for split, values in raw.items():
            bad = next((i for i, v in enumerate(values) if not 0 <= v < num), None)
            if bad is not None:
                raise TaskDataError(
                    f"{files[split]}: row {bad + 1} has label {values[bad]}, expected 0..{num - 1}."
                )
        ids = raw
    elif dtype.startswith("float"):
        label_feature = Value("float32")
        ids = raw
    else:
        raise TaskDataError(f"{train_file}: label column {label_column!r} has unsupported type {dtype}.")

    features = Features({**{c: Value("string") for c in text_columns}, "label": label_feature})
    return DatasetDict(
        {
            split: Dataset.from_dict(
                {**{c: table[c] for c in text_columns}, "label": ids[split]}, features=features
            )
            for split, table in tables.items()
        }
    )


def _map_labels(values: Sequence[str], names: list[str], path: str | os.PathLike) -> list[int]:
    index = {name: i for i, name in enumerate(names)}
    out = []
    for row, value in enumerate(values, start=1):
        if value not in index:
            raise TaskDataError(f"{path}: row {row} has unknown label {value!r}; expected one of {names}.")
        out.append(index[value])
    return out


# --------------------------------------------------------------------------------------------------
# Tokenization and metrics
# --------------------------------------------------------------------------------------------------


def tokenize_task(dataset: Dataset, tokenizer: Any, spec: str | TaskSpec, max_length: int = 128) -> Dataset:
    """Tokenize the text column(s) (as a pair when there are two) and rename ``label`` to ``labels``.

    All other columns are removed. Padding is left to the collator (``DataCollatorWithPadding``).
    """
    spec = get_task(spec)
    missing = [c for c in (*spec.text_columns, "label") if c not in dataset.column_names]
    if missing:
        raise TaskDataError(f"Dataset is missing column(s) {missing} for task {spec.name!r}.")

    def tokenize(batch: dict[str, list]) -> Any:
        texts = [batch[c] for c in spec.text_columns]
        return tokenizer(*texts, truncation=True, max_length=max_length)

    drop = [c for c in dataset.column_names if c != "label"]
    return dataset.map(tokenize, batched=True, remove_columns=drop).rename_column("label", "labels")


def metric_for_task(name: str | TaskSpec) -> str:
    """Main metric of a task, e.g. for ``TrainingArguments(metric_for_best_model=...)``.

    Follows the BERT paper: F1 for MRPC/QQP, Spearman for STS-B, Matthews for CoLA, accuracy otherwise.
    """
    return get_task(name).main_metric


def compute_metrics(task_name: str | TaskSpec, predictions: Any, labels: Any) -> dict[str, float]:
    """GLUE metrics for a task; ``predictions`` may be class ids, logits, or (for STS-B) scores."""
    spec = get_task(task_name)
    preds = np.asarray(predictions)
    refs = np.asarray(labels)
    if spec.is_regression:
        preds = preds.reshape(-1).astype(np.float64)
        refs = refs.reshape(-1).astype(np.float64)
    elif preds.ndim > 1:
        preds = preds.argmax(axis=-1)

    scorers: dict[str, Callable[[], float]] = {
        "accuracy": lambda: metrics.accuracy(refs, preds),
        "f1": lambda: metrics.binary_f1(refs, preds),
        "matthews_correlation": lambda: metrics.matthews_correlation(refs, preds),
        "pearson": lambda: metrics.pearson(preds, refs),
        "spearmanr": lambda: metrics.spearman(preds, refs),
    }
    results = {name: float(scorers[name]()) for name in spec.metrics if name != "combined_score"}
    if "combined_score" in spec.metrics:
        results["combined_score"] = float(np.mean(list(results.values())))
    return results


def make_compute_metrics(task_name: str | TaskSpec) -> Callable[[Any], dict[str, float]]:
    """A ``compute_metrics`` callable for ``transformers.Trainer`` (takes an ``EvalPrediction``)."""
    spec = get_task(task_name)

    def _compute(eval_pred: Any) -> dict[str, float]:
        preds = eval_pred.predictions
        if isinstance(preds, tuple):  # models that also return hidden states etc.
            preds = preds[0]
        return compute_metrics(spec, preds, eval_pred.label_ids)

    return _compute


# --------------------------------------------------------------------------------------------------
# Language modelling
# --------------------------------------------------------------------------------------------------

_TEXT_SUFFIXES = (".txt", ".text", ".raw")  # in the order a data folder is searched


def load_lm_texts(
    path_or_dataset: str | os.PathLike | Dataset,
    config: str | None = None,
    split: str = "test",
    text_column: str = "text",
) -> list[str]:
    """Texts for language modelling: a plain text file, a ``Dataset``, or a Hub dataset name.

    A text file gives a single text (its whole content). A Hub name is loaded with
    ``datasets.load_dataset(name, config, split=split)``, e.g. ``("Salesforce/wikitext", "wikitext-2-raw-v1")``.
    """
    if isinstance(path_or_dataset, Dataset):
        ds = path_or_dataset
    else:
        path = Path(path_or_dataset)
        if path.is_file():
            return [path.read_text(encoding="utf-8")]
        if path.suffix.lower() in _TEXT_SUFFIXES or path.is_dir():
            raise TaskDataError(f"Text file not found: {path}.")
        ds = datasets.load_dataset(str(path_or_dataset), config, split=split)
    if text_column not in ds.column_names:
        raise TaskDataError(f"Dataset has no column {text_column!r}; columns: {ds.column_names}.")
    return list(ds[text_column])


def lm_blocks(
    texts: Iterable[str], tokenizer: Any, block_size: int = 128, separator: str = "\n\n"
) -> Dataset:
    """Join ``texts`` with ``separator``, tokenize once and cut into full blocks of ``block_size`` tokens.

    This is the usual perplexity protocol for pruning (e.g. WikiText-2 in SparseGPT/Wanda); the last
    partial block is dropped. ``labels`` equal ``input_ids``: the model shifts them itself.
    """
    text = separator.join(texts)
    ids = tokenizer(text, verbose=False)["input_ids"]  # verbose=False: long input is intended here
    n_blocks = len(ids) // block_size
    if n_blocks == 0:
        raise TaskDataError(f"Only {len(ids)} tokens, fewer than one block of {block_size}.")
    blocks = [ids[i * block_size : (i + 1) * block_size] for i in range(n_blocks)]
    return Dataset.from_dict(
        {"input_ids": blocks, "attention_mask": [[1] * block_size] * n_blocks, "labels": blocks}
    ).with_format("torch")


def perplexity(model: torch.nn.Module, dataloader: Iterable[Mapping[str, torch.Tensor]]) -> float:
    """exp(mean next-token NLL) over all predicted tokens of all batches.

    Each batch needs ``input_ids`` and may have ``attention_mask`` and ``labels`` (-100 = ignored);
    NLL is summed per token, so blocks and batches of different sizes are weighted correctly.
    """
    device = getattr(model, "device", None) or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    try:
        with torch.no_grad():
            for batch in dataloader:
                input_ids = batch["input_ids"].to(device)
                mask = batch.get("attention_mask")
                mask = mask.to(device) if mask is not None else None
                labels = batch.get("labels")
                if labels is None:
                    labels = input_ids if mask is None else input_ids.masked_fill(mask == 0, -100)
                labels = labels.to(device)[:, 1:]
                logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1]
                total_nll += torch.nn.functional.cross_entropy(
                    logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum"
                ).item()
                total_tokens += int((labels != -100).sum())
    finally:
        model.train(was_training)
    if total_tokens == 0:
        raise TaskDataError("No tokens to score: the dataloader is empty or every label is -100.")
    return math.exp(total_nll / total_tokens)


# --------------------------------------------------------------------------------------------------
# A task as the jobs see it: found by name, its splits, evaluated on every eval split
# --------------------------------------------------------------------------------------------------

_DATA_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl")


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
        if value is not None:
            check_count(name, value, 1, error=TaskDataError, expected="a positive integer")
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
        except Exception as error:
            if data_dir is not None:  # a local file that exists but cannot be read: say which one
                raise TaskDataError(f"could not read GLUE {spec.name!r} from {data_dir} ({_first_line(error)})") from None
            raise TaskDataError(  # the Hub could not be reached, or the dataset was not found
                f"could not load GLUE {spec.name!r} from the Hub ({_first_line(error)}); "
                "pass --data-dir with the original GLUE TSV files to work offline"
            ) from None
        source = f"GLUE TSV files in {data_dir}" if data_dir is not None else "Hub dataset nyu-mll/glue"

    if train is not None and max_train_samples is not None and max_train_samples < len(train):
        train = train.shuffle(seed=seed).select(range(max_train_samples))
    if max_eval_samples is not None:
        evals = {split: ds.select(range(min(max_eval_samples, len(ds)))) for split, ds in evals.items()}
    return TaskData(spec.name, spec, train, evals, source)


def _collator(tokenizer):
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer)


def _tokenized(data: TaskData, split: Dataset | list[str], tokenizer, max_length: int) -> Dataset:
    if data.is_lm:
        return lm_blocks(split, tokenizer, block_size=max_length)
    return tokenize_task(split, tokenizer, data.spec, max_length=max_length)


def scoring_batches(data: TaskData, tokenizer: Any, *, num_examples: int, batch_size: int, max_length: int) -> list[dict]:
    """The first `num_examples` training examples in batches: what head and layer scores are computed on
    (never the eval splits, which only report)."""
    from torch.utils.data import DataLoader

    if data.train is None:
        raise TaskDataError("scoring needs training examples")
    dataset = _tokenized(data, data.train, tokenizer, max_length)
    dataset = dataset.select(range(min(num_examples, len(dataset))))
    return list(DataLoader(dataset, batch_size=batch_size, collate_fn=None if data.is_lm else _collator(tokenizer)))


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def evaluate_model(
    model: torch.nn.Module,
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
