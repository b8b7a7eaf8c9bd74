"""`hfprune prune` and `hfprune drop-layers`: the commands that write a pruned checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from hfprune.constants import LAYER_STRATEGIES, PRUNING_METHODS, PRUNING_SCHEDULES, choices

from .common import GgufFileOption, MaxEvalOption, MaxLengthOption, TaskOption, check_fraction, command_line, handle_errors
from .common import fail, metrics_table, parse_ints, progress_display, quiet_libraries, warn, with_data_options

PRUNE_PANEL = "What to prune"
TRAIN_PANEL = "Training"
OUTPUT_PANEL = "Output"


def job_io(ctx: typer.Context, bars: Any, repo_id: str | None, base_model_id: str | None) -> dict[str, Any]:
    """What every writing job gets from the command line: the card's ids and command, progress and log."""
    return dict(repo_id=repo_id, base_model_id=base_model_id, command=command_line(ctx), progress=bars, log=bars.log)


def _default_output_dir(model: str, task: str, suffix: str = "pruned") -> Path:
    return Path(f"{Path(model.rstrip('/')).name}-{task}-{suffix}")


@with_data_options
def prune(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="Model directory or Hub id, e.g. bert-base-uncased (a new task head is fine-tuned first if it has none)."),
    task: str = TaskOption,
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="Where to write the pruned checkpoint; default ./MODEL-TASK-pruned.", rich_help_panel=OUTPUT_PANEL),
    data_options: dict[str, Any] | None = None,  # the task-data options, added by @with_data_options
    gguf_file: Optional[str] = GgufFileOption,
    heads: Optional[float] = typer.Option(None, "--heads", help="Fraction of all attention heads to remove, in [0, 1); default 0.4 (0 with --params, --speedup or --max-drop).", rich_help_panel=PRUNE_PANEL),
    speedup: Optional[float] = typer.Option(None, "--speedup", help="Prune until the model runs this many times faster than dense (measured on --device at --speedup-batch-size x --speedup-seq-len), choosing layers, heads and FFN neurons by importance per saved second.", rich_help_panel=PRUNE_PANEL),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", help="The fastest model within this many points of dense (chosen on a slice of train, reported on dev), among --steps (default 6) ever faster steps up to --speedup (default 4).", rich_help_panel=PRUNE_PANEL),
    speedup_batch_size: int = typer.Option(32, "--speedup-batch-size", min=1, help="Batch size the --speedup is measured and met at.", rich_help_panel=PRUNE_PANEL),
    speedup_seq_len: int = typer.Option(128, "--speedup-seq-len", min=1, help="Sequence length the --speedup is measured and met at.", rich_help_panel=PRUNE_PANEL),
    params: Optional[float] = typer.Option(None, "--params", help="Keep this fraction of the parameters, in (0, 1]; --heads, --ffn and --layers then only give the mix (none: allocated by importance per parameter across layers, heads and FFN neurons).", rich_help_panel=PRUNE_PANEL),
    prune_width: bool = typer.Option(False, "--prune-width", help="With --params alone, also prune the hidden width (the widths tried and their losses go into hfprune_results.json).", rich_help_panel=PRUNE_PANEL),
    ffn: float = typer.Option(0.0, "--ffn", help="Fraction of FFN neurons to remove, in [0, 1).", rich_help_panel=PRUNE_PANEL),
    layers: float = typer.Option(0.0, "--layers", help="Fraction of whole layers to drop, in [0, 1).", rich_help_panel=PRUNE_PANEL),
    layer_strategy: str = typer.Option("top", "--layer-strategy", help=f"Which layers go: {choices(LAYER_STRATEGIES)}.", rich_help_panel=PRUNE_PANEL),
    method: str = typer.Option("importance", "--method", help=f"Scores that pick what goes: {', '.join(PRUNING_METHODS)}.", rich_help_panel=PRUNE_PANEL),
    schedule: Optional[str] = typer.Option(None, "--schedule", help=f"{PRUNING_SCHEDULES[0]}, or {PRUNING_SCHEDULES[1]} (prune in --steps steps during recovery); default: {PRUNING_SCHEDULES[1]} with --speedup or more than one step, else {PRUNING_SCHEDULES[0]}.", rich_help_panel=PRUNE_PANEL),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Pruning steps (more than 1: iterative); default 2 with --speedup, 6 with --max-drop, else 1.", rich_help_panel=PRUNE_PANEL),
    per_layer: bool = typer.Option(False, "--per-layer", help="Rank heads within each layer instead of globally.", rich_help_panel=PRUNE_PANEL),
    epochs: float = typer.Option(1.0, "--epochs", min=0.0, help="Recovery fine-tuning epochs after pruning.", rich_help_panel=TRAIN_PANEL),
    finetune_epochs: Optional[float] = typer.Option(None, "--finetune-epochs", min=0.0, help="Most epochs to train a new task head first, when the model has none (early stopping on a slice of train); default 10 under 10,000 examples, else 3.", rich_help_panel=TRAIN_PANEL),
    allow_weak_baseline: bool = typer.Option(False, "--allow-weak-baseline", help="Prune even when the dense model is not clearly above the majority class (the card says so).", rich_help_panel=TRAIN_PANEL),
    no_dense_control: bool = typer.Option(False, "--no-dense-control", help="Skip training the dense model on the same examples for the same steps (the honest before the card compares with).", rich_help_panel=TRAIN_PANEL),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N or mps for training and timing; default: the GPU if there is one.", rich_help_panel=TRAIN_PANEL),
    learning_rate: float = typer.Option(5e-5, "--lr", min=0.0, help="Learning rate (fine-tuning and recovery).", rich_help_panel=TRAIN_PANEL),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Training batch size (evaluation uses twice this).", rich_help_panel=TRAIN_PANEL),
    distill: Optional[float] = typer.Option(None, "--distill", min=0.0, max=1.0, help="Weight of distillation from the dense model's logits during recovery (0: none); default 0.5 with --speedup or --max-drop, else 0.", rich_help_panel=TRAIN_PANEL),
    distill_layers: Optional[float] = typer.Option(None, "--distill-layers", min=0.0, help="Weight of layer-wise distillation: each kept layer's output pulled towards the dense model's same layer (0: none); default 1 with --speedup or --max-drop, else 0.", rich_help_panel=TRAIN_PANEL),
    score_examples: int = typer.Option(512, "--score-examples", min=1, help="Training examples used to score heads.", rich_help_panel=TRAIN_PANEL),
    max_train_samples: Optional[int] = typer.Option(None, "--max-train-samples", min=1, help="Train on a random subset of N examples (seeded).", rich_help_panel=TRAIN_PANEL),
    max_eval_samples: Optional[int] = MaxEvalOption,
    max_length: int = MaxLengthOption,
    seed: int = typer.Option(42, "--seed", help="Seed for sampling, initialisation and training.", rich_help_panel=TRAIN_PANEL),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty output directory (only once the new one is complete).", rich_help_panel=OUTPUT_PANEL),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run of the same command from its last checkpoint.", rich_help_panel=OUTPUT_PANEL),
    save_steps: int = typer.Option(200, "--save-steps", min=1, help="Checkpoint training every N steps (what --resume continues from).", rich_help_panel=OUTPUT_PANEL),
    bench: bool = typer.Option(True, "--bench/--no-bench", help="Time dense vs pruned and put the table on the card.", rich_help_panel=OUTPUT_PANEL),
    bench_batch_sizes: str = typer.Option("1,8,32", "--bench-batch-sizes", help="Batch sizes to time, comma-separated.", rich_help_panel=OUTPUT_PANEL),
    threads: Optional[int] = typer.Option(1, "--threads", min=1, help="CPU threads while timing (steadier on a shared machine).", rich_help_panel=OUTPUT_PANEL),
    repo_id: Optional[str] = typer.Option(None, "--repo-id", help="Hub repo id the card's loading code should use (see `hfprune push`).", rich_help_panel=OUTPUT_PANEL),
    base_model_id: Optional[str] = typer.Option(None, "--base-model-id", help="Hub id of the base model, for the card's base_model field (when MODEL is a local folder).", rich_help_panel=OUTPUT_PANEL),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (what would be removed, FLOPs, parameters) without training or writing anything.", rich_help_panel=OUTPUT_PANEL),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars.", rich_help_panel=OUTPUT_PANEL),
) -> None:
    """Prune MODEL for TASK: fine-tune a head if needed, score, prune, recover, evaluate, time, write a model card.

    Example: hfprune prune bert-base-uncased --task mnli --heads 0.4 --ffn 0.2 -o bert-mnli-pruned
    """
    for option, value in (("--heads", heads), ("--ffn", ffn), ("--layers", layers)):
        if value is not None:
            check_fraction(option, value)
    if params is not None and not 0.0 < params <= 1.0:
        fail(f"--params must be a fraction in (0, 1], got {params}")
    if prune_width and params is None:
        fail("--prune-width needs --params (the width is chosen to meet a parameter budget)")
    if speedup is not None and speedup <= 1.0:
        fail(f"--speedup must be above 1, got {speedup}")
    if max_drop is not None and max_drop < 0:
        fail(f"--max-drop must be a number of points >= 0, got {max_drop}")
    batch_sizes = parse_ints("--bench-batch-sizes", bench_batch_sizes)
    output_dir = output_dir or _default_output_dir(model, task)

    with handle_errors():
        quiet_libraries()
        from hfprune.jobs.prune import prune_for_task

        with progress_display(enabled=not quiet) as bars:
            result = prune_for_task(
                model,
                task,
                output_dir=output_dir,
                **data_options,
                gguf_file=gguf_file,
                head_sparsity=heads,
                ffn_sparsity=ffn,
                param_budget=params,
                prune_width=prune_width,
                target_speedup=speedup,
                speedup_batch_size=speedup_batch_size,
                speedup_seq_len=speedup_seq_len,
                max_drop=max_drop,
                layer_sparsity=layers,
                layer_strategy=layer_strategy,
                method=method,
                schedule=schedule,
                steps=steps,
                per_layer=per_layer,
                recovery_epochs=epochs,
                finetune_epochs=finetune_epochs,
                learning_rate=learning_rate,
                batch_size=batch_size,
                distillation_alpha=distill,
                distillation_layer_weight=distill_layers,
                score_num_examples=score_examples,
                max_train_samples=max_train_samples,
                max_eval_samples=max_eval_samples,
                max_length=max_length,
                seed=seed,
                allow_weak_baseline=allow_weak_baseline,
                dense_control=not no_dense_control,
                device=device,
                dry_run=dry_run,
                overwrite=overwrite,
                resume=resume,
                save_steps=save_steps,
                bench=bench,
                bench_batch_sizes=batch_sizes,
                bench_threads=threads,
                **job_io(ctx, bars, repo_id, base_model_id),
            )

    from rich.console import Console

    console = Console()
    if result.dry_run:
        _print_plan(console, result)
        return
    columns = {"dense": result.metrics_before, "pruned": result.metrics_after}
    if result.baselines:
        columns = {"majority class": {split: value["majority"] for split, value in result.baselines.items()}, **columns}
    console.print(metrics_table(f"{result.task}: dense vs pruned", columns))
    for unit, values in result.sparsity.items():
        console.print(f"{unit}: kept {values['kept']:,} of {values['original']:,} ({values['sparsity']:.1%} removed)")
    budget = result.param_target
    if budget:
        width = f", hidden width {budget['hidden_size']}" if budget["prune_width"] else ""
        console.print(f"parameter budget {budget['target_param_budget']:g}: kept {budget['parameters']:,} of {budget['dense_parameters']:,} ({budget['kept_fraction']:.1%}){width}")
    target = result.speed_target
    if target and target.get("measured_speedup") is not None:
        verdict = "met" if target["met"] else "missed"
        console.print(f"speed target {target['target_speedup']:.2f}x at batch {target['batch_size']} x {target['seq_len']}: predicted {target['predicted_speedup']:.2f}x, measured {target['measured_speedup']:.2f}x ({verdict})")
    if result.selection:
        console.print(f"chosen: pruning step {result.selection['chosen_step']}, {result.selection['protocol']}")
    if result.speed is not None:
        for row in result.speed.rows:
            if row["model"] != "dense":
                console.print(f"speedup at batch {row['batch_size']} x {row['seq_len']}: {row['speedup']:.2f}x (ideal {row['ideal_speedup']:.2f}x)")
    console.print(f"saved to {result.output_dir} (model card: {result.output_dir / 'README.md'})")
    if result.speed is not None and result.speed.noisy:
        warn(result.speed.noise_warning())
    if result.weak_baseline:
        warn(f"weak baseline: {result.weak_baseline}; pruned anyway (--allow-weak-baseline), and the card says so")


