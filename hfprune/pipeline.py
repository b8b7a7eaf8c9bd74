"""One call per job: prune a model for a task, evaluate it, drop layers, benchmark, all written atomically.

`prune_for_task` is what `hfprune prune MODEL --task TASK` runs: load the task and the model, fine-tune a
new task head first when the checkpoint has none, evaluate, score, prune and recover with `PruningTrainer`,
evaluate again, time dense vs pruned, and write the checkpoint, its model card and `hfprune_results.json`.
The CLI only parses options and prints; everything here is usable from Python as is. What the jobs share
lives beside them: task data and evaluation in `tasks`, model loading in `checkpoint`, fine-tuning and the
Trainer arguments in `finetune`, the resume state in `rundir`.

Bad input (unknown task, missing file or column, a model that does not exist, a sparsity outside [0, 1),
an output directory that already holds something) raises `PipelineInputError` before any heavy work. The
output is built in a temporary directory next to `output_dir` and renamed into place once complete, so a
failed or interrupted run never leaves a half-written checkpoint (or destroys the previous one).
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .baselines import task_baselines, weak_baseline_reason
from .callbacks import Progress, progress_callbacks
from .checkpoint import ModelSource, load_model_for_task, load_tokenizer, resolve_model
from .constants import DATA_FREE_METHODS, RESULTS_FILE, SCORING_METHODS, SPEED_FILE, SPEED_IMAGE, choices
from .errors import PipelineInputError, PruningError, WeakBaselineError, _first_line
from .finetune import (  # noqa: F401  (default_finetune_epochs, micro_batches, validation_slice: old import path)
    _finetune,
    _quiet,
    _training_kwargs,
    default_finetune_epochs,
    micro_batches,
    release_memory,
    validation_slice,
)
from .output import check_output_dir, write_atomically
from .rundir import (  # noqa: F401  (work_dir_for: old import path)
    FINETUNED_DIR,
    IMPORTANCE_FILE,
    _has_pruning_checkpoint,
    _jsonable,
    _open_work_dir,
    _save_folder,
    _save_state,
    work_dir_for,
)
from .tasks import (  # noqa: F401  (TaskData, load_task_data, evaluate_model: old import path)
    CUSTOM_TASK,
    LM_TASK,
    TaskData,
    TaskDataError,
    _collator,
    _tokenized,
    evaluate_model,
    load_task_data,
    make_compute_metrics,
)

logger = logging.getLogger(__name__)

__all__ = [
    "LM_TASK",
    "CUSTOM_TASK",
    "PipelineInputError",
    "PruneResult",
    "TaskData",
    "WeakBaselineError",
    "benchmark_checkpoint",
    "check_output_dir",
    "check_sparsity",
    "default_finetune_epochs",
    "drop_layers_for_task",
    "evaluate_model",
    "load_model_for_task",
    "load_task_data",
    "micro_batches",
    "prune_for_task",
    "score_heads",
    "validation_slice",
    "work_dir_for",
    "write_atomically",
]


# ---- input checks -------------------------------------------------------------------------------------
def check_sparsity(name: str, value: float) -> float:
    """A target fraction must be in [0, 1): removing everything is never a model."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise PipelineInputError(f"{name} must be a fraction in [0, 1), got {value!r}")
    return float(value)


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
    split), by one of `SCORING_METHODS`: "importance" (Michel et al. gradient), "taylor", "ablation",
    "magnitude" or "random" (see `hfprune.scores.score_units`)."""
    from torch.utils.data import DataLoader

    from .scores import score_units

    if method not in SCORING_METHODS:
        raise PipelineInputError(f"unknown scoring method {method!r}; choose {choices(SCORING_METHODS)}")
    if method in DATA_FREE_METHODS:
        return score_units(model, method, ("heads",), seed=seed)["heads"]
    if data.train is None:
        raise TaskDataError("scoring needs training examples")
    dataset = _tokenized(data, data.train, tokenizer, max_length)
    dataset = dataset.select(range(min(num_examples, len(dataset))))
    collate = None if data.is_lm else _collator(tokenizer)
    loader = list(DataLoader(dataset, batch_size=batch_size, collate_fn=collate))
    return score_units(model, method, ("heads",), loader, seed=seed)["heads"]


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
    baselines: dict[str, dict[str, dict[str, float]]] | None = None  # {split: {"majority"|"chance": metrics}}
    weak_baseline: str | None = None  # why the dense model is not clearly above them (None: it is)
    finetune: dict[str, Any] | None = None  # epochs, steps and best validation score of the head's fine-tuning
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
            "speed": _jsonable(self.speed.to_dict()) if self.speed is not None else None,
            "pruning_history": _jsonable(self.pruning_history),
            "settings": _jsonable(self.settings),
            "timings_s": {key: round(value, 2) for key, value in self.timings.items()},
            "baselines": _jsonable(self.baselines),
            "weak_baseline": self.weak_baseline,
            "finetune": _jsonable(self.finetune),
            "dry_run": self.dry_run,
        }


def _python_call(model_name_or_path: str, task: str, settings: Mapping[str, Any]) -> str:
    args = ", ".join(f"{key}={value!r}" for key, value in settings.items() if value is not None)
    return f"hfprune.pipeline.prune_for_task({model_name_or_path!r}, {task!r}, {args})"


def _check_device(device: str | None) -> str | None:
    """`None` (the GPU when there is one), "cpu", "cuda", "cuda:N" or "mps", checked before any work."""
    if device is None:
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise PipelineInputError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cuda" and (not torch.cuda.is_available() or (parsed.index or 0) >= torch.cuda.device_count()):
        raise PipelineInputError(f"device {device!r} is not available here (CUDA devices: {torch.cuda.device_count()})")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise PipelineInputError("device 'mps' is not available here")
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise PipelineInputError(f"unsupported device {device!r}; use cpu, cuda, cuda:N or mps")
    return str(parsed)


def _config_has_head(config: Any, data: TaskData) -> bool:
    """Whether the checkpoint's config declares a trained classifier for this task (no weights are read)."""
    if data.is_lm:
        return True
    architectures = getattr(config, "architectures", None) or []
    return any(name.endswith("ForSequenceClassification") for name in architectures) and config.num_labels == data.spec.num_labels


