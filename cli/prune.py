"""`hfprune prune` and `hfprune drop-layers`: the commands that write a pruned checkpoint.

`prune`'s options come in groups (`TARGET_OPTIONS`, `TRAINING_OPTIONS`, `OUTPUT_OPTIONS`, and the task-data options
of `cli.common`), each defined once under the name of the `prune_for_task` keyword it sets, with the default of
`hfprune.constants.PRUNE_DEFAULTS` and the bounds of `hfprune._validation.SETTING_BOUNDS`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

from hfprune.constants import (
    CLI_BENCH_THREADS,
    FALLBACK_HEAD_SPARSITY,
    LAYER_STRATEGIES,
    MAX_DROP_CEILING,
    MAX_DROP_STEPS,
    PRECISIONS,
    PRUNE_DEFAULTS,
    PRUNING_METHODS,
    PRUNING_SCHEDULES,
    RECONSTRUCTION_METHODS,
    RECOVERY_RECIPE,
    SPEED_TARGET_RECIPE,
    choices,
)

from .common import (
    GgufFileOption,
    MaxEvalOption,
    MaxLengthOption,
    TaskOption,
    command_line,
    handle_errors,
    is_main_process,
    metrics_table,
    option_group,
    parse_ints,
    progress_display,
    quiet_libraries,
    warn,
    with_data_options,
    within,
)

PRUNE_PANEL = "What to prune"
TRAIN_PANEL = "Training"
OUTPUT_PANEL = "Output"
D, SPEED, PLAIN = PRUNE_DEFAULTS, SPEED_TARGET_RECIPE, RECOVERY_RECIPE


def _option(default: Any, *names: str, help: str, panel: str, **kwargs: Any) -> Any:
    return typer.Option(default, *names, help=help, rich_help_panel=panel, **kwargs)


TARGET_OPTIONS = {
    "head_sparsity": (Optional[float], _option(None, "--heads", help=f"Fraction of all attention heads to remove, in [0, 1); default {FALLBACK_HEAD_SPARSITY:g} (0 with --params, --speedup or --max-drop).", panel=PRUNE_PANEL)),
    "target_speedup": (Optional[float], _option(None, "--speedup", help="Prune until the model runs this many times faster than dense (measured on --device at --speedup-batch-size x --speedup-seq-len), choosing layers, heads and FFN neurons by importance per saved second.", panel=PRUNE_PANEL)),
    "max_drop": (Optional[float], _option(None, "--max-drop", **within("max_drop"), help=f"The fastest model within this many points of dense (chosen on a slice of train, reported on dev), among --steps (default {MAX_DROP_STEPS}) ever faster steps up to --speedup (default {MAX_DROP_CEILING:g}).", panel=PRUNE_PANEL)),
    "speedup_batch_size": (int, _option(D["speedup_batch_size"], "--speedup-batch-size", **within("speedup_batch_size"), help="Batch size the --speedup is measured and met at.", panel=PRUNE_PANEL)),
    "latency_cache": (bool, _option(D["latency_cache"], "--latency-cache/--no-latency-cache", help="Reuse the latency model measured before for the same model shapes, timing shape, threads and machine (kept under HF_HOME/hfprune/latency, or $HFPRUNE_LATENCY_CACHE), so two runs of one --speedup plan alike; --no-latency-cache measures it again.", panel=PRUNE_PANEL)),
    "speedup_seq_len": (int, _option(D["speedup_seq_len"], "--speedup-seq-len", **within("speedup_seq_len"), help="Sequence length the --speedup is measured and met at.", panel=PRUNE_PANEL)),
    "param_budget": (Optional[float], _option(None, "--params", help="Keep this fraction of the parameters, in (0, 1]; --heads, --ffn and --layers then only give the mix (none: allocated by importance per parameter across layers, heads and FFN neurons).", panel=PRUNE_PANEL)),
    "prune_width": (bool, _option(D["prune_width"], "--prune-width", help="With --params alone, also prune the hidden width (the widths tried and their losses go into hfprune_results.json).", panel=PRUNE_PANEL)),
    "ffn_sparsity": (float, _option(D["ffn_sparsity"], "--ffn", help="Fraction of FFN neurons to remove, in [0, 1).", panel=PRUNE_PANEL)),
    "layer_sparsity": (float, _option(D["layer_sparsity"], "--layers", help="Fraction of whole layers to drop, in [0, 1).", panel=PRUNE_PANEL)),
    "layer_strategy": (str, _option(D["layer_strategy"], "--layer-strategy", help=f"Which layers go: {choices(LAYER_STRATEGIES)}.", panel=PRUNE_PANEL)),
    "method": (str, _option(D["method"], "--method", help=f"Scores that pick what goes: {', '.join(PRUNING_METHODS)}.", panel=PRUNE_PANEL)),
    "schedule": (Optional[str], _option(None, "--schedule", help=f"{PRUNING_SCHEDULES[0]}, or {PRUNING_SCHEDULES[1]} (prune in --steps steps during recovery); default: {PRUNING_SCHEDULES[1]} with --speedup or more than one step, else {PLAIN['schedule']}.", panel=PRUNE_PANEL)),
    "steps": (Optional[int], _option(None, "--steps", **within("steps"), help=f"Pruning steps (more than 1: iterative); default {SPEED['steps']} with --speedup, {MAX_DROP_STEPS} with --max-drop, else {PLAIN['steps']}.", panel=PRUNE_PANEL)),
    "per_layer": (bool, _option(D["per_layer"], "--per-layer", help="Rank heads within each layer instead of globally.", panel=PRUNE_PANEL)),
    "round_to_multiple": (int, _option(D["round_to_multiple"], "--round-to-multiple", **within("round_to_multiple"), help="Keep every layer's FFN width a multiple of this (32 for llama.cpp's q8_0, 256 for its K-quants, 64 for GPU kernels).", panel=PRUNE_PANEL)),
    "uniform": (bool, _option(D["uniform"], "--uniform", help="Stock shapes: the same heads (KV groups) and FFN width in every kept layer and no layer without attention or MLP, whatever the target, so transformers, vLLM, TGI, SGLang and llama.cpp load the result without hfprune.", panel=PRUNE_PANEL)),
}  # fmt: skip

TRAINING_OPTIONS = {
    "recovery_epochs": (float, _option(D["recovery_epochs"], "--epochs", **within("recovery_epochs"), help="Recovery fine-tuning epochs after pruning.", panel=TRAIN_PANEL)),
    "finetune_epochs": (Optional[float], _option(None, "--finetune-epochs", **within("finetune_epochs"), help="Most epochs to train a new task head first, when the model has none (early stopping on a slice of train); default 10 under 10,000 examples, else 3.", panel=TRAIN_PANEL)),
    "allow_weak_baseline": (bool, _option(D["allow_weak_baseline"], "--allow-weak-baseline", help="Prune even when the dense model is not clearly above the majority class (the card says so).", panel=TRAIN_PANEL)),
    "reconstruct": (bool, _option(D["reconstruct"], "--reconstruct", help="After each pruning step, before recovery, refit the kept heads and FFN neurons layer by layer so that each block matches the dense model on training examples (with --epochs 0: no training at all).", panel=TRAIN_PANEL)),
    "reconstruct_method": (str, _option(D["reconstruct_method"], "--reconstruct-method", help=f"How --reconstruct refits each output projection: {choices(RECONSTRUCTION_METHODS)} (least_squares: every kept column; scales: one scale per kept head and FFN neuron; bias: the output biases alone, FLAP's compensation, adding zero biases to Llama first).", panel=TRAIN_PANEL)),
    "no_dense_control": (bool, _option(not D["dense_control"], "--no-dense-control", help="Skip training the dense model on the same examples for the same steps (the honest before the card compares with).", panel=TRAIN_PANEL)),
    "device": (Optional[str], _option(None, "--device", help="cpu, cuda, cuda:N or mps for training and timing; default: the GPU if there is one.", panel=TRAIN_PANEL)),
    "fsdp": (bool, _option(D["fsdp"], "--fsdp", help="Under torchrun: train recovery, distillation and the dense control fully sharded (FSDP2), the teacher too, instead of DDP; scoring and surgery run on the whole model between the phases.", panel=TRAIN_PANEL)),
    "precision": (str, _option(D["precision"], "--precision", help=f"What training computes in: {choices(PRECISIONS)} (bf16, fp16: mixed precision, fp32 weights); {D['precision']}: bf16 on a CUDA GPU that computes it natively (Ampere and later), else fp32.", panel=TRAIN_PANEL)),
    "learning_rate": (float, _option(D["learning_rate"], "--lr", **within("learning_rate"), help="Learning rate (fine-tuning and recovery).", panel=TRAIN_PANEL)),
    "batch_size": (int, _option(D["batch_size"], "--batch-size", **within("batch_size"), help="Training batch size (evaluation uses twice this).", panel=TRAIN_PANEL)),
    "distillation_alpha": (Optional[float], _option(None, "--distill", **within("distillation_alpha"), help=f"Weight of distillation from the dense model's logits during recovery (0: none); default {SPEED['distillation_alpha']:g} with --speedup or --max-drop, else {PLAIN['distillation_alpha']:g}.", panel=TRAIN_PANEL)),
    "distillation_layer_weight": (Optional[float], _option(None, "--distill-layers", **within("distillation_layer_weight"), help=f"Weight of layer-wise distillation: each kept layer's output pulled towards the dense model's same layer (0: none); default {SPEED['distillation_layer_weight']:g} with --speedup or --max-drop, else {PLAIN['distillation_layer_weight']:g}.", panel=TRAIN_PANEL)),
    "score_num_examples": (int, _option(D["score_num_examples"], "--score-examples", **within("score_num_examples"), help="Training examples used to score heads.", panel=TRAIN_PANEL)),
    "max_train_samples": (Optional[int], _option(None, "--max-train-samples", **within("max_train_samples"), help="Train on a random subset of N examples (seeded).", panel=TRAIN_PANEL)),
    "max_eval_samples": (Optional[int], MaxEvalOption),
    "max_length": (int, MaxLengthOption),
    "stream": (bool, _option(D["stream"], "--stream", help="For models larger than memory: read the checkpoint one layer at a time from its safetensors files; --task lm with --params, planned from forward-only scores, cut tensor by tensor, no training.", panel=TRAIN_PANEL)),
    "seed": (int, _option(D["seed"], "--seed", **within("seed"), help="Seed for sampling, initialisation and training.", panel=TRAIN_PANEL)),
}  # fmt: skip

OUTPUT_OPTIONS = {
    "overwrite": (bool, _option(D["overwrite"], "--overwrite", help="Replace a non-empty output directory (only once the new one is complete).", panel=OUTPUT_PANEL)),
    "resume": (bool, _option(D["resume"], "--resume", help="Continue an interrupted run of the same command from its last checkpoint.", panel=OUTPUT_PANEL)),
    "save_steps": (int, _option(D["save_steps"], "--save-steps", **within("save_steps"), help="Checkpoint training every N steps (what --resume continues from).", panel=OUTPUT_PANEL)),
    "bench": (bool, _option(D["bench"], "--bench/--no-bench", help="Time dense vs pruned and put the table on the card.", panel=OUTPUT_PANEL)),
    "bench_batch_sizes": (str, _option(",".join(map(str, D["bench_batch_sizes"])), "--bench-batch-sizes", help="Batch sizes to time, comma-separated.", panel=OUTPUT_PANEL)),
    "bench_threads": (Optional[int], _option(CLI_BENCH_THREADS, "--threads", **within("bench_threads"), help="CPU threads while timing (steadier on a shared machine).", panel=OUTPUT_PANEL)),
    "gguf_dtype": (Optional[str], _option(None, "--gguf-dtype", help="--task lm, Llama family: also write model-TYPE.gguf for llama.cpp (f32, f16, bf16, q8_0, q4_k_m, ...), checked in llama.cpp, and time it there beside the dense model (needs hfprune[gguf]).", panel=OUTPUT_PANEL)),
    "repo_id": (Optional[str], _option(None, "--repo-id", help="Hub repo id the card's loading code should use (see `hfprune push`).", panel=OUTPUT_PANEL)),
    "base_model_id": (Optional[str], _option(None, "--base-model-id", help="Hub id of the base model, for the card's base_model field (when MODEL is a local folder).", panel=OUTPUT_PANEL)),
    "dry_run": (bool, _option(D["dry_run"], "--dry-run", help="Print the plan (what would be removed, FLOPs, parameters) without training or writing anything.", panel=OUTPUT_PANEL)),
    "quiet": (bool, _option(False, "--quiet", "-q", help="No progress bars.", panel=OUTPUT_PANEL)),
}  # fmt: skip


def _training(no_dense_control: bool, **values: Any) -> dict[str, Any]:
    return {**values, "dense_control": not no_dense_control}


def _output(bench_batch_sizes: str, **values: Any) -> dict[str, Any]:
    return {**values, "bench_batch_sizes": parse_ints("--bench-batch-sizes", bench_batch_sizes)}


def job_io(ctx: typer.Context, bars: Any, repo_id: str | None, base_model_id: str | None) -> dict[str, Any]:
    """What every writing job gets from the command line: the card's ids and command, progress and log."""
    return dict(repo_id=repo_id, base_model_id=base_model_id, command=command_line(ctx), progress=bars, log=bars.log)


