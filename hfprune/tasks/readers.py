"""Reading a classification task's examples into a `datasets.Dataset`: a GLUE split from the Hub or from the
original GLUE TSV files, and custom CSV / TSV / JSON(L) files, with their labels parsed into class ids.

It exists so that file formats and label parsing live in one place, apart from the task table (`specs`) and
from what the jobs do with the examples (`task_data`).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from .specs import GLUE_HUB_ID, TaskDataError, TaskSpec, get_task

logger = logging.getLogger(__name__)

__all__ = ["load_files", "load_task"]


def _resolve_split(spec: TaskSpec, split: str) -> str:
    # "validation" means the main eval split, so callers need not special-case MNLI.
    return spec.eval_splits[0] if split == "validation" else split


def _features(spec: TaskSpec) -> Features:
    label = Value("float32") if spec.is_regression else ClassLabel(names=list(spec.label_names))
    return Features({**{c: Value("string") for c in spec.text_columns}, "label": label})


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
            repeated = next((name for i, name in enumerate(header) if name in wanted and name in header[:i]), None)
            if repeated is not None:
                raise TaskDataError(f"{path}: column {repeated!r} appears more than once in the header")
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
            score = float(value)
        except ValueError:
            raise TaskDataError(f"{path}:{line}: label {value!r} is not a number (task {spec.name!r}).") from None
        if not math.isfinite(score):  # "nan" and "inf" parse as floats; no metric means anything over them
            raise TaskDataError(f"{path}:{line}: label {value!r} is not a finite number (task {spec.name!r}).")
        return score
    if value in spec.label_names:
        return spec.label_names.index(value)
    if value.isdigit() and int(value) < spec.num_labels:
        return int(value)
    raise TaskDataError(
        f"{path}:{line}: unknown label {value!r} for task {spec.name!r}; "
        f"expected one of {list(spec.label_names)} or 0..{spec.num_labels - 1}."
    )


# ---- custom CSV / TSV / JSON(L) files ------------------------------------------------------------------------
# Read here rather than by pandas (`Dataset.from_csv`), so that a cell is what the file says: text stays text
# ("007", "NA" and "null" are not numbers or missing values), a header names each column once, and a refusal
# names the place it is about: `path:line` (where the row starts), or `path: row N` for the records of one JSON
# document.

_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl")
_INTEGER = re.compile(r"[+-]?[0-9]+")


@dataclass
class _Table:
    """The wanted columns of one custom file, and where each of its rows starts."""

    path: Path
    columns: dict[str, list[Any]]
    lines: list[int | None]  # None for the records of one JSON document
    delimited: bool  # CSV/TSV: every cell is text

    def where(self, row: int) -> str:
        line = self.lines[row]
        return f"{self.path}:{line}" if line is not None else f"{self.path}: row {row + 1}"

    def place(self, row: int) -> str:
        line = self.lines[row]
        return f"line {line}" if line is not None else f"row {row + 1}"


def _check_columns(text_columns: tuple[str, ...], label_column: str, label_names: Sequence[str] | None) -> None:
    """The columns and label names asked for can describe a task: text columns that are not the label column."""
    if not text_columns:
        raise TaskDataError("no text column given")
    for column in text_columns:
        if column == label_column:
            raise TaskDataError(f"column {column!r} is both a text column and the label column; name a different text column")
    repeated = next((c for i, c in enumerate(text_columns) if c in text_columns[:i]), None)
    if repeated is not None:
        raise TaskDataError(f"text column {repeated!r} is named twice; give one text column or two different ones")
    if len(text_columns) > 2:
        raise TaskDataError(f"at most two text columns (a text or a pair of texts) can be given, not {len(text_columns)}: {list(text_columns)}")
    if label_names is not None:
        repeated = next((n for i, n in enumerate(label_names) if n in label_names[:i]), None)
        if repeated is not None:
            raise TaskDataError(f"label name {repeated!r} is given twice")


def _read_table(path: str | os.PathLike, wanted: Sequence[str]) -> _Table:
    path = Path(path)
    if not path.is_file():
        raise TaskDataError(f"Data file not found: {path}.")
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise TaskDataError(f"{path}: unsupported file type {suffix!r}; expected .csv, .tsv, .json or .jsonl.")
    delimited = suffix in (".csv", ".tsv")
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            if delimited:
                header, records, lines = _read_delimited(path, f, "," if suffix == ".csv" else "\t")
            else:
                header, records, lines = _read_json(path, f.read(), json_lines=suffix == ".jsonl")
    except UnicodeDecodeError as error:
        raise TaskDataError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start}); re-save it as UTF-8") from None
    missing = [c for c in wanted if c not in header]
    if missing:
        raise TaskDataError(f"{path}: missing column(s) {missing}; expected {list(wanted)}, found {header}.")
    if not records:
        raise TaskDataError(f"{path}: no examples")
    return _Table(path, {c: [record.get(c) for record in records] for c in wanted}, lines, delimited)


def _read_delimited(path: Path, f: Any, delimiter: str) -> tuple[list[str], list[dict[str, str]], list[int | None]]:
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))  # a long document is one cell (pandas has no limit)
    reader = csv.reader(f, delimiter=delimiter)
    header: list[str] | None = None
    records: list[dict[str, str]] = []
    lines: list[int | None] = []
    start = 1  # the line the next row starts on
    try:
        for row in reader:
            line, start = start, reader.line_num + 1
            if not row:  # a blank line
                continue
            if header is None:
                header = row
                repeated = next((name for i, name in enumerate(header) if name in header[:i]), None)
                if repeated is not None:
                    raise TaskDataError(f"{path}: column {repeated!r} appears more than once in the header")
                continue
            if len(row) != len(header):
                raise TaskDataError(f"{path}:{line}: {len(row)} fields, but the header has {len(header)}")
            records.append(dict(zip(header, row)))
            lines.append(line)
    except csv.Error as error:
        kind = "CSV" if delimiter == "," else "TSV"
        raise TaskDataError(f"{path}:{reader.line_num}: cannot be read as {kind} ({error})") from None
    return header or [], records, lines


class _RepeatedKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for key, value in pairs:
        if key in record:
            raise _RepeatedKey(key)
        record[key] = value
    return record


def _decode(path: Path, text: str, line: int | None) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except _RepeatedKey as error:
        where = f"{path}:{line}" if line is not None else str(path)
        raise TaskDataError(f"{where}: key {error.args[0]!r} appears more than once in one record") from None


def _read_json(path: Path, text: str, json_lines: bool) -> tuple[list[str], list[dict[str, Any]], list[int | None]]:
    """JSON Lines (one object a line), or one JSON document: a list of objects, or an object of equal-length
    columns (what `Dataset.from_json` reads). A `.json` file that holds JSON Lines is read as such."""
    if not json_lines:
        try:
            document = _decode(path, text, None)
        except json.JSONDecodeError as error:
            if error.msg != "Extra data":  # "Extra data" after the first document: JSON Lines
                raise TaskDataError(f"{path}:{error.lineno}: cannot be read as JSON ({error.msg})") from None
        else:
            if isinstance(document, dict) and document and all(isinstance(v, list) for v in document.values()):
                sizes = sorted({len(v) for v in document.values()})
                if len(sizes) > 1:
                    raise TaskDataError(f"{path}: its columns have different lengths {sizes}")
                document = [dict(zip(document, values)) for values in zip(*document.values())]
            records = document if isinstance(document, list) else [document]
            for i, record in enumerate(records):
                if not isinstance(record, dict):
                    raise TaskDataError(f"{path}: row {i + 1} is {_describe(record)}, not an object of named fields")
            return _keys(records), records, [None] * len(records)
    records, lines = [], []
    for number, line in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028 may sit inside a string
        if not line.strip():
            continue
        try:
            record = _decode(path, line, number)
        except json.JSONDecodeError as error:
            raise TaskDataError(f"{path}:{number}: cannot be read as JSON Lines ({error.msg})") from None
        if not isinstance(record, dict):
            raise TaskDataError(f"{path}:{number}: {_describe(record)}, not an object of named fields")
        records.append(record)
        lines.append(number)
    return _keys(records), records, lines


def _keys(records: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(key for record in records for key in record))


def _describe(value: Any) -> str:
    """What a JSON value is, for a message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    return f"a {type(value).__name__}"