def _eval_labels(data: TaskData) -> dict[str, list]:
    return {split: list(dataset["label"]) for split, dataset in data.eval.items()}


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
    gguf_file: str | None = None,
    head_sparsity: float = 0.4,
    ffn_sparsity: float = 0.0,
    layer_sparsity: float = 0.0,
    layer_strategy: str = "top",
    method: str = "importance",
    schedule: str = "one_shot",
    steps: int = 1,
    per_layer: bool = False,
    recovery_epochs: float = 1.0,
    finetune_epochs: float | None = None,
    learning_rate: float = 5e-5,
    batch_size: int = 32,
    distillation_alpha: float = 0.0,
    score_num_examples: int = 512,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    max_length: int = 128,
    seed: int = 42,
    allow_weak_baseline: bool = False,
    device: str | None = None,
    dry_run: bool = False,
    overwrite: bool = False,
    resume: bool = False,
    save_steps: int = 200,
    bench: bool = True,
    bench_batch_sizes: Sequence[int] = (1, 8, 32),
    bench_threads: int | None = None,
    bench_repeats: int = 10,
    repo_id: str | None = None,
    base_model_id: str | None = None,
    command: str | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> PruneResult:
    """Prune `model_name_or_path` for `task` end to end and save the result to `output_dir`.

    Steps: load the task (see `load_task_data`) and the model (`gguf_file`: a GGUF checkpoint in that folder);
    when the checkpoint has no trained head for the task, fine-tune one first, for at most `finetune_epochs`
    (default: 10 on sets under 10,000 examples, else 3) with early stopping on a validation slice carved from
    train; evaluate ("before") and compare with the majority-class and chance baselines of every eval split;
    score head importance on train examples (for the card's heatmap); prune to the targets and recover with
    `PruningTrainer` (`method`, `schedule`, `steps`, `recovery_epochs`, optional distillation from the dense
    model); evaluate ("after"); time dense vs pruned (`bench`); write model, tokenizer, README.md model card,
    heatmaps and `hfprune_results.json` atomically.

    A dense model that is not clearly above the trivial baselines raises `WeakBaselineError` (its state is kept:
    resume with `allow_weak_baseline=True` to prune it anyway, and the card then says so). `dry_run=True` loads
    and scores the model and returns the one-shot plan (`PruneResult.sparsity`, FLOPs in `settings`) without
    training or writing anything.

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
        if value is None and name == "finetune_epochs":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise PipelineInputError(f"{name} must be a number >= 0, got {value!r}")
    if not 0.0 <= distillation_alpha <= 1.0:
        raise PipelineInputError(f"distillation_alpha must be in [0, 1], got {distillation_alpha!r}")
    if isinstance(save_steps, bool) or not isinstance(save_steps, int) or save_steps < 1:
        raise PipelineInputError(f"save_steps must be a positive integer, got {save_steps!r}")
    device = _check_device(device)
    if not dry_run:
        output_dir = check_output_dir(output_dir, overwrite)
    output_dir = Path(output_dir).expanduser()
    is_lm = task.lower() == LM_TASK
    source = resolve_model(model_name_or_path, gguf_file=gguf_file, causal_lm=is_lm)
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
    if finetune_epochs == 0 and not _config_has_head(source.config, data):
        raise PipelineInputError(
            f"{model_name_or_path} has no trained head for {data.name}; it needs finetune_epochs > 0",
            cli_message=f"{model_name_or_path} has no trained head for {data.name}; it needs --finetune-epochs above 0",
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
            recovery_epochs=0.0 if dry_run else recovery_epochs,
            distillation_alpha=0.0 if dry_run else distillation_alpha,
            **_training_kwargs(
                work_dir / "prune", batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                quiet=progress is not None, save_steps=0 if dry_run else save_steps, device=device,
            ),
        )  # fmt: skip
    except (ValueError, PruningError) as error:
        raise PipelineInputError(_first_line(error)) from None
    if dry_run:
        return _plan_only(source, data, pruning_args, settings, output_dir, seed=seed, max_length=max_length, say=say)

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
            say(f"loading {source.display_name} for {data.name} ({data.source})")
            model, tokenizer, has_head = load_model_for_task(source, data)
            state["finetuned_first"] = not has_head
        train = _tokenized(data, data.train, tokenizer, max_length)
        lap("load")

        finetuned_first = state["finetuned_first"]
        if finetuned_first:
            # The slice that decides when fine-tuning stops is kept out of every later training step as well.
            train, validation = validation_slice(train, seed)
        if finetuned_first and not finetuned.is_dir():
            epochs = finetune_epochs if finetune_epochs is not None else default_finetune_epochs(len(train))
            say(
                f"{source.display_name} has no trained {data.name} head: fine-tuning it first (at most {epochs:g} epochs "
                f"on {len(train)} examples, early stopping on {len(validation)} held-out training examples)"
            )
            state["finetune"] = _finetune(
                model, tokenizer, train, validation, data, work_dir, epochs=epochs, progress=progress,
                batch_size=batch_size, learning_rate=learning_rate, seed=seed, device=device,
            )  # fmt: skip
            _save_folder(finetuned, model, tokenizer)
            _save_state(work_dir, state)
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

        baselines, weak = None, None
        if not data.is_lm:
            baselines = task_baselines(data.spec, _eval_labels(data))
            weak = weak_baseline_reason(data.spec, metrics_before, baselines, {s: len(d) for s, d in data.eval.items()})
        if weak and not allow_weak_baseline:
            advice = "pruning a model that learned nothing is not a result; train it longer or on more data, or prune it anyway with"
            raise WeakBaselineError(
                f"{weak}: {advice} allow_weak_baseline=True, resume=True",
                cli_message=f"{weak}: {advice} --allow-weak-baseline --resume",
            )
        if weak:
            say(f"weak baseline, pruning anyway: {weak}")

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
            loader = DataLoader(score_dataset, batch_size=pruning_args.per_device_eval_batch_size, collate_fn=collate)
            importance = head_importance(model, loader)  # the trainer's scoring batches: the same scores
            torch.save(importance, work_dir / f"{IMPORTANCE_FILE}.tmp")
            (work_dir / f"{IMPORTANCE_FILE}.tmp").replace(work_dir / IMPORTANCE_FILE)  # a full disk never leaves half a file
        lap("score")

        # The dense model stays only as the distillation teacher; the pruned one is edited in place. For timing,
        # a dense twin with the original shapes is built afterwards (speed does not depend on weight values).
        teacher = copy.deepcopy(model).eval() if distillation_alpha > 0 else None
        base_parameters = sum(p.numel() for p in model.parameters())
        # The trainer evaluates after every pruning step when given an eval set: worth it only for an iterative
        # schedule (the curve goes into the history); before/after on every split is measured here anyway.
        step_eval = None
        if schedule == "iterative" and steps > 1:
            step_eval = _tokenized(data, next(iter(data.eval.values())), tokenizer, max_length)
        plural = "" if recovery_epochs == 1 else "s"
        recovery = f"recovering ({recovery_epochs:g} epoch{plural})" if recovery_epochs > 0 else "no recovery fine-tuning"
        say(f"pruning ({method}, {schedule.replace('_', '-')}), {recovery}")
        trainer = PruningTrainer(
            model=model,
            args=pruning_args,
            train_dataset=train,
            eval_dataset=step_eval,
            processing_class=tokenizer,
            data_collator=None if data.is_lm else _collator(tokenizer),
            compute_metrics=None if data.is_lm else make_compute_metrics(data.spec),
            score_dataset=score_dataset,
            teacher_model=teacher,
            callbacks=progress_callbacks(progress, "prune + recover"),
        )
        if progress is not None:
            _quiet(trainer)
        trainer.train(resume_from_checkpoint=True if resume and _has_pruning_checkpoint(work_dir / "prune") else None)
        model = trainer.model.eval()
        history = list(getattr(trainer, "pruning_history", []) or [])
        del trainer
        release_memory()
        lap("prune + recover")

        say("evaluating the pruned model")
        metrics_after = evaluate_model(
            model, tokenizer, data, batch_size=eval_batch, max_length=max_length, progress=progress, stage="evaluate pruned"
        )
        lap("evaluate after")

        speed = None
        if bench:
            from .speed import measure_speed

            from .card import unpruned_twin

            say("timing dense vs pruned")
            reference = next(model.parameters())
            dense = teacher if teacher is not None else unpruned_twin(model).to(reference.device, reference.dtype).eval()
            speed_progress = (lambda done, total, row: progress("time dense vs pruned", done, total)) if progress else None
            speed = measure_speed(
                {"dense": dense, "pruned": model},
                batch_sizes=tuple(bench_batch_sizes),
                seq_lengths=(max_length,),
                num_threads=bench_threads,
                repeats=bench_repeats,
                device=device,
                progress=speed_progress,
            )
            del dense
            lap("time")
        del teacher

        from .card import card_inputs, sparsity_summary, write_model_card

        result = PruneResult(
            output_dir=output_dir,
            base_model=source.display_name,
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
            baselines=baselines,
            weak_baseline=weak,
            finetune=state.get("finetune"),
        )
        command = command or _python_call(source.display_name, task, {"output_dir": output_dir.name, **settings})
        card_kwargs = card_inputs(
            base_model=model_name_or_path,
            base_model_id=base_model_id,
            task=data.card_task if isinstance(data.card_task, str) else data.name,
            metrics_before=metrics_before,
            metrics_after=metrics_after,
            baselines={split: value["majority"] for split, value in baselines.items()} if baselines else None,
            weak_baseline=weak,
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
            payload = {**result.to_dict(), "output_dir": output_dir.name, "card": card_kwargs}
            (folder / RESULTS_FILE).write_text(json.dumps(_jsonable(payload), indent=2) + "\n")
            if speed is not None:
                speed.save_json(folder / SPEED_FILE)
                speed.plot(folder / SPEED_IMAGE)
            write_model_card(model, folder, **{**card_kwargs, "task": data.card_task})

        say(f"writing {output_dir}")
        write_atomically(output_dir, write, overwrite=overwrite)
        lap("write")
    except (PipelineInputError, PruningError, TaskDataError):
        if not resume:  # bad input found late (e.g. weights that disagree with their config): nothing to resume
            shutil.rmtree(work_dir, ignore_errors=True)
        raise
    shutil.rmtree(work_dir, ignore_errors=True)  # only now: any failure above leaves it for resume=True
    return result


def _plan_only(source: ModelSource, data: TaskData, args, settings: dict[str, Any], output_dir: Path, *, seed: int, max_length: int, say) -> PruneResult:
    """What `dry_run=True` returns: the one-shot plan on the model as loaded (no fine-tuning, no recovery, nothing written).

    A model without a trained head is planned with its untrained one: gradient scores then differ from what the
    real run (which fine-tunes first) uses; magnitude and random plans are the same.
    """
    from .card import sparsity_summary
    from .speed import count_flops
    from .trainer import PruningTrainer

    say(f"dry run: loading {source.display_name} for {data.name}")
    model, tokenizer, has_head = load_model_for_task(source, data)
    train = _tokenized(data, data.train, tokenizer, max_length)
    base_parameters = sum(p.numel() for p in model.parameters())
    flops_before = count_flops(model.eval(), 1, max_length)
    score_dataset = train.shuffle(seed=seed + 1).select(range(min(args.score_num_examples, len(train))))
    with tempfile.TemporaryDirectory() as scratch:
        args.output_dir = scratch  # nothing is saved: save_strategy is "no" and there is no recovery
        trainer = PruningTrainer(
            model=model, args=args, train_dataset=train, processing_class=tokenizer,
            data_collator=None if data.is_lm else _collator(tokenizer), score_dataset=score_dataset,
        )  # fmt: skip
        _quiet(trainer)
        trainer.train()
    model.eval()
    flops_after = count_flops(model, 1, max_length)
    plan = {
        **settings,
        "flops_per_sequence_before": flops_before,
        "flops_per_sequence_after": flops_after,
        "ideal_speedup": flops_before / flops_after if flops_after else None,
        "planned_on_untrained_head": not has_head,
    }
    record = copy.deepcopy(getattr(model.config, "hfprune", None) or {})
    return PruneResult(
        output_dir=output_dir, base_model=source.display_name, task=data.name, metrics_before={}, metrics_after={},
        sparsity=sparsity_summary(model, base_parameters), finetuned_first=not has_head, settings=plan,
        pruning_history=[{"kept_layers": record.get("kept_layers"), "kept_heads": record.get("kept_heads")}], dry_run=True,
    )  # fmt: skip


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
    base_model_id: str | None = None,
    gguf_file: str | None = None,
    command: str | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Drop `k` layers chosen by a Sajjad et al. strategy (or the given original `layers`) and save the
    checkpoint with its card. With a `task`, the model is evaluated before and after (no fine-tuning), and
    the "contribution" strategy scores layers on its training examples. `gguf_file` names a GGUF checkpoint
    inside the model folder."""
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
    say = log or (lambda message: logger.info(message))
    output_dir = check_output_dir(output_dir, overwrite)
    is_lm = task is not None and task.lower() == LM_TASK
    source = resolve_model(model_name_or_path, gguf_file=gguf_file, need_tokenizer=task is not None, causal_lm=is_lm)
    data = load_task_data(task, need_train=strategy == "contribution", **(data_kwargs or {})) if task else None

    # What can be planned from the config is checked before any weights load.
    kept = get_record(source.config)["kept_layers"]
    if layers is not None:
        unknown = sorted(set(layers) - set(kept))
        if unknown or len(set(layers)) >= len(kept):
            raise PipelineInputError(f"layers {sorted(set(layers))} cannot be dropped: the model has layers {kept}")
    elif strategy != "contribution":
        try:
            layers = [kept[i] for i in layers_to_drop(len(kept), k, strategy)]
        except PruningError as error:
            raise PipelineInputError(_first_line(error)) from None
    elif not 0 < k < len(kept):
        raise PipelineInputError(f"k must be an integer in [1, {len(kept) - 1}] for a model with {len(kept)} layers, got {k}")

    say(f"loading {source.display_name}")
    if data is not None:
        model, tokenizer, _ = load_model_for_task(source, data)
    else:
        model = from_pretrained(source.name_or_path, config=copy.deepcopy(source.config), **source.model_kwargs)
        try:
            tokenizer = load_tokenizer(source)
        except PipelineInputError:
            tokenizer = None  # a checkpoint without a tokenizer is still a checkpoint; the card says how to load it
    model.eval()
    if layers is None:  # the contribution strategy scores layers on training examples
        from torch.utils.data import DataLoader

        from .scores import layer_cosine_scores

        say("scoring layers on training examples")
        dataset = _tokenized(data, data.train, tokenizer, max_length).select(range(min(512, len(data.train))))
        loader = list(DataLoader(dataset, batch_size=batch_size, collate_fn=None if data.is_lm else _collator(tokenizer)))
        scores = layer_cosine_scores(model, loader)
        scores = scores[kept] if scores.shape[0] != len(kept) else scores
        layers = [kept[i] for i in layers_to_drop(len(kept), k, strategy, scores)]

    evaluate = functools.partial(evaluate_model, batch_size=batch_size * 2, max_length=max_length, progress=progress)
    if data:
        say("evaluating before the drop")
    before = evaluate(model, tokenizer, data, stage="evaluate before") if data else None
    base_parameters = sum(p.numel() for p in model.parameters())
    say(f"dropping layers {sorted(layers)}")
    drop_layers(model, list(layers))
    if data:
        say("evaluating after the drop")
    after = evaluate(model, tokenizer, data, stage="evaluate after") if data else None

    from .card import card_inputs, write_model_card

    card_kwargs = card_inputs(
        base_model=model_name_or_path, base_model_id=base_model_id, task=data.name if data else None,
        metrics_before=before, metrics_after=after, max_eval_samples=(data_kwargs or {}).get("max_eval_samples"),
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

    say(f"writing {output_dir}")
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
    base_gguf_file: str | None = None,
    progress: Progress | None = None,
):
    """Time a pruned checkpoint against its dense original with `hfprune.speed.measure_speed`.

    The dense model is `base_model` when given (`base_gguf_file`: a GGUF checkpoint in that folder), else a
    random-weight model with the original shapes (`hfprune.card.unpruned_twin`): timing does not depend on
    weight values, so no download is needed.
    """
    from .loading import from_pretrained
    from .speed import measure_speed

    checkpoint = Path(checkpoint)
    if not (checkpoint / "config.json").is_file():
        raise PipelineInputError(f"{checkpoint} is not a model directory (no config.json)")
    resolve_model(checkpoint, need_tokenizer=False)
    pruned = from_pretrained(checkpoint).eval()
    if base_model is not None:
        source = resolve_model(base_model, gguf_file=base_gguf_file, need_tokenizer=False)
        stock_class = type(pruned)
        while getattr(stock_class, "_hfprune_restructured", False):
            stock_class = stock_class.__base__
        kwargs = {**source.model_kwargs, "dtype": next(pruned.parameters()).dtype}
        dense = from_pretrained(source.name_or_path, config=source.config, model_class=stock_class, **kwargs).eval()
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
