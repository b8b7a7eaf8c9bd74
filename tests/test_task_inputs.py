"""Bad task data is refused when it is loaded, in one line that names the file (and the line), never read as
something else (issue 24): non-finite scores, labels outside train's set or of another kind, non-string or empty
text, duplicate columns, a text column that is the label column; and a dense model whose metric is NaN is weak.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import math
from pathlib import Path

import pytest
from cli_fixtures import one_error_line, write_tiny_bert
from datasets import Dataset
from hfprune.cli import app
from typer.testing import CliRunner

from hfprune.errors import WeakBaselineError
from hfprune.io.rundir import work_dir_for
from hfprune.tasks import (
    GLUE_TASKS,
    TaskData,
    TaskDataError,
    check_dense_model,
    load_files,
    load_task,
    load_task_data,
    split_baselines,
    weak_baseline_reason,
)

STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"


def stsb_row(i: int, score: str) -> str:
    return f"{i}\tmain-captions\tMSRvid\t2012test\t{i:04d}\tnone\tnone\tA plane is taking off.\tAn air plane is taking off.\t{score}"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, rows: list) -> Path:
    return write(path, "\n".join(json.dumps(row) for row in rows) + "\n")


def refused(call, *args, **kwargs) -> str:
    """`call` raises a one-line `TaskDataError`; its message."""
    with pytest.raises(TaskDataError) as error:
        call(*args, **kwargs)
    message = str(error.value)
    assert "\n" not in message, message
    return message


# ---- 1. a NaN / inf score is not a label -----------------------------------------------------------------------
@pytest.mark.parametrize("score", ["nan", "NaN", "inf", "-Infinity"])
def test_a_non_finite_stsb_score_is_refused(tmp_path: Path, score: str):
    folder = tmp_path / "STS-B"
    folder.mkdir()
    write(folder / "dev.tsv", "\n".join([STSB_HEADER, stsb_row(0, "5.000"), stsb_row(1, score), stsb_row(2, "1.5")]) + "\n")
    message = refused(load_task, "stsb", data_dir=tmp_path, split="validation")
    assert message.startswith(f"{folder / 'dev.tsv'}:3: label {score!r} is not a finite number")


def test_a_non_finite_custom_regression_label_is_refused(tmp_path: Path):
    train = write(tmp_path / "train.csv", "text,label\na,0.5\nb,inf\nc,2.5\n")
    dev = write(tmp_path / "dev.csv", "text,label\nd,1.5\ne,2.0\n")
    assert refused(load_files, train, dev).startswith(f"{train}:3: label 'inf' is not a finite number")
    write(train, "text,label\na,0.5\nb,4.0\n")
    write(dev, "text,label\nd,1.5\ne,nan\n")
    assert refused(load_files, train, dev).startswith(f"{dev}:3: label 'nan' is not a finite number")
    # JSON's NaN literal (Python's json module reads it) is no better
    train = write(tmp_path / "train.jsonl", '{"text": "a", "label": 0.5}\n{"text": "b", "label": NaN}\n')
    assert refused(load_files, train).startswith(f"{train}:2: label nan is not a finite number")


def test_an_eval_split_whose_scores_are_all_equal_is_refused(tmp_path: Path):
    """A correlation with constant labels is undefined for every model: refused, not reported as NaN."""
    write(tmp_path / "train.csv", "text,label\na,0.5\nb,4.0\n")
    write(tmp_path / "validation.csv", "text,label\nd,2.5\ne,2.5\n")
    message = refused(load_task_data, "custom", data_dir=tmp_path)
    assert "validation" in message and "2.5" in message and "undefined" in message
    write(tmp_path / "validation.csv", "text,label\nd,2.5\ne,3.5\n")
    assert load_task_data("custom", data_dir=tmp_path).eval["validation"]["label"] == [2.5, 3.5]
    with pytest.raises(TaskDataError, match="undefined"):
        load_task_data("custom", data_dir=tmp_path, max_eval_samples=1)  # one example: no correlation either


# ---- 2. a NaN metric of the dense model is weak ----------------------------------------------------------------
def stsb_data(n: int = 40) -> TaskData:
    spec = GLUE_TASKS["stsb"]
    dev = Dataset.from_dict({"sentence1": ["a"] * n, "sentence2": ["b"] * n, "label": [float(i % 6) for i in range(n)]})
    return TaskData("stsb", spec, None, {"validation": dev}, "test")


@pytest.mark.parametrize("undefined", [math.nan, None])  # None: NaN as a resumed run reads it back from its JSON state
def test_a_dense_model_with_an_undefined_correlation_is_weak(undefined):
    data = stsb_data()
    metrics = {"validation": {"spearmanr": undefined, "pearson": undefined, "combined_score": undefined}}
    baselines = {"validation": split_baselines(data.spec, data.eval["validation"]["label"])}
    reason = weak_baseline_reason(data.spec, metrics, baselines, {"validation": 40})
    assert reason is not None and "spearmanr is undefined" in reason and "constant predictions" in reason
    with pytest.raises(WeakBaselineError, match="spearmanr is undefined"):
        check_dense_model(data, metrics)
    _, weak = check_dense_model(data, metrics, allow_weak=True)
    assert weak == reason
    # a model that does learn is still let through
    good = {"validation": {"spearmanr": 0.9, "pearson": 0.9, "combined_score": 0.9}}
    assert check_dense_model(data, good) == (baselines, None)


def test_a_classifier_with_an_undefined_metric_is_weak():
    spec = GLUE_TASKS["mrpc"]
    labels = [0, 1] * 50
    baselines = {"validation": split_baselines(spec, labels)}
    reason = weak_baseline_reason(spec, {"validation": {"f1": math.nan, "accuracy": 0.99}}, baselines, {"validation": 100})
    assert reason is not None and "f1 is undefined" in reason
    reason = weak_baseline_reason(spec, {"validation": {"f1": 0.99, "accuracy": None}}, baselines, {"validation": 100})
    assert reason is not None and "accuracy is undefined" in reason


# ---- 3 and 8. validation labels come from train's set ---------------------------------------------------------
def test_a_validation_class_id_outside_train_is_refused(tmp_path: Path):
    train = write(tmp_path / "train.csv", "text,label\na,0\nb,1\nc,0\n")
    dev = write(tmp_path / "dev.csv", "text,label\nd,1\ne,7\n")
    message = refused(load_files, train, dev)
    assert message.startswith(f"{dev}:3: label 7 is not one of the labels of {train}") and "0..1" in message
    write(dev, "text,label\nd,1\ne,-1\n")
    assert refused(load_files, train, dev).startswith(f"{dev}:3: label -1 is not one of the labels of {train}")
    # with the label names given, they are the set
    message = refused(load_files, train, write(dev, "text,label\nd,2\n"), label_names=("neg", "pos"))
    assert message.startswith(f"{dev}:2: label 2 is not one of the label names given") and "'neg', 'pos'" in message
    assert load_files(train, write(dev, "text,label\nd,1\n"))["validation"].features["label"].names == ["0", "1"]


def test_a_validation_string_label_outside_train_names_the_train_set(tmp_path: Path):
    train = write(tmp_path / "train.csv", "text,label\na,pos\nb,neg\n")
    dev = write(tmp_path / "dev.csv", "text,label\nc,pos\nd,meh\n")
    message = refused(load_files, train, dev)
    assert message.startswith(f"{dev}:3: unknown label 'meh'") and str(train) in message and "['pos', 'neg']" in message


@pytest.mark.parametrize("value", ["0.7", "1.5", "nan"])
def test_a_fractional_validation_label_in_a_classification_task_is_refused(tmp_path: Path, value: str):
    train = write(tmp_path / "train.csv", "text,label\na,0\nb,1\n")
    dev = write(tmp_path / "dev.csv", f"text,label\nc,1\nd,{value}\n")
    message = refused(load_files, train, dev)
    assert message.startswith(f"{dev}:3: label {value!r} is not ") and str(train) in message


def test_a_whole_float_validation_label_is_its_class_id(tmp_path: Path):
    train = jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1}])
    dev = jsonl(tmp_path / "dev.jsonl", [{"text": "c", "label": 1.0}, {"text": "d", "label": 0}])
    assert load_files(train, dev)["validation"]["label"] == [1, 0]


# ---- 6. labels of one kind ----------------------------------------------------------------------------------
def test_integer_and_string_labels_do_not_mix(tmp_path: Path):
    train = write(tmp_path / "train.csv", "text,label\na,0\nb,1\n")
    dev = write(tmp_path / "dev.csv", "text,label\nc,pos\n")
    message = refused(load_files, train, dev)
    assert message == f"{dev}:2: label 'pos' is not a class id, as the labels of {train} (0..1) are"
    train = write(tmp_path / "train.csv", "text,label\na,pos\nb,neg\n")
    dev = write(tmp_path / "dev.csv", "text,label\nc,1\n")
    message = refused(load_files, train, dev)
    assert message.startswith(f"{dev}:2: label 1 is a number") and f"labels of {train} are strings" in message
    # a regression task's labels are numbers
    train = write(tmp_path / "train.csv", "text,label\na,0.5\nb,1.5\n")
    message = refused(load_files, train, write(dev, "text,label\nc,high\n"))
    assert message.startswith(f"{dev}:2: label 'high' is not a number")
    # within one JSON file too
    mixed = jsonl(tmp_path / "mixed.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": "pos"}])
    assert refused(load_files, mixed).startswith(f"{mixed}:2: label 'pos' is a string, but line 1's label 0 is a number")


@pytest.mark.parametrize("label", [True, None, [1], {"y": 1}])
def test_a_json_label_that_is_not_a_number_or_string_is_refused(tmp_path: Path, label):
    train = jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": label}])
    assert refused(load_files, train).startswith(f"{train}:2: the label is ")


def test_an_empty_label_cell_is_refused(tmp_path: Path):
    train = write(tmp_path / "train.csv", "text,label\na,0\nb,\nc,1\n")
    assert refused(load_files, train).startswith(f"{train}:3: the label is empty")


# ---- 4. text is a non-empty string ------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [["a", "list"], {"a": "dict"}, 5, 2.5, True])
def test_a_json_text_that_is_not_a_string_is_refused(tmp_path: Path, value):
    train = jsonl(tmp_path / "train.jsonl", [{"text": "fine", "label": 0}, {"text": value, "label": 1}])
    message = refused(load_files, train)
    assert message.startswith(f"{train}:2: text column 'text' holds") and "not a string" in message


def test_a_json_array_file_names_the_row(tmp_path: Path):
    train = write(tmp_path / "train.json", json.dumps([{"text": "fine", "label": 0}, {"text": ["x"], "label": 1}]))
    assert refused(load_files, train).startswith(f"{train}: row 2: text column 'text' holds a list")


@pytest.mark.parametrize(
    "name, text",
    [
        ("train.csv", "text,label\nfine,0\n,1\n"),
        ("train.tsv", "text\tlabel\nfine\t0\n  \t1\n"),
        ("train.jsonl", '{"text": "fine", "label": 0}\n{"text": null, "label": 1}\n'),
        ("train.jsonl", '{"text": "fine", "label": 0}\n{"label": 1}\n'),
        ("train.jsonl", '{"text": "fine", "label": 0}\n{"text": "", "label": 1}\n'),
    ],
)
def test_an_empty_or_missing_text_is_refused(tmp_path: Path, name: str, text: str):
    train = write(tmp_path / name, text)
    line = 2 if name == "train.jsonl" else 3  # JSON Lines has no header line
    message = refused(load_files, train)
    assert message.startswith(f"{train}:{line}: text column 'text' is ") and ("empty" in message or "missing" in message)


def test_csv_text_is_kept_as_written(tmp_path: Path):
    """Text that looks like a number or like pandas' missing-value markers is text."""
    train = write(tmp_path / "train.csv", 'text,label\nNA,0\n007,1\n"two\nlines, quoted",0\nnull,1\n')
    dd = load_files(train)
    assert dd["train"]["text"] == ["NA", "007", "two\nlines, quoted", "null"] and dd["train"]["label"] == [0, 1, 0, 1]


