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
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from torch.utils.data import DataLoader

from .._validation import check_count, check_device, check_fraction, check_number
from ..constants import LAYER_STRATEGIES
from ..engine.record import get_record
from ..engine.structure import stock_class
from ..engine.surgery import drop_layers
from ..errors import (  # noqa: F401  (WeakBaselineError: old path)
    PipelineInputError,
    PruningError,
    WeakBaselineError,
    _first_line,
)
from ..export.card import card_inputs
from ..io.checkpoint import (
    config_has_head,
    load_model,
    load_model_for_task,
    resolve_model,
)
from ..io.loading import from_pretrained
from ..io.output import check_output_dir, write_atomically
from ..io.rundir import (
    IMPORTANCE_FILE,
    _open_work_dir,
    _save_state,
    latest_pruning_checkpoint,
    load_or_compute,
    work_dir_for,
)
from ..measure.generation_speed import generation_against_dense
from ..measure.latency import Timer
from ..measure.speed import time_against_dense
from ..planning.plan import resolve_layers_to_drop
from ..progress import Progress
from ..pruning_config import config_from_settings
from ..scoring.loss import head_importance
from ..tasks.baselines import check_dense_model
from ..tasks.task_data import (  # noqa: F401  (evaluate_model: old import path)
    LM_TASK,
    TaskDataError,
    _collator,
    _tokenized,
    evaluate_model,
    load_task_data,
    make_compute_metrics,
    scoring_batches,
)
from ..training.callbacks import progress_callbacks
from ..training.trainer import PruningTrainer
from .finetune import (  # noqa: F401  (old import path)
    _quiet,
    _training_kwargs,
    default_finetune_epochs,
    micro_batches,
    prepare_dense_model,
    release_memory,
    train_dense_control,
    validation_slice,
)
from .max_drop import (
    DEFAULT_CEILING,
    DEFAULT_STEPS,
    KeepFastestWithinDrop,
    selection_split,
)
from .results import PruneResult, Stopwatch, write_output_folder
from .score import score_heads, score_task

logger = logging.getLogger(__name__)

# The jobs. The names imported above from their new homes (TaskData, evaluate_model, ...) stay importable here.
__all__ = ["SPEED_TARGET_RECIPE", "PruneResult", "benchmark_checkpoint", "check_sparsity", "drop_layers_for_task", "prune_for_task", "score_heads", "score_task"]


# How a speed target (`target_speedup`, `max_drop`) recovers unless told otherwise: two pruning steps, the second
# corrected by the first one's measurement, distilled from the dense model's logits and from each of its layers.
# On MiniLM-L6 / SST-2 at 3x this gave 83.49% where one step without distillation gave 73.62%, and it matched or
# beat one step at 1.5x and 2x (benchmarks/README.md, section 0).
SPEED_TARGET_RECIPE = MappingProxyType({"steps": 2, "distillation_alpha": 0.5, "distillation_layer_weight": 1.0})


def recovery_recipe(
    speed_target: bool,
    schedule: str | None,
    steps: int | None,
    distillation_alpha: float | None,
    distillation_layer_weight: float | None,
) -> tuple[str, int, float, float]:
    """Fill in what the caller left None: `SPEED_TARGET_RECIPE` for a speed target, else one step, no distillation.

    More than one step means the iterative schedule; an explicit `schedule="one_shot"` keeps one step.
    """
    if schedule is None:
        schedule = "iterative" if (steps or 0) > 1 or (steps is None and speed_target) else "one_shot"
    if steps is None:
        steps = SPEED_TARGET_RECIPE["steps"] if speed_target and schedule == "iterative" else 1
    recipe = SPEED_TARGET_RECIPE if speed_target else {"distillation_alpha": 0.0, "distillation_layer_weight": 0.0}
    if distillation_alpha is None:
        distillation_alpha = recipe["distillation_alpha"]
    if distillation_layer_weight is None:
        distillation_layer_weight = recipe["distillation_layer_weight"]
    return schedule, steps, distillation_alpha, distillation_layer_weight


