"""`PruneJob`: the prune job as a sequence of named stages over one small state.

`prune_for_task` sorts its keywords into the four argument groups of `hfprune.jobs.prune_arguments` and runs
`PruneJob(...).run()`. The job first loads and validates (`load_and_validate`: everything that can be checked
before any weights load), then runs `STAGES` in order, each a method that reads what the stages before it left
on the job and leaves what it made:

    prepare_dense_model   load the model; fine-tune a task head first when the checkpoint has none
    evaluate_dense        the "before" metrics, compared with the majority-class and chance baselines
    score                 head importance on training examples (the card's heatmap)
    prune_and_recover     `PruningTrainer`: score, prune, recover; a max-drop run keeps its chosen step
    evaluate_pruned       the "after" metrics
    dense_control         the dense model trained on the same examples for the same steps (the honest "before")
    time                  dense vs pruned (decoders: prefill and decode too; with `gguf_dtype`, also in llama.cpp)
    write_output          model, tokenizer, card and `hfprune_results.json`, atomically
    export_gguf           with `gguf_dtype`: `model-<dtype>.gguf` for llama.cpp, checked there, into the checkpoint

Until it succeeds, the run keeps its state in `work_dir_for(output_dir)` (`run_state`: the fine-tuned model, the
"before" metrics and scores, training checkpoints), so that the same call with `resume=True` continues after a
crash; bad input found late removes it, since there is nothing to resume.

Under `torchrun --nproc_per_node N` (or `accelerate launch`) every process runs the job: it joins the process
group first, checks its input on every rank and raises the same one-line error everywhere. Fine-tuning, pruning,
recovery and the dense control train data-parallel through the Trainer's DDP (the global batch stays
`batch_size`; the scores are averaged across ranks and the plan checked equal), and every rank keeps its own
identical model in memory. The work directory, run state, evaluations, head-importance heatmap, timing and the
output folder are rank 0's (`MAIN_PROCESS_STAGES` and `on_main_process`), the others waiting for what it found;
every rank returns rank 0's `PruneResult`.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from .._validation import check_device
from ..distributed import agree, checked, is_main_process, join_launched_processes, on_main_process, process_count
from ..errors import PipelineInputError, PruningError, TargetOutOfReachError, first_line
from ..export.card_source import prune_card_inputs, python_call
from ..export.gguf import GgufExport, export_gguf
from ..io.checkpoint import config_has_head, resolve_model
from ..io.output import check_output_dir, job_inputs, write_atomically
from ..io.rundir import (
    IMPORTANCE_FILE,
    latest_pruning_checkpoint,
    load_or_compute,
    open_work_dir,
    release_work_dir,
    save_state,
    work_dir_for,
)
from ..measure.generation_speed import generation_against_dense
from ..measure.sparsity import sparsity_summary
from ..measure.speed import time_against_dense
from ..planning.plan import heads_left
from ..pruning_config import PruningConfig, config_from_settings
from ..scoring.loss import head_importance
from ..tasks.baselines import check_dense_model
from ..tasks.evaluate import evaluate_model, make_compute_metrics
from ..tasks.specs import LM_TASK, TaskDataError
from ..tasks.task_data import load_task_data, padding_collator, tokenize_split
from ..training.callbacks import progress_callbacks
from ..training.trainer import PruningTrainer
from .dry_run import plan_pruning
from .finetune import (
    prepare_dense_model,
    quiet_trainer,
    release_memory,
    resolve_precision,
    train_dense_control,
    training_device,
    training_kwargs,
)
from .llama_cpp_bench import check_gguf_job, gguf_into_checkpoint, time_in_llama_cpp
from .max_drop import KeepFastestWithinDrop, ceiling_out_of_reach, selection_split
from .prune_arguments import (
    ModelDataArguments,
    OutputArguments,
    RecoveryArguments,
    TargetArguments,
    check_targets,
    check_training,
    fit_head_target,
    job_settings,
    resolve_defaults,
)
from .results import PruneResult, Stopwatch, write_output_folder
from .stream import check_fits_in_memory

logger = logging.getLogger(__name__)

__all__ = ["PruneJob"]


class PruneJob:
    """One `prune_for_task` run: its four argument groups, and the state its stages hand on to each other."""

    STAGES = (
        "prepare_dense_model", "evaluate_dense", "score", "prune_and_recover", "evaluate_pruned", "dense_control",
        "time", "write_output", "export_gguf",
    )  # fmt: skip
    MAIN_PROCESS_STAGES = ("time", "write_output", "export_gguf")  # the last ones: rank 0 alone, its result shared

    def __init__(self, model_data: ModelDataArguments, targets: TargetArguments, recovery: RecoveryArguments, output: OutputArguments):
        self.model_data, self.targets, self.recovery, self.output = model_data, targets, recovery, output
        self.say = output.log or (lambda message: logger.info(message))
        self.stopwatch = Stopwatch()
        self.settings: dict[str, Any] = {}  # the resolved settings (`job_settings`)
        self.run_state: dict[str, Any] = {}  # what the work directory keeps for a resume
        self.output_dir = self.work_dir = self.device = self.source = self.data = self.pruning_args = None
        # what the stages leave, in order
        self.model = self.tokenizer = self.train = None  # prepare_dense_model (train: what later stages train on)
        self.evaluate = self.baselines = self.weak = None  # evaluate_dense
        self.score_dataset = self.collate = self.importance = None  # score
        self.teacher = self.speed_target = self.param_target = self.selection = None  # prune_and_recover
        self.reconstruction: list[dict[str, Any]] | None = None  # prune_and_recover, with `reconstruct`
        self.base_parameters, self.history = 0, []
        self.metrics_after = None  # evaluate_pruned
        self.speed = self.generation = self.llama_cpp = None  # time
        self.result: PruneResult | None = None  # write_output

    def run(self) -> PruneResult:
        """Load and validate, then run every stage; the work directory goes once the output is written.
        Under `torchrun`, see the module notes: every rank returns rank 0's result."""
        join_launched_processes(cpu=self._trains_on_cpu())
        agree(checked(self.load_and_validate))  # bad input: the same error on every rank, before any work
        if self.output.dry_run:
            return plan_pruning(
                self.source, self.data, self.pruning_args, self.settings, self.output_dir, seed=self.model_data.seed,
                max_length=self.model_data.max_length, say=self.say,
            )  # fmt: skip
        run = {
            "model": str(self.model_data.model_name_or_path), "task": self.model_data.task, "settings": self.settings,
            "finetune_epochs": self.recovery.finetune_epochs,
            "data": {"source": self.data.source, "sha256": self.data.fingerprint()},  # other data: no resume
        }  # fmt: skip
        main = is_main_process()
        # refuses another run's state; the other ranks get rank 0's state (or its error)
        self.run_state = on_main_process(lambda: open_work_dir(self.work_dir, run, self.output.resume))
        try:
            self.stopwatch.lap("check inputs")
            for stage in self.STAGES:
                if stage not in self.MAIN_PROCESS_STAGES:
                    getattr(self, stage)()
            self.result = on_main_process(self._main_process_stages)
        except (PipelineInputError, PruningError, TaskDataError):
            if main and not self.output.resume:  # bad input found late (e.g. weights that disagree with their config): nothing to resume
                shutil.rmtree(self.work_dir, ignore_errors=True)
            raise
        finally:
            if main:
                release_work_dir(self.work_dir)
        self.teacher = None
        if main:
            shutil.rmtree(self.work_dir, ignore_errors=True)  # only now: any failure above leaves it for resume=True
        return self.result

    def _main_process_stages(self) -> PruneResult:
        """The stages that time, write and report (`MAIN_PROCESS_STAGES`, the last ones), run on rank 0 alone."""
        for stage in self.STAGES:
            if stage in self.MAIN_PROCESS_STAGES:
                getattr(self, stage)()
        return self.result

    def _trains_on_cpu(self) -> bool:
        """Whether training runs on the CPU (gloo under torchrun); an unusable device is refused later, in one line."""
        try:
            return training_device(self.recovery.device) == "cpu"
        except (RuntimeError, TypeError, ValueError):
            return True

    @property
    def inputs(self) -> list[str | os.PathLike]:
        """What the job reads (the model folder, the data folder and files): an output there is refused."""
        return job_inputs(self.model_data.model_name_or_path, data_kwargs=vars(self.model_data))

    # ---- load and validate -------------------------------------------------------------------------------
    def load_and_validate(self) -> None:
        """Everything that can be checked before any weights load: the arguments, the device, the output folder,
        the model's config and the task data, and the `PruningConfig` (method, schedule, steps, targets)."""
        given_head_sparsity = self.targets.head_sparsity  # None: the fallback, which a model without heads skips
        self.targets, self.recovery = resolve_defaults(self.targets, self.recovery, resume=self.output.resume)
        self.settings = job_settings(self.model_data, self.targets, self.recovery)
        check_targets(self.targets, self.settings)
        check_training(self.recovery, process_count())
        self.device = check_device(self.recovery.device, error=PipelineInputError)
        self.settings["precision"] = resolve_precision(self.recovery.precision, self.device)  # "auto" made concrete
        output_dir = self.output.output_dir
        if not self.output.dry_run and is_main_process():  # the one that writes it (and may repair it) checks it
            output_dir = check_output_dir(output_dir, self.output.overwrite, inputs=self.inputs)
        self.output_dir = Path(output_dir).expanduser()
        self._load_sources()
        check_fits_in_memory(self.source)
        self.targets = fit_head_target(given_head_sparsity, self.targets, self.settings, heads_left(self.source.config), self.model_data.model_name_or_path)
        self.work_dir = work_dir_for(self.output_dir)
        self.pruning_args = self._pruning_config()

    def _load_sources(self) -> None:
        """The model's config and tokenizer files (no weights) and the task data, and what they rule out."""
        model_data, targets = self.model_data, self.targets
        name = model_data.model_name_or_path
        causal_lm = model_data.task.lower() == LM_TASK
        self.source = resolve_model(name, gguf_file=model_data.gguf_file, causal_lm=causal_lm)
        self.data = load_task_data(model_data.task, **model_data.data_kwargs())
        if self.output.dry_run and targets.target_speedup is not None:
            raise PipelineInputError("a dry run plans sparsity targets; a speed target is planned on timings measured during the run")
        if targets.max_drop is not None and self.data.is_lm:
            raise PipelineInputError("max_drop is in points of a task metric; for --task lm give a target_speedup or param_budget")
        if self.output.gguf_dtype is not None:
            check_gguf_job(self.output.gguf_dtype, self.source.config, self.data.is_lm, name)
        if self.recovery.finetune_epochs == 0 and not config_has_head(self.source.config, self.data):
            raise PipelineInputError(
                f"{name} has no trained head for {self.data.name}; it needs finetune_epochs > 0",
                cli_message=f"{name} has no trained head for {self.data.name}; it needs --finetune-epochs above 0",
            )

    def _pruning_config(self) -> PruningConfig:
        """The trainer's arguments; building them validates method, schedule and steps before the model loads.
        A dry run plans without recovery or distillation."""
        dry_run, recovery = self.output.dry_run, self.recovery
        settings = self.settings
        if dry_run:
            settings = {**settings, "recovery_epochs": 0.0, "distillation_alpha": 0.0, "distillation_layer_weight": 0.0}
        training = training_kwargs(
            self.work_dir / "prune", batch_size=recovery.batch_size, learning_rate=recovery.learning_rate,
            seed=self.model_data.seed, quiet=self.output.progress is not None, save_steps=0 if dry_run else recovery.save_steps,
            device=self.device, precision=self.settings["precision"], fsdp=recovery.fsdp and not dry_run,
        )  # fmt: skip
        if self.targets.max_drop is not None:  # its steps are candidates: no extra steps to meet the ceiling
            training["speedup_extra_steps"] = 0
        try:
            return config_from_settings(
                settings, **training, speedup_num_threads=self.output.bench_threads, latency_cache=self.targets.latency_cache
            )
        except (ValueError, PruningError) as error:
            raise PipelineInputError(first_line(error)) from None

    # ---- the stages ----------------------------------------------------------------------------------------
    def prepare_dense_model(self) -> None:
        """The model to prune, solving the task (a new head fine-tuned first when it has none), and the examples
        the later stages train on (`hfprune.jobs.finetune.prepare_dense_model`)."""
        recovery = self.recovery
        self.model, self.tokenizer, self.train = prepare_dense_model(
            self.source, self.data, self.work_dir, self.run_state, finetune_epochs=recovery.finetune_epochs,
            max_length=self.model_data.max_length, batch_size=recovery.batch_size, learning_rate=recovery.learning_rate,
            seed=self.model_data.seed, device=self.device, precision=self.settings["precision"], progress=self.output.progress,
            say=self.say,
        )  # fmt: skip
        self.stopwatch.lap("load + fine-tune head" if self.run_state["finetuned_first"] else "load")

    def evaluate_dense(self) -> None:
        """The "before" metrics (kept for a resume), then the check against the trivial baselines: a dense model
        not clearly above them raises `WeakBaselineError` unless `allow_weak_baseline`."""
        self.evaluate = functools.partial(
            evaluate_model, tokenizer=self.tokenizer, data=self.data, batch_size=self.recovery.batch_size * 2,
            max_length=self.model_data.max_length, progress=self.output.progress,
        )  # fmt: skip
        if "metrics_before" not in self.run_state:
            self.say("evaluating the dense model")

            def evaluate() -> dict:
                metrics = self.evaluate(self.model, stage="evaluate dense")
                save_state(self.work_dir, {**self.run_state, "metrics_before": metrics})
                return metrics

            self.run_state["metrics_before"] = on_main_process(evaluate)
        self.stopwatch.lap("evaluate before")
        self.baselines, self.weak = check_dense_model(self.data, self.run_state["metrics_before"], allow_weak=self.recovery.allow_weak_baseline)
        if self.weak:
            self.say(f"weak baseline, pruning anyway: {self.weak}")

    def score(self) -> None:
        """Head importance for the card's heatmap, on exactly the examples (and batches) the trainer scores on, so
        for one-shot importance pruning it shows the very scores that chose the heads."""
        train, seed = self.train, self.model_data.seed
        self.score_dataset = train.shuffle(seed=seed + 1).select(range(min(self.targets.score_num_examples, len(train))))
        self.say(f"scoring head importance on {len(self.score_dataset)} training examples")
        self.collate = None if self.data.is_lm else padding_collator(self.tokenizer)
        loader = DataLoader(self.score_dataset, batch_size=self.pruning_args.per_device_eval_batch_size, collate_fn=self.collate)
        # for the card: computed (and kept for a resume) on rank 0, the same tensor on every rank
        self.importance = on_main_process(lambda: load_or_compute(self.work_dir / IMPORTANCE_FILE, lambda: head_importance(self.model, loader)))
        self.stopwatch.lap("score")

    def prune_and_recover(self) -> None:
        """`PruningTrainer` prunes to the targets and recovers. The dense model stays only as the distillation
        teacher (the pruned one is edited in place); a max-drop run keeps the fastest step within its drop."""
        self.teacher = copy.deepcopy(self.model).eval() if self.pruning_args.needs_teacher else None
        self.base_parameters = sum(p.numel() for p in self.model.parameters())
        trainer, keeper, step_eval = self._pruning_trainer()
        resume = self.output.resume and latest_pruning_checkpoint(self.work_dir / "prune")
        try:
            trainer.train(resume_from_checkpoint=True if resume else None)
        except TargetOutOfReachError as error:  # a max-drop run's ceiling: say so in the terms of the run asked for
            if keeper is None:
                raise
            raise ceiling_out_of_reach(error, self.targets.max_drop, self.targets.target_speedup, self.recovery.steps) from None
        self.model, self.history = trainer.model.eval(), list(trainer.pruning_history)
        self.teacher = trainer.teacher_model if self.teacher is not None else None  # under FSDP: a new, whole module
        self.speed_target, self.param_target = trainer.speedup_report, trainer.param_report
        self.reconstruction = trainer.reconstruction_reports or None
        self.selection = keeper and keeper.summary(len(step_eval))
        if keeper is not None:
            self._keep_chosen_step(keeper)
        del trainer, keeper
        release_memory()
        self.stopwatch.lap("prune + recover")
        if self.reconstruction:  # part of "prune + recover", reported on its own
            self.stopwatch.timings["reconstruct"] = sum(report["seconds"] for report in self.reconstruction)

    def _pruning_trainer(self) -> tuple[PruningTrainer, KeepFastestWithinDrop | None, Any]:
        """The trainer, the max-drop step keeper (or None) and the examples each pruning step is evaluated on."""
        targets, schedule, steps = self.targets, self.recovery.schedule, self.recovery.steps
        # Per-step evaluation only pays for an iterative schedule (its curve goes into the history).
        iterative = schedule == "iterative" and steps > 1
        data, tokenizer = self.data, self.tokenizer
        step_eval = tokenize_split(data, next(iter(data.eval.values())), tokenizer, self.model_data.max_length) if iterative else None
        callbacks, keeper = progress_callbacks(self.output.progress, "prune + recover"), None
        if targets.max_drop is not None:  # steps are evaluated (and chosen) on held-out TRAINING examples, never on dev
            self.train, step_eval = selection_split(self.train, self.model_data.seed)
            keeper = KeepFastestWithinDrop(data.spec.metrics[0], targets.max_drop)
            callbacks.append(keeper)
        epochs = self.recovery.recovery_epochs
        recovery = f"recovering ({epochs:g} epochs)" if epochs > 0 else "no recovery fine-tuning"
        self.say(f"pruning ({targets.method}, {schedule.replace('_', '-')}), {recovery}")
        trainer = PruningTrainer(
            model=self.model, args=self.pruning_args, train_dataset=self.train, eval_dataset=step_eval,
            processing_class=tokenizer, data_collator=self.collate,
            compute_metrics=None if data.is_lm else make_compute_metrics(data.spec), score_dataset=self.score_dataset,
            teacher_model=self.teacher, callbacks=callbacks, speed_timer=targets.speed_timer,
        )  # fmt: skip
        if self.output.progress is not None:
            quiet_trainer(trainer)
        return trainer, keeper, step_eval

    def _keep_chosen_step(self, keeper: KeepFastestWithinDrop) -> None:
        """A max-drop run's steps are candidates, not a closed loop: the speed table reports the chosen one."""
        self.speed_target = None
        if keeper.chosen_model is None:
            drops = ", ".join(f"step {entry['step']}: -{entry['drop_points']:.2f}" for entry in keeper.steps)
            raise PruningError(
                f"no pruning step stayed within {self.targets.max_drop:g} points of the dense model on the selection slice ({drops})"
            )
        self.model = keeper.chosen_model.to(self.model.device).eval()
        self.history = self.history[: keeper.chosen_step + 1]

    def evaluate_pruned(self) -> None:
        """The "after" metrics, on the same splits as the "before" ones."""
        self.say("evaluating the pruned model")
        self.metrics_after = on_main_process(lambda: self.evaluate(self.model, stage="evaluate pruned"))
        self.stopwatch.lap("evaluate after")

    def dense_control(self) -> None:
        """When the pruned model trained (recovery, L0 gates) and `dense_control`, the dense model trained on the same
        examples for the same steps and evaluated: the honest "before" the card compares with."""
        pruned_steps = sum(entry["train_steps"] for entry in self.history)
        if not self.recovery.dense_control or pruned_steps == 0 or "dense_control" in self.run_state:
            return
        self.say("training the dense model on the same examples for the same steps (the honest before)")
        self.run_state["dense_control"] = train_dense_control(
            self.teacher, self.source, self.data, self.work_dir, self.run_state, self.train, self.pruning_args,
            tokenizer=self.tokenizer, evaluate=lambda *args, **kwargs: on_main_process(lambda: self.evaluate(*args, **kwargs)),
            pruned_steps=pruned_steps, pruning_steps=len(self.history) - 1, progress=self.output.progress,
        )  # fmt: skip
        on_main_process(lambda: save_state(self.work_dir, self.run_state))
        self.stopwatch.lap("dense control")

    def time(self) -> None:
        """Dense vs pruned at `bench_batch_sizes` x `max_length` (the dense twin has the original shapes: speed does
        not depend on weight values); a decoder's user waits for prefill and every decoded token, so both are timed."""
        output, max_length = self.output, self.model_data.max_length
        self.speed = self.generation = self.llama_cpp = None
        if output.bench:
            self.say("timing dense vs pruned")
            self.speed = time_against_dense(
                self.model, self.teacher, batch_sizes=tuple(output.bench_batch_sizes), seq_lengths=(max_length,),
                num_threads=output.bench_threads, repeats=output.bench_repeats, device=self.device, progress=output.progress,
            )  # fmt: skip
            if self.data.is_lm:
                self.generation = generation_against_dense(
                    self.model, self.teacher, prompt_len=max_length, num_threads=output.bench_threads,
                    repeats=output.bench_repeats, device=self.device,
                )  # fmt: skip
            if output.gguf_dtype is not None:
                self.say(f"timing dense vs pruned in llama.cpp ({output.gguf_dtype})")
                self.llama_cpp = time_in_llama_cpp(
                    self.model, self.teacher, self.tokenizer, dtype=output.gguf_dtype, prompt_len=max_length,
                    threads=output.bench_threads or 1, repeats=output.bench_repeats,
                )  # fmt: skip
            self.stopwatch.lap("time")
        self.teacher = None  # the last stage that needs the dense model

    def write_output(self) -> None:
        """The `PruneResult`, and the output folder written atomically: model, tokenizer, card, heatmaps, results."""
        source, data, output, output_dir = self.source, self.data, self.output, self.output_dir
        self.result = result = PruneResult(
            output_dir=output_dir, base_model=source.display_name, task=data.name,
            metrics_before=self.run_state["metrics_before"], metrics_after=self.metrics_after,
            sparsity=sparsity_summary(self.model, self.base_parameters), finetuned_first=self.run_state["finetuned_first"],
            speed=self.speed, importance=self.importance, pruning_history=self.history, settings=self.settings,
            timings=self.stopwatch.timings, baselines=self.baselines, weak_baseline=self.weak,
            finetune=self.run_state.get("finetune"), dense_control=self.run_state.get("dense_control"),
            speed_target=self.speed_target, selection=self.selection, generation_speed=self.generation,
            param_target=self.param_target, reconstruction=self.reconstruction, llama_cpp_speed=self.llama_cpp.to_dict() if self.llama_cpp else None,
        )  # fmt: skip
        name = self.model_data.model_name_or_path
        command = output.command or python_call(
            "hfprune.prune_for_task", source.display_name, self.model_data.task, output_dir=output_dir.name, **self.settings
        )
        card_kwargs = prune_card_inputs(
            result, base_model=name, base_model_id=output.base_model_id, repo_id=output.repo_id or output_dir.name,
            task_name=data.card_task if isinstance(data.card_task, str) else data.name,
            base_num_parameters=self.base_parameters, command=command,
        )  # fmt: skip
        self.say(f"writing {output_dir}")
        write = functools.partial(
            write_output_folder, model=self.model, tokenizer=self.tokenizer,
            results={**result.to_dict(), "output_dir": output_dir.name}, card_kwargs=card_kwargs,
            card_task=data.card_task, speed=self.speed,
        )  # fmt: skip
        write_atomically(output_dir, write, overwrite=output.overwrite, inputs=self.inputs)
        self.stopwatch.lap("write")

    def export_gguf(self) -> None:
        """With `gguf_dtype`: the GGUF file for llama.cpp, written into the finished checkpoint once llama.cpp's
        logits match PyTorch's (`export_gguf`), and the card re-rendered with its llama.cpp lines. It comes after
        the checkpoint, so that a file that fails its check costs only itself: the checkpoint is complete."""
        dtype = self.output.gguf_dtype
        if dtype is None:
            return
        self.say(f"writing the {dtype} GGUF for llama.cpp")

        def export(path: Path) -> GgufExport:
            return export_gguf(self.model, path, dtype=dtype, tokenizer=self.tokenizer, overwrite=True)

        self.result.gguf = gguf_into_checkpoint(export, self.output_dir, dtype)
        self.stopwatch.lap("gguf")