def test_line_numbers_count_multi_line_cells(tmp_path: Path):
    train = write(tmp_path / "train.csv", 'text,label\n"one\ntwo\nthree",0\nok,1\n\nbad,pos\n')
    message = refused(load_files, train)
    assert message.startswith(f"{train}:7: label 'pos' is a string, but line 2's label 0 is a number")


# ---- 5. one column, one name ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, sep", [("train.csv", ","), ("train.tsv", "\t")])
def test_a_duplicate_column_name_is_refused(tmp_path: Path, name: str, sep: str):
    train = write(tmp_path / name, sep.join(["text", "label", "text"]) + "\n" + sep.join(["a", "0", "b"]) + "\n")
    assert refused(load_files, train) == f"{train}: column 'text' appears more than once in the header"


def test_a_duplicate_json_key_is_refused(tmp_path: Path):
    train = write(tmp_path / "train.jsonl", '{"text": "a", "label": 0}\n{"text": "b", "text": "c", "label": 1}\n')
    assert refused(load_files, train).startswith(f"{train}:2: key 'text' appears more than once")


def test_a_row_with_the_wrong_number_of_fields_is_refused(tmp_path: Path):
    train = write(tmp_path / "train.csv", "text,label\na,0\nb,1,extra\n")
    assert refused(load_files, train) == f"{train}:3: 3 fields, but the header has 2"