def check_sparsity(name: str, value: float) -> float:
    """A target fraction must be in [0, 1): removing everything is never a model."""
    return check_fraction(name, value, error=PipelineInputError, expected="a fraction in [0, 1)")


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
    head_sparsity: float | None = None,
    ffn_sparsity: float = 0.0,
    layer_sparsity: float = 0.0,
    param_budget: float | None = None,
    prune_width: bool = False,
    target_speedup: float | None = None,
    speedup_batch_size: int = 32,
    speedup_seq_len: int = 128,
    max_drop: float | None = None,
    speed_timer: Timer | None = None,
    layer_strategy: str = "top",
    method: str = "importance",
    schedule: str | None = None,
    steps: int | None = None,
    per_layer: bool = False,
    recovery_epochs: float = 1.0,
    finetune_epochs: float | None = None,
    learning_rate: float = 5e-5,
    batch_size: int = 32,
    distillation_alpha: float | None = None,
    distillation_layer_weight: float | None = None,
    score_num_examples: int = 512,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    max_length: int = 128,
    seed: int = 42,
    allow_weak_baseline: bool = False,
    dense_control: bool = True,
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
    `PruningTrainer` (`method`, `schedule`, `steps`, `recovery_epochs`, optional distillation); evaluate ("after"); with `dense_control`, when
    the pruned model trained, train the dense model on the same examples for the same steps and evaluate it, the
    honest "before" the card compares with; time dense vs pruned (`bench`; decoders: prefill and decode too); write model, tokenizer, README.md
    model card, heatmaps and `hfprune_results.json` atomically.

    What to remove is one of: sparsities (`head_sparsity`, default 0.4 when no other target is given,
    `ffn_sparsity`, `layer_sparsity`); `param_budget`, the fraction of parameters to keep (the sparsities then give
    the mix; without them, with method "importance" or "taylor", the budget is allocated by importance per
    parameter across layers, heads and FFN neurons, and with `prune_width` the hidden width too,
    `hfprune.planning.param_target`); `target_speedup`, a measured speedup at `speedup_batch_size` x `speedup_seq_len` on `device`
    (`PruningArguments.target_speedup`: a latency model, allocation by importance per saved second, measured
    again at the end); or `max_drop`, the fastest model within that many points of the dense model's main metric,
    chosen on a selection slice of train among the steps of an iterative speed-target run (`steps`, default 6, up
    to `target_speedup`, default 4; `hfprune.jobs.max_drop`), then reported on dev like any other. `speed_timer`
    replaces how a speed target times models (`hfprune.measure.latency.Timer`, e.g. the runtime it will be served in).

    How the pruned model recovers: `schedule` and `steps` (more than one step: iterative), `recovery_epochs` per
    step, and distillation from the dense model, `distillation_alpha` on the logits and `distillation_layer_weight`
    on every kept layer. Left None, a speed target uses `SPEED_TARGET_RECIPE` (2 steps, 0.5 and 1.0, the recipe
    its benchmark measured best); other targets use one step and no distillation.

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
    stopwatch = Stopwatch()
    lap, timings = stopwatch.lap, stopwatch.timings

    # -- everything that can be checked cheaply, before any weights are loaded
    chooses_itself = param_budget is not None or target_speedup is not None or max_drop is not None
    if head_sparsity is None:
        head_sparsity = 0.0 if chooses_itself else 0.4
    if max_drop is not None:
        check_number("max_drop", max_drop, 0, error=PipelineInputError, expected="a number of points >= 0")
        if resume:  # the candidate models of the steps before a kill are not in the checkpoints
            raise PipelineInputError("a max_drop run cannot resume yet: start it again without resume")
        schedule, steps = "iterative", (steps if steps is not None and steps > 1 else DEFAULT_STEPS)
        target_speedup = DEFAULT_CEILING if target_speedup is None else target_speedup
    schedule, steps, distillation_alpha, distillation_layer_weight = recovery_recipe(
        target_speedup is not None, schedule, steps, distillation_alpha, distillation_layer_weight
    )
    settings = dict(
        method=method,
        schedule=schedule,
        steps=steps,
        head_sparsity=check_sparsity("head sparsity", head_sparsity),
        ffn_sparsity=check_sparsity("FFN sparsity", ffn_sparsity),
        layer_sparsity=check_sparsity("layer sparsity", layer_sparsity),
        param_budget=None if param_budget is None else check_number("param_budget", param_budget, 0, 1, open_low=True, error=PipelineInputError),
        prune_width=True if prune_width else None,
        target_speedup=target_speedup,
        speedup_batch_size=speedup_batch_size if target_speedup is not None else None,
        speedup_seq_len=speedup_seq_len if target_speedup is not None else None,
        max_drop=max_drop,
        layer_strategy=layer_strategy,
        per_layer=per_layer,
        recovery_epochs=check_number("recovery_epochs", recovery_epochs, 0, error=PipelineInputError),
        learning_rate=learning_rate,
        batch_size=batch_size,
        distillation_alpha=check_number("distillation_alpha", distillation_alpha, 0, 1, error=PipelineInputError),
        distillation_layer_weight=check_number(
            "distillation_layer_weight", distillation_layer_weight, 0, error=PipelineInputError
        ),
        score_num_examples=score_num_examples,
        max_train_samples=max_train_samples,
        max_eval_samples=max_eval_samples,
        max_length=max_length,
        seed=seed,
    )
    if not chooses_itself and not any(settings[f"{kind}_sparsity"] for kind in ("head", "ffn", "layer")):
        raise PipelineInputError(
            "nothing to prune: give a head, FFN or layer sparsity above 0, a param_budget, a target_speedup or a max_drop"
        )
    mix = any(settings[f"{kind}_sparsity"] for kind in ("head", "ffn", "layer"))
    if prune_width and (param_budget is None or mix or method not in ("importance", "taylor")):
        raise PipelineInputError(
            "prune_width needs a param_budget without head, FFN or layer sparsities, with method 'importance' or 'taylor'"
        )
    if finetune_epochs is not None:
        check_number("finetune_epochs", finetune_epochs, 0, error=PipelineInputError)
    check_count("save_steps", save_steps, 1, error=PipelineInputError, expected="a positive integer")
    device = check_device(device, error=PipelineInputError)
    if not dry_run:
        output_dir = check_output_dir(output_dir, overwrite)
    output_dir = Path(output_dir).expanduser()
    source = resolve_model(model_name_or_path, gguf_file=gguf_file, causal_lm=task.lower() == LM_TASK)
    data = load_task_data(
        task, data_dir=data_dir, train_file=train_file, validation_file=validation_file, text_columns=text_columns,
        label_column=label_column, label_names=label_names, max_train_samples=max_train_samples,
        max_eval_samples=max_eval_samples, seed=seed,
    )  # fmt: skip
    if dry_run and target_speedup is not None:
        raise PipelineInputError("a dry run plans sparsity targets; a speed target is planned on timings measured during the run")
    if max_drop is not None and data.is_lm:
        raise PipelineInputError("max_drop is in points of a task metric; for --task lm give a target_speedup or param_budget")
    if finetune_epochs == 0 and not config_has_head(source.config, data):
        raise PipelineInputError(
            f"{model_name_or_path} has no trained head for {data.name}; it needs finetune_epochs > 0",
            cli_message=f"{model_name_or_path} has no trained head for {data.name}; it needs --finetune-epochs above 0",
        )

    work_dir = work_dir_for(output_dir)
    run = {"model": str(model_name_or_path), "task": task, "settings": settings, "finetune_epochs": finetune_epochs}
    # Building the arguments validates method, schedule and steps before the model is loaded.
    try:
        pruning_args = config_from_settings(
            {**settings, "recovery_epochs": 0.0, "distillation_alpha": 0.0, "distillation_layer_weight": 0.0} if dry_run else settings,
            **_training_kwargs(
                work_dir / "prune", batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                quiet=progress is not None, save_steps=0 if dry_run else save_steps, device=device,
            ),
            speedup_num_threads=bench_threads, speedup_extra_steps=0 if max_drop is not None else 2,
        )  # fmt: skip
    except (ValueError, PruningError) as error:
        raise PipelineInputError(_first_line(error)) from None
    if dry_run:
        from .dry_run import plan_pruning

        return plan_pruning(source, data, pruning_args, settings, output_dir, seed=seed, max_length=max_length, say=say)

    state = _open_work_dir(work_dir, run, resume)
    try:
        lap("check inputs")

        model, tokenizer, train = prepare_dense_model(
            source, data, work_dir, state, finetune_epochs=finetune_epochs, max_length=max_length, batch_size=batch_size,
            learning_rate=learning_rate, seed=seed, device=device, progress=progress, say=say,
        )  # fmt: skip
        finetuned_first = state["finetuned_first"]
        lap("load + fine-tune head" if finetuned_first else "load")

        evaluate = functools.partial(evaluate_model, tokenizer=tokenizer, data=data, batch_size=batch_size * 2, max_length=max_length, progress=progress)
        if "metrics_before" not in state:
            say("evaluating the dense model")
            state["metrics_before"] = evaluate(model, stage="evaluate dense")
            _save_state(work_dir, state)
        metrics_before = state["metrics_before"]
        lap("evaluate before")
        baselines, weak = check_dense_model(data, metrics_before, allow_weak=allow_weak_baseline)
        if weak:
            say(f"weak baseline, pruning anyway: {weak}")

        # The card's importance heatmap is computed on exactly the examples (and batches) the trainer scores on,
        # so for one-shot importance pruning it shows the very scores that chose the heads.
        score_dataset = train.shuffle(seed=seed + 1).select(range(min(score_num_examples, len(train))))
        say(f"scoring head importance on {len(score_dataset)} training examples")
        collate = None if data.is_lm else _collator(tokenizer)
        loader = DataLoader(score_dataset, batch_size=pruning_args.per_device_eval_batch_size, collate_fn=collate)
        importance = load_or_compute(work_dir / IMPORTANCE_FILE, lambda: head_importance(model, loader))
        lap("score")

        # The dense model stays only as the distillation teacher; the pruned one is edited in place. For timing,
        # a dense twin with the original shapes is built afterwards (speed does not depend on weight values).
        teacher = copy.deepcopy(model).eval() if pruning_args.distills else None
        base_parameters = sum(p.numel() for p in model.parameters())
        # Per-step evaluation only pays for an iterative schedule (its curve goes into the history).
        iterative = schedule == "iterative" and steps > 1
        step_eval = _tokenized(data, next(iter(data.eval.values())), tokenizer, max_length) if iterative else None
        callbacks, keeper = progress_callbacks(progress, "prune + recover"), None
        if max_drop is not None:  # steps are evaluated (and chosen) on held-out TRAINING examples, never on dev
            train, step_eval = selection_split(train, seed)
            keeper = KeepFastestWithinDrop(data.spec.metrics[0], max_drop)
            callbacks.append(keeper)
        recovery = f"recovering ({recovery_epochs:g} epochs)" if recovery_epochs > 0 else "no recovery fine-tuning"
        say(f"pruning ({method}, {schedule.replace('_', '-')}), {recovery}")
        trainer = PruningTrainer(
            model=model, args=pruning_args, train_dataset=train, eval_dataset=step_eval, processing_class=tokenizer,
            data_collator=collate, compute_metrics=None if data.is_lm else make_compute_metrics(data.spec),
            score_dataset=score_dataset, teacher_model=teacher, callbacks=callbacks, speed_timer=speed_timer,
        )  # fmt: skip
        if progress is not None:
            _quiet(trainer)
        trainer.train(resume_from_checkpoint=True if resume and latest_pruning_checkpoint(work_dir / "prune") else None)
        model, history, speed_target = trainer.model.eval(), list(trainer.pruning_history), trainer.speedup_report
        param_target = trainer.param_report
        selection = keeper and keeper.summary(len(step_eval))
        if keeper is not None:  # its steps are candidates, not a closed loop: the speed table reports the chosen one
            speed_target = None
            if keeper.chosen_model is None:
                drops = ", ".join(f"step {entry['step']}: -{entry['drop_points']:.2f}" for entry in keeper.steps)
                raise PruningError(f"no pruning step stayed within {max_drop:g} points of the dense model on the selection slice ({drops})")
            model, history = keeper.chosen_model.to(model.device).eval(), history[: keeper.chosen_step + 1]
        del trainer, keeper
        release_memory()
        lap("prune + recover")

        say("evaluating the pruned model")
        metrics_after = evaluate(model, stage="evaluate pruned")
        lap("evaluate after")
        pruned_steps = sum(entry["train_steps"] for entry in history)  # recovery, and L0 gate training
        if dense_control and pruned_steps > 0 and "dense_control" not in state:
            say("training the dense model on the same examples for the same steps (the honest before)")
            state["dense_control"] = train_dense_control(
                teacher, source, data, work_dir, state, train, pruning_args, tokenizer=tokenizer, evaluate=evaluate,
                pruned_steps=pruned_steps, pruning_steps=len(history) - 1, progress=progress,
            )  # fmt: skip
            _save_state(work_dir, state)
            lap("dense control")

        speed = generation = None
        if bench:
            say("timing dense vs pruned")
            speed = time_against_dense(
                model, teacher, batch_sizes=tuple(bench_batch_sizes), seq_lengths=(max_length,), num_threads=bench_threads,
                repeats=bench_repeats, device=device, progress=progress,
            )  # fmt: skip
            if data.is_lm:  # a decoder's user waits for prefill and for every decoded token: time both
                generation = generation_against_dense(
                    model, teacher, prompt_len=max_length, num_threads=bench_threads, repeats=bench_repeats, device=device
                )  # fmt: skip
            lap("time")
        del teacher

        from ..export.card import prune_card_inputs, python_call, sparsity_summary

        result = PruneResult(
            output_dir=output_dir, base_model=source.display_name, task=data.name, metrics_before=metrics_before,
            metrics_after=metrics_after, sparsity=sparsity_summary(model, base_parameters), finetuned_first=finetuned_first,
            speed=speed, importance=importance, pruning_history=history, settings=settings, timings=timings,
            baselines=baselines, weak_baseline=weak, finetune=state.get("finetune"), dense_control=state.get("dense_control"),
            speed_target=speed_target, selection=selection, generation_speed=generation, param_target=param_target,
        )  # fmt: skip
        card_kwargs = prune_card_inputs(
            result, base_model=model_name_or_path, base_model_id=base_model_id, repo_id=repo_id or output_dir.name,
            task_name=data.card_task if isinstance(data.card_task, str) else data.name, base_num_parameters=base_parameters,
            command=command or python_call("hfprune.prune_for_task", source.display_name, task, output_dir=output_dir.name, **settings),
        )  # fmt: skip
        say(f"writing {output_dir}")
        write_atomically(
            output_dir,
            functools.partial(
                write_output_folder, model=model, tokenizer=tokenizer, results={**result.to_dict(), "output_dir": output_dir.name},
                card_kwargs=card_kwargs, card_task=data.card_task, speed=speed,
            ),
            overwrite=overwrite,
        )  # fmt: skip
        lap("write")
    except (PipelineInputError, PruningError, TaskDataError):
        if not resume:  # bad input found late (e.g. weights that disagree with their config): nothing to resume
            shutil.rmtree(work_dir, ignore_errors=True)
        raise
    shutil.rmtree(work_dir, ignore_errors=True)  # only now: any failure above leaves it for resume=True
    return result


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

    try:  # what can be planned from the config is checked before any weights load
        layers = resolve_layers_to_drop(get_record(source.config)["kept_layers"], k=k, layers=layers, strategy=strategy)
    except PruningError as error:
        raise PipelineInputError(_first_line(error)) from None

    say(f"loading {source.display_name}")
    if data is not None:
        model, tokenizer, _ = load_model_for_task(source, data)
    else:
        model, tokenizer = load_model(source)
    model.eval()
    if layers is None:  # the contribution strategy scores layers on training examples
        from ..scoring.similarity import layer_cosine_scores

        say("scoring layers on training examples")
        loader = scoring_batches(data, tokenizer, num_examples=512, batch_size=batch_size, max_length=max_length)
        layers = resolve_layers_to_drop(get_record(model)["kept_layers"], k=k, strategy=strategy, scores=layer_cosine_scores(model, loader))

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


    card_kwargs = card_inputs(
        base_model=model_name_or_path, base_model_id=base_model_id, task=data.name if data else None,
        metrics_before=before, metrics_after=after, max_eval_samples=(data_kwargs or {}).get("max_eval_samples"),
        speed=None, importance=None, command=command, pruning={"layers dropped": ", ".join(map(str, sorted(layers))), "strategy": strategy if k is not None else "given"},
        base_num_parameters=base_parameters, finetuned_first=False, repo_id=repo_id or output_dir.name,
    )  # fmt: skip
    summary = {"dropped_layers": sorted(layers), "metrics_before": before, "metrics_after": after}
    say(f"writing {output_dir}")
    write = functools.partial(
        write_output_folder, model=model, tokenizer=tokenizer, results=summary, card_kwargs=card_kwargs,
        card_task=data.card_task if data else None,
    )  # fmt: skip
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
    """Time a pruned checkpoint against its dense original with `hfprune.measure.speed.measure_speed`.

    The dense model is `base_model` when given (`base_gguf_file`: a GGUF checkpoint in that folder), else a
    random-weight model with the original shapes (`hfprune.engine.record.unpruned_twin`): timing does not depend on
    weight values, so no download is needed.
    """
    checkpoint = Path(checkpoint)
    if not (checkpoint / "config.json").is_file():
        raise PipelineInputError(f"{checkpoint} is not a model directory (no config.json)")
    resolve_model(checkpoint, need_tokenizer=False)
    pruned = from_pretrained(checkpoint).eval()
    dense = None
    if base_model is not None:
        source = resolve_model(base_model, gguf_file=base_gguf_file, need_tokenizer=False)
        kwargs = {**source.model_kwargs, "dtype": next(pruned.parameters()).dtype}
        dense = from_pretrained(source.name_or_path, config=source.config, model_class=stock_class(pruned), **kwargs).eval()
    try:
        return time_against_dense(
            pruned, dense, batch_sizes=tuple(batch_sizes), seq_lengths=tuple(seq_lengths), num_threads=num_threads,
            repeats=repeats, warmup=warmup, device=device, progress=progress,
        )  # fmt: skip
    except PruningError as error:
        raise PipelineInputError(_first_line(error)) from None