def _texts(table: _Table, column: str) -> list[str]:
    """A text column: a non-empty string in every row."""
    values = table.columns[column]
    for row, value in enumerate(values):
        if value is None:
            raise TaskDataError(f"{table.where(row)}: text column {column!r} is missing (null)")
        if not isinstance(value, str):
            raise TaskDataError(f"{table.where(row)}: text column {column!r} holds {_describe(value)}, not a string")
        if not value.strip():
            raise TaskDataError(f"{table.where(row)}: text column {column!r} is empty")
    return values


@dataclass
class _Labels:
    """One file's labels: numbers (int, float) or strings, and each as its message shows it."""

    table: _Table
    values: list[Any]
    shown: list[str]
    kind: str  # "int", "float" or "string"


def _number(text: str) -> int | float | None:
    if _INTEGER.fullmatch(text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return None


def _read_labels(table: _Table, column: str) -> _Labels:
    """A CSV/TSV label is a number when it reads as one, a JSON label what its type says; one file's labels are
    all numbers or all strings."""
    raw = table.columns[column]
    if table.delimited:
        written = [value.strip() for value in raw]
        numbers = [_number(text) for text in written]
        values: list[Any] = [text if number is None else number for text, number in zip(written, numbers)]
        shown = [str(v) if isinstance(v, int) else repr(text) for v, text in zip(values, written)]
    else:
        values = raw
        for row, value in enumerate(values):
            if value is None or isinstance(value, (bool, list, dict)):
                raise TaskDataError(f"{table.where(row)}: the label is {_describe(value)}, not a number or a string")
        shown = [repr(v) if isinstance(v, str) else str(v) for v in values]
    empty = next((row for row, v in enumerate(values) if isinstance(v, str) and not v.strip()), None)
    if empty is not None:
        raise TaskDataError(f"{table.where(empty)}: the label is empty")
    strings = isinstance(values[0], str)
    odd = next((row for row, v in enumerate(values) if isinstance(v, str) != strings), None)
    if odd is not None:  # a file's labels are one kind: "pos" among class ids is an error, not a new class
        this, that = ("a number", "a string") if strings else ("a string", "a number")
        raise TaskDataError(f"{table.where(odd)}: label {shown[odd]} is {this}, but {table.place(0)}'s label {shown[0]} is {that}")
    if all(isinstance(v, str) for v in values):
        kind = "string"
    else:
        kind = "int" if all(isinstance(v, int) for v in values) else "float"
    return _Labels(table, values, shown, kind)


def _class_names(train: _Labels, label_names: Sequence[str] | None) -> tuple[list[str], str]:
    """The classes of a classification task, and how a message names that set."""
    if label_names is not None:
        names = list(label_names)
        ids = f", i.e. 0..{len(names) - 1}" if train.kind == "int" else ""
        return names, f"the label names given ({names}{ids})"
    source = train.table.path
    if train.kind == "string":
        names = list(dict.fromkeys(train.values))
        return names, f"the labels of {source} ({names})"
    negative = next((row for row, v in enumerate(train.values) if v < 0), None)
    if negative is not None:
        raise TaskDataError(f"{train.table.where(negative)}: label {train.shown[negative]} is not a class id (0, 1, ...)")
    largest = max(train.values)
    return [str(i) for i in range(largest + 1)], f"the labels of {source} (0..{largest})"


def _label_ids(labels: _Labels, train: _Labels, names: list[str], known: str) -> list[int] | list[float]:
    """`labels` (of train or validation) as the task's label ids, each one of train's kind and in its set."""
    table, source = labels.table, train.table.path
    index = {name: i for i, name in enumerate(names)}
    out: list[Any] = []
    for row, value in enumerate(labels.values):
        where, shown = table.where(row), labels.shown[row]
        if train.kind == "float":  # regression: any finite number
            if isinstance(value, str):
                raise TaskDataError(f"{where}: label {shown} is not a number, but the labels of {source} are (a regression task)")
            if not math.isfinite(value):
                raise TaskDataError(f"{where}: label {shown} is not a finite number")
            out.append(float(value))
        elif train.kind == "string":
            if not isinstance(value, str):
                raise TaskDataError(f"{where}: label {shown} is a number, but the labels of {source} are strings ({names})")
            if value not in index:
                raise TaskDataError(f"{where}: unknown label {value!r}, not one of {known}")
            out.append(index[value])
        else:  # class ids
            if isinstance(value, str):
                raise TaskDataError(f"{where}: label {shown} is not a class id, as {known} are")
            if isinstance(value, float):
                if not (math.isfinite(value) and value.is_integer()):
                    raise TaskDataError(f"{where}: label {shown} is not a whole number, so not a class id, as {known} are")
                value = int(value)
            if not 0 <= value < len(names):
                raise TaskDataError(f"{where}: label {value} is not one of {known}")
            out.append(value)
    return out


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
    are kept as ids (0..the largest in train, or one per ``label_names``), float labels make a regression task.
    Build the matching spec with ``TaskSpec.custom(text_columns, dd["train"].features["label"].names)`` (no names
    for regression).

    The train file sets the task: a validation label must be one of its labels and of its kind (a class id, a
    string, or a finite number). Text is a non-empty string in every row, and a header names each column once.
    Anything else raises `TaskDataError`, one line naming the file and the line (``path:line``; ``path: row N``
    in one JSON document).
    """
    text_columns = tuple(text_columns)
    _check_columns(text_columns, label_column, label_names)
    files = {"train": train_file} | ({"validation": validation_file} if validation_file is not None else {})
    wanted = [*text_columns, label_column]
    tables = {split: _read_table(path, wanted) for split, path in files.items()}
    texts = {split: {c: _texts(table, c) for c in text_columns} for split, table in tables.items()}
    labels = {split: _read_labels(table, label_column) for split, table in tables.items()}

    train = labels["train"]
    if train.kind == "float" and label_names is not None:
        raise TaskDataError(
            f"label names were given, but the labels of {train_file} are numbers with fractions (a regression task); "
            "give class ids 0, 1, ... or label strings"
        )
    if train.kind == "float":
        names, known, label_feature = [], "", Value("float32")
    else:
        names, known = _class_names(train, label_names)
        label_feature = ClassLabel(names=names)
    ids = {split: _label_ids(values, train, names, known) for split, values in labels.items()}
    features = Features({**{c: Value("string") for c in text_columns}, "label": label_feature})
    return DatasetDict(
        {split: Dataset.from_dict({**texts[split], "label": ids[split]}, features=features) for split in tables}
    )