def test_a_file_without_examples_is_refused(tmp_path: Path):
    train = write(tmp_path / "train.csv", "text,label\na,0\nb,1\n")
    dev = write(tmp_path / "dev.csv", "text,label\n")
    assert refused(load_files, train, dev) == f"{dev}: no examples"


# ---- 7. the text columns and the label column are different columns ------------------------------------------
@pytest.mark.parametrize(
    "text_columns, label_column, expected",
    [
        (("label",), "label", "'label' is both a text column and the label column"),
        (("text", "label"), "label", "'label' is both a text column and the label column"),
        (("text", "text"), "label", "text column 'text' is named twice"),
        (("text", "a", "b"), "label", "at most two text columns"),
    ],
)
def test_text_and_label_columns_must_differ(tmp_path: Path, text_columns, label_column, expected):
    write(tmp_path / "train.csv", "text,a,b,label\nx,y,z,0\nx,y,z,1\n")
    write(tmp_path / "validation.csv", "text,a,b,label\nx,y,z,0\n")
    assert expected in refused(load_files, tmp_path / "train.csv", text_columns=text_columns, label_column=label_column)
    assert expected in refused(load_task_data, "custom", data_dir=tmp_path, text_columns=text_columns, label_column=label_column)


def test_a_label_name_given_twice_is_refused(tmp_path: Path):
    train = write(tmp_path / "train.csv", "text,label\na,pos\n")
    assert "'pos' is given twice" in refused(load_files, train, label_names=("pos", "pos"))
    train = write(tmp_path / "train.csv", "text,label\na,0.5\nb,1.0\n")
    assert "regression" in refused(load_files, train, label_names=("neg", "pos"))