def _print_plan(console, result) -> None:
    """What `--dry-run` shows: the structure the plan keeps, and what it saves."""
    plan = result.settings
    console.print(f"dry run: the one-shot plan for {result.base_model} on {result.task}; nothing was trained or written")
    if plan.get("planned_on_untrained_head"):
        console.print("the model has no trained head yet: the real run fine-tunes one first, which can change gradient-based choices")
    layers = result.pruning_history[0] if result.pruning_history else {}
    for layer, heads in zip(layers.get("kept_layers") or [], layers.get("kept_heads") or []):
        console.print(f"layer {layer}: keeps {len(heads)} heads {heads}")
    for unit, values in result.sparsity.items():
        console.print(f"{unit}: would keep {values['kept']:,} of {values['original']:,} ({values['sparsity']:.1%} removed)")
    before, after = plan["flops_per_sequence_before"], plan["flops_per_sequence_after"]
    console.print(f"FLOPs per sequence of {plan['max_length']} tokens: {before / 1e9:.3f} G -> {after / 1e9:.3f} G (ideal speedup {plan['ideal_speedup']:.2f}x)")


@with_data_options
def drop_layers_command(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="Model directory or Hub id."),
    k: Optional[int] = typer.Option(None, "-k", "--num-layers", min=1, help="How many layers to drop (with --strategy)."),
    strategy: str = typer.Option("top", "--strategy", "-s", help=f"{choices(LAYER_STRATEGIES)} (contribution needs --task)."),
    layer: Optional[list[int]] = typer.Option(None, "--layer", help="Drop this original layer index instead (repeatable)."),
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help="Where to write the checkpoint."),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="Evaluate before/after on this task (and score layers for 'contribution')."),
    data_options: dict[str, Any] | None = None,  # the task-data options, added by @with_data_options
    gguf_file: Optional[str] = GgufFileOption,
    max_eval_samples: Optional[int] = MaxEvalOption,
    max_length: int = MaxLengthOption,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty output directory."),
    repo_id: Optional[str] = typer.Option(None, "--repo-id", help="Hub repo id for the card's loading code."),
    base_model_id: Optional[str] = typer.Option(None, "--base-model-id", help="Hub id of the base model, for the card's base_model field."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Drop whole layers (Sajjad et al. 2020 strategies) without fine-tuning and write the checkpoint + card.

    Example: hfprune drop-layers bert-base-uncased -k 4 --strategy top -o bert-8-layers
    """
    if (k is None) == (not layer):
        from .common import fail

        fail("give either -k/--num-layers (with --strategy) or --layer, not both")
    with handle_errors():
        quiet_libraries()
        from hfprune.jobs.prune import drop_layers_for_task

        kwargs = data_options
        kwargs["max_eval_samples"] = max_eval_samples
        with progress_display(enabled=not quiet) as bars:
            summary = drop_layers_for_task(
                model,
                output_dir,
                k=k,
                layers=layer or None,
                strategy=strategy,
                task=task,
                data_kwargs=kwargs,
                max_length=max_length,
                overwrite=overwrite,
                gguf_file=gguf_file,
                **job_io(ctx, bars, repo_id, base_model_id),
            )
    from rich.console import Console

    console = Console()
    console.print(f"dropped layers {summary['dropped_layers']}")
    if summary["metrics_before"] is not None:
        console.print(metrics_table(f"{task}: before vs after (no fine-tuning)", {"before": summary["metrics_before"], "after": summary["metrics_after"]}))
    console.print(f"saved to {output_dir}")
