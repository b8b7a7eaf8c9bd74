"""What a task is: `TaskSpec` (text columns, labels, metrics, eval splits), the GLUE table with each task's
original TSV layout, and the names of the two tasks that are not GLUE (`custom` files, `lm` text).

It exists apart from the readers and the evaluation so that code which only names a task (the model card,
the baselines) does not import the data loaders; it imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

GLUE_HUB_ID = "nyu-mll/glue"
LM_TASK = "lm"
CUSTOM_TASK = "custom"

__all__ = [
    "CUSTOM_TASK",
    "GLUE_HUB_ID",
    "GLUE_TASKS",
    "LM_TASK",
    "TaskDataError",
    "TaskSpec",
    "TsvLayout",
    "get_task",
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