# ---- the command line: exit 2, one line, nothing written, no work folder --------------------------------------
BAD_INPUTS = {
    "nan score": ("train.csv", "text,label\na,0.5\nb,4.5\n", "dev.csv", "text,label\nc,1.5\nd,nan\n", [], "not a finite number"),
    "dev label 7": ("train.csv", "text,label\na,0\nb,1\n", "dev.csv", "text,label\nc,7\n", [], "label 7 is not one of the labels"),
    "list text": ("train.jsonl", '{"text": ["x"], "label": 0}\n', "dev.jsonl", '{"text": "y", "label": 0}\n', [], "holds a list"),
    "duplicate column": ("train.csv", "text,text,label\na,b,0\n", "dev.csv", "text,label\nc,0\n", [], "appears more than once"),
    "int vs string": ("train.csv", "text,label\na,0\nb,1\n", "dev.csv", "text,label\nc,pos\n", [], "is not a class id"),
    "text is label": ("train.csv", "text,label\na,0\nb,1\n", "dev.csv", "text,label\nc,0\n", ["--text-column", "label"], "both a text column"),
    "dev label 0.7": ("train.csv", "text,label\na,0\nb,1\n", "dev.csv", "text,label\nc,0.7\n", [], "label '0.7' is not"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_the_cli_refuses_bad_task_data_before_any_work(tmp_path_factory, tmp_path: Path, case: str):
    bert = tmp_path_factory.getbasetemp() / "task-inputs-bert"
    if not (bert / "config.json").is_file():
        write_tiny_bert(bert)
    train_name, train_text, dev_name, dev_text, extra, expected = BAD_INPUTS[case]
    train, dev = write(tmp_path / train_name, train_text), write(tmp_path / dev_name, dev_text)
    output = tmp_path / "out"
    args = ["prune", bert, "--task", "custom", "--train-file", train, "--validation-file", dev, *extra, "-o", output, "--heads", "0.5", "--no-bench", "--quiet"]
    stderr = one_error_line(CliRunner().invoke(app, [str(arg) for arg in args]))
    assert expected in stderr, stderr
    assert not output.exists() and not work_dir_for(output).exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted({train_name, dev_name})