def _default_output_dir(model: str, task: str, suffix: str = "pruned") -> Path:
    return Path(f"{Path(model.rstrip('/')).name}-{task}-{suffix}")


@with_data_options
@option_group("output", OUTPUT_OPTIONS, _output)
@option_group("training", TRAINING_OPTIONS, _training)
@option_group("targets", TARGET_OPTIONS)
def prune(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="Model directory or Hub id, e.g. bert-base-uncased (a new task head is fine-tuned first if it has none)."),
    task: str = TaskOption,
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="Where to write the pruned checkpoint; default ./MODEL-TASK-pruned.", rich_help_panel=OUTPUT_PANEL),
    gguf_file: Optional[str] = GgufFileOption,
    targets: dict[str, Any] | None = None,  # the option groups, added by @option_group and @with_data_options
    training: dict[str, Any] | None = None,
    output: dict[str, Any] | None = None,
    data_options: dict[str, Any] | None = None,
) -> None:
    """Prune MODEL for TASK: fine-tune a head if needed, score, prune, recover, evaluate, time, write a model card.

    Example: hfprune prune bert-base-uncased --task mnli --heads 0.4 --ffn 0.2 -o bert-mnli-pruned
    """
    quiet = output.pop("quiet")
    output_dir = output_dir or _default_output_dir(model, task)
    main_process = is_main_process()  # under torchrun: rank 0 alone shows progress and the result

    with handle_errors():
        quiet_libraries()
        from hfprune.jobs.prune import prune_for_task

        with progress_display(enabled=not quiet and main_process) as bars:
            result = prune_for_task(
                model, task, output_dir=output_dir, gguf_file=gguf_file, **data_options, **targets, **training,
                **output, command=command_line(ctx), progress=bars, log=bars.log,
            )  # fmt: skip
    if main_process:
        _print_result(result)
    _leave_process_group()


def _leave_process_group() -> None:
    """Under torchrun, leave the process group before the interpreter exits: left to its shutdown, gloo's threads
    can abort a finished process on a loaded machine. Alone, nothing to do."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _print_result(result) -> None:
    """What a run shows: dense vs pruned, what was kept, the targets it met or missed, the speedups, warnings."""
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
            if row["model"].startswith("pruned"):
                dtype = row["model"].removeprefix("pruned").strip()
                console.print(f"speedup{f' in {dtype}' if dtype else ''} at batch {row['batch_size']} x {row['seq_len']}: {row['speedup']:.2f}x (ideal {row['ideal_speedup']:.2f}x)")
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
    if "stock_loadable" in plan:
        stock = "stock (plain transformers loads it)" if plan["stock_loadable"] else "per-layer (hfprune.from_pretrained loads it)"
        console.print(f"shapes: {stock}")
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
