"""A task as the jobs see it: found by name (`load_task_data` -> `TaskData`: train and eval splits),
tokenized, and cut into the batches that importance scores are computed on.

Every job names its task the same way, whether GLUE (`readers`), custom CSV/TSV/JSON files (`readers`) or
plain text for language modelling (`lm`); `evaluate` measures it the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset

from .._validation import check_count
from ..errors import first_line
from .lm import TEXT_SUFFIXES, lm_blocks, load_lm_texts
from .readers import load_files, load_task
from .specs import CUSTOM_TASK, GLUE_TASKS, LM_TASK, TaskDataError, TaskSpec, get_task

__all__ = ["TaskData", "load_task_data", "tokenize_task"]

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

    def fingerprint(self) -> str:
        """sha256 of every example of every split as loaded (texts and labels, in order): a run's data identity,
        so that resuming it with other data files (or the same paths with other contents) is refused."""
        digest = hashlib.sha256()
        for name, split in [("train", self.train), *sorted(self.eval.items())]:
            digest.update(f"\0split {name}\0".encode())
            if split is None:
                continue
            rows = split if isinstance(split, list) else split.to_list()
            for row in rows:
                digest.update(json.dumps(row, sort_keys=True, default=str).encode() + b"\n")
        return digest.hexdigest()

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
            train_file = _find_file(data_dir, ["train"], TEXT_SUFFIXES)
        if validation_file is None and data_dir is not None:
            validation_file = _find_file(data_dir, ["validation", "valid", "dev", "test"], TEXT_SUFFIXES)
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
                raise TaskDataError(f"could not read GLUE {spec.name!r} from {data_dir} ({first_line(error)})") from None
            raise TaskDataError(  # the Hub could not be reached, or the dataset was not found
                f"could not load GLUE {spec.name!r} from the Hub ({first_line(error)}); "
                "pass --data-dir with the original GLUE TSV files to work offline"
            ) from None
        source = f"GLUE TSV files in {data_dir}" if data_dir is not None else "Hub dataset nyu-mll/glue"

    if train is not None and max_train_samples is not None and max_train_samples < len(train):
        train = train.shuffle(seed=seed).select(range(max_train_samples))
    if max_eval_samples is not None:
        evals = {split: ds.select(range(min(max_eval_samples, len(ds)))) for split, ds in evals.items()}
    if spec.is_regression:
        for split, ds in evals.items():
            _check_scores_vary(ds, validation_file if key == CUSTOM_TASK else f"GLUE {spec.name!r} {split}", max_eval_samples)
    return TaskData(spec.name, spec, train, evals, source)


def _check_scores_vary(dataset: Dataset, where: Any, max_eval_samples: int | None) -> None:
    """A regression task is scored by correlations, which are undefined (NaN) for any model on an eval split whose
    labels are all equal (or that has one example): refused here rather than reported as NaN."""
    labels = dataset["label"]
    if len(set(labels)) < 2:
        first = f" (the first {len(labels)}: max_eval_samples)" if max_eval_samples is not None else ""
        raise TaskDataError(
            f"{where}: every label is {labels[0]:g} ({len(labels)} example(s){first}); "
            "a correlation with them is undefined for any model"
        )


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


def padding_collator(tokenizer: Any) -> Any:
    """`DataCollatorWithPadding`: pads a classification batch to its longest example."""
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer)


def tokenize_split(data: TaskData, split: Dataset | list[str], tokenizer: Any, max_length: int) -> Dataset:
    """One split of `data` tokenized: blocks of `max_length` tokens for `lm`, else `tokenize_task`."""
    if data.is_lm:
        return lm_blocks(split, tokenizer, block_size=max_length)
    return tokenize_task(split, tokenizer, data.spec, max_length=max_length)


def scoring_batches(data: TaskData, tokenizer: Any, *, num_examples: int, batch_size: int, max_length: int) -> list[dict]:
    """The first `num_examples` training examples in batches: what head and layer scores are computed on
    (never the eval splits, which only report)."""
    from torch.utils.data import DataLoader

    if data.train is None:
        raise TaskDataError("scoring needs training examples")
    dataset = tokenize_split(data, data.train, tokenizer, max_length)
    dataset = dataset.select(range(min(num_examples, len(dataset))))
    collate = None if data.is_lm else padding_collator(tokenizer)
    return list(DataLoader(dataset, batch_size=batch_size, collate_fn=collate))
