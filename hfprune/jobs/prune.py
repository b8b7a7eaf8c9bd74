"""One call per job: prune a model for a task, evaluate it, drop layers, benchmark, all written atomically.

`prune_for_task` is what `hfprune prune MODEL --task TASK` runs: load the task and the model, fine-tune a
new task head first when the checkpoint has none, evaluate, score, prune and recover with `PruningTrainer`,
evaluate again, time dense vs pruned, and write the checkpoint, its model card and `hfprune_results.json`.
It keeps a flat keyword signature; its arguments are grouped in `hfprune.jobs.prune_arguments` and the run is
`hfprune.jobs.prune_job.PruneJob`, one named method per stage. The CLI only parses options and prints;
everything here is usable from Python as is. What the jobs share lives beside them: task data and evaluation
in `tasks`, model loading in `io.checkpoint`, fine-tuning and the Trainer arguments in `finetune`, the resume
state in `io.rundir`.

Bad input (unknown task, missing file or column, a model that does not exist, a sparsity outside [0, 1),
an output directory that already holds something) raises `PipelineInputError` before any heavy work. The
output is built in a temporary directory next to `output_dir` and renamed into place once complete, so a
failed or interrupted run never leaves a half-written checkpoint (or destroys the previous one).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .._validation import FRACTION
from ..constants import LAYER_STRATEGIES, PRUNE_DEFAULTS
from ..distributed import process_count
from ..engine.record import get_record
from ..engine.surgery import drop_layers
from ..errors import PipelineInputError, PruningError, first_line
from ..export.card import check_card_checkpoint, update_card_speed
from ..export.card_source import card_inputs
from ..io.checkpoint import load_model, load_model_for_task, resolve_model
from ..io.loading import from_pretrained
from ..io.output import check_output_dir, check_output_file, job_inputs, write_atomically
from ..measure.latency import Timer
from ..measure.speed import time_against_dense
from ..planning.plan import resolve_layers_to_drop
from ..progress import Progress
from ..scoring.similarity import layer_cosine_scores
from ..tasks.evaluate import evaluate_model
from ..tasks.specs import LM_TASK
from ..tasks.task_data import load_task_data, scoring_batches
from .bench import check_dense_base, check_sequence_lengths, load_dense_base
from .prune_arguments import parse_prune_arguments
from .prune_job import PruneJob
from .report_files import write_file_atomically, write_json_atomically
from .results import PruneResult, write_output_folder
from .stream import stream_prune_job

logger = logging.getLogger(__name__)
D = PRUNE_DEFAULTS

# The jobs. Their old module path, hfprune.pipeline, reads the names that moved from their homes (OLD_MODULE_PATHS).
__all__ = ["benchmark_checkpoint", "check_sparsity", "drop_layers_for_task", "prune_for_task"]


def check_sparsity(name: str, value: float) -> float:
    """A target fraction must be in [0, 1): removing everything is never a model."""
    return FRACTION.check(name, value, error=PipelineInputError)


def prune_for_task(
    model_name_or_path: str,
    task: str,
    *,
    output_dir: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    train_file: str | os.PathLike | None = None,
    validation_file: str | os.PathLike | None = None,
    text_columns: Sequence[str] | None = None,
    label_column: str = D["label_column"],
    label_names: Sequence[str] | None = None,
    gguf_file: str | None = None,
    stream: bool = D["stream"],
    head_sparsity: float | None = None,
    ffn_sparsity: float = D["ffn_sparsity"],
    layer_sparsity: float = D["layer_sparsity"],
    param_budget: float | None = None,
    prune_width: bool = D["prune_width"],
    target_speedup: float | None = None,
    speedup_batch_size: int = D["speedup_batch_size"],
    speedup_seq_len: int = D["speedup_seq_len"],
    latency_cache: bool = D["latency_cache"],
    max_drop: float | None = None,
    speed_timer: Timer | None = None,
    layer_strategy: str = D["layer_strategy"],
    method: str = D["method"],
    schedule: str | None = None,
    steps: int | None = None,
    per_layer: bool = D["per_layer"],
    uniform: bool = D["uniform"],
    round_to_multiple: int = D["round_to_multiple"],
    recovery_epochs: float = D["recovery_epochs"],
    finetune_epochs: float | None = None,
    learning_rate: float = D["learning_rate"],
    batch_size: int = D["batch_size"],
    distillation_alpha: float | None = None,
    distillation_layer_weight: float | None = None,
    score_num_examples: int = D["score_num_examples"],
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    max_length: int = D["max_length"],
    seed: int = D["seed"],
    allow_weak_baseline: bool = D["allow_weak_baseline"],
    dense_control: bool = D["dense_control"],
    reconstruct: bool = D["reconstruct"],
    reconstruct_method: str = D["reconstruct_method"],
    device: str | None = None,
    precision: str = D["precision"],
    fsdp: bool = D["fsdp"],
    dry_run: bool = D["dry_run"],
    overwrite: bool = D["overwrite"],
    resume: bool = D["resume"],
    save_steps: int = D["save_steps"],
    bench: bool = D["bench"],
    bench_batch_sizes: Sequence[int] = D["bench_batch_sizes"],
    bench_threads: int | None = None,
    bench_repeats: int = D["bench_repeats"],
    gguf_dtype: str | None = None,
    repo_id: str | None = None,
    base_model_id: str | None = None,
    command: str | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> PruneResult:
    """Prune `model_name_or_path` for `task` end to end and save the result to `output_dir`.

    The stages (`PruneJob.STAGES`): load the model and the task (a new task head is fine-tuned first, with early
    stopping, when the checkpoint has none); evaluate ("before") against the majority-class and chance baselines;
    score head importance on train examples (the card's heatmap); prune to the targets and recover with
    `PruningTrainer`; evaluate ("after"); with `dense_control`, train the dense model on the same examples for the
    same steps (the honest "before" the card compares with); time dense vs pruned (`bench`; decoders: prefill and
    decode too); write model, tokenizer, model card, heatmaps and `hfprune_results.json` atomically.

    The keywords come in four groups, each documented in `hfprune.jobs.prune_arguments`: the model and the data
    (`ModelDataArguments`); what to remove (`TargetArguments`): sparsities (`head_sparsity`, default 0.4 when no
    other target is given), or a `param_budget` (fraction of parameters kept), a `target_speedup` (measured at
    `speedup_batch_size` x `speedup_seq_len`) or a `max_drop` (the fastest model within that many points of the
    dense one; `latency_cache`: reuse the latency model measured for the same shapes and timing on this machine), with `uniform` the same heads and FFN width in every kept layer (stock shapes that transformers,
    vLLM, TGI, SGLang and llama.cpp load unchanged); how the pruned model recovers (`RecoveryArguments`: left None, a speed target uses
    `SPEED_TARGET_RECIPE`, other targets one step and no distillation); what is timed and written
    (`OutputArguments`). `precision` ("auto", "fp32", "bf16", "fp16"): what training computes in; "auto" is bf16
    on a CUDA GPU that computes it natively, else fp32. `fsdp=True` (under `torchrun`): recovery, distillation and
    the dense control train fully sharded (FSDP2), the teacher too, instead of DDP. `reconstruct=True` refits the kept units layer by layer against the dense model after each
    pruning step, before recovery; with `recovery_epochs=0` the job then trains nothing at all (no dense control)
    and reports the minutes reconstruction took (`timings["reconstruct"]`). Every default is in `hfprune.constants.PRUNE_DEFAULTS`, which the CLI and `PruningConfig`
    read too.

    A dense model that is not clearly above the trivial baselines raises `WeakBaselineError` (its state is kept:
    resume with `allow_weak_baseline=True` to prune it anyway, and the card then says so). `dry_run=True` loads
    and scores the model and returns the one-shot plan (`PruneResult.sparsity`, FLOPs in `settings`) without
    training or writing anything. Until it succeeds, the run keeps its state in `work_dir_for(output_dir)`; after
    a crash or a kill, the same call with `resume=True` continues from its last checkpoint (without `resume`, an
    interrupted run's directory is refused rather than thrown away).

    Returns:
        A `PruneResult`. Raises `PipelineInputError`/`TaskDataError` (both `ValueError`) for bad input,
        before any model weights are loaded.
    """
    arguments = parse_prune_arguments(locals())
    if arguments[0].stream:
        return stream_prune_job(*arguments)
    return PruneJob(*arguments).run()


def drop_layers_for_task(
    model_name_or_path: str,
    output_dir: str | os.PathLike,
    *,
    k: int | None = None,
    layers: Sequence[int] | None = None,
    strategy: str = "top",
    task: str | None = None,
    data_kwargs: Mapping[str, Any] | None = None,
    max_length: int = D["max_length"],
    batch_size: int = D["batch_size"],
    overwrite: bool = D["overwrite"],
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
    inputs = job_inputs(model_name_or_path, data_kwargs=data_kwargs)
    if process_count() > 1:  # nothing here trains: every rank would only write the same folder
        raise PipelineInputError("drop-layers runs as one process; launch it without torchrun")
    output_dir = check_output_dir(output_dir, overwrite, inputs=inputs)
    is_lm = task is not None and task.lower() == LM_TASK
    source = resolve_model(model_name_or_path, gguf_file=gguf_file, need_tokenizer=task is not None, causal_lm=is_lm)
    data = load_task_data(task, need_train=strategy == "contribution", **(data_kwargs or {})) if task else None

    try:  # what can be planned from the config is checked before any weights load
        layers = resolve_layers_to_drop(get_record(source.config)["kept_layers"], k=k, layers=layers, strategy=strategy)
    except PruningError as error:
        raise PipelineInputError(first_line(error)) from None

    say(f"loading {source.display_name}")
    if data is not None:
        model, tokenizer, _ = load_model_for_task(source, data)
    else:
        model, tokenizer = load_model(source)
    model.eval()
    if layers is None:  # the contribution strategy scores layers on training examples
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
    write_atomically(output_dir, write, overwrite=overwrite, inputs=inputs)
    return summary


def benchmark_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    base_model: str | None = None,
    batch_sizes: Iterable[int] = D["bench_batch_sizes"],
    seq_lengths: Iterable[int] = (D["max_length"],),
    num_threads: int | None = 1,
    repeats: int = D["bench_repeats"],
    warmup: int = 3,
    device: str | None = None,
    base_gguf_file: str | None = None,
    json_path: str | os.PathLike | None = None,
    plot_path: str | os.PathLike | None = None,
    update_card: bool = False,
    progress: Progress | None = None,
):
    """Time a pruned checkpoint against its dense original with `hfprune.measure.speed.measure_speed`.

    The dense model is `base_model` when given (`base_gguf_file`: a GGUF checkpoint in that folder), else a
    random-weight model with the original shapes (`hfprune.engine.record.unpruned_twin`): timing does not depend on
    weight values, so no download is needed. `json_path` / `plot_path`: also write the report as strict JSON and
    as a PNG there, atomically; `update_card`: store the timings in the checkpoint and re-render its card
    (`hfprune.export.card.update_card_speed`).

    Refused with a one-line `PipelineInputError` before any weights load or any timing runs: a `json_path` or
    `plot_path` that cannot be written (a directory, a read-only folder, under a file), a folder that is not a
    model, with `update_card` a folder whose card hfprune may not write (`check_card_checkpoint`), a sequence
    length beyond the model's `max_position_embeddings`, and a `base_model` of another family or another original
    size than the checkpoint, or itself pruned.
    """
    checkpoint = Path(checkpoint)
    inputs = job_inputs(checkpoint, base_model)
    for path, name, flag in ((json_path, "json_path", "--json"), (plot_path, "plot_path", "--plot")):
        if path is not None:
            check_output_file(path, name=name, cli_name=flag, inputs=inputs)
    if not (checkpoint / "config.json").is_file():
        raise PipelineInputError(f"{checkpoint} is not a model directory (no config.json)")
    seq_lengths, batch_sizes = tuple(seq_lengths), tuple(batch_sizes)
    source = resolve_model(checkpoint, need_tokenizer=False)
    if update_card:
        check_card_checkpoint(checkpoint)
    check_sequence_lengths(source.config, seq_lengths, model=f"the checkpoint {checkpoint}")
    base = None
    if base_model is not None:
        base = resolve_model(base_model, gguf_file=base_gguf_file, need_tokenizer=False)
        check_dense_base(source.config, base.config, base_model)
        check_sequence_lengths(base.config, seq_lengths, model=f"the base model {base_model}")
    pruned = from_pretrained(checkpoint).eval()
    dense = load_dense_base(base, pruned)
    try:
        report = time_against_dense(
            pruned, dense, batch_sizes=batch_sizes, seq_lengths=seq_lengths, num_threads=num_threads,
            repeats=repeats, warmup=warmup, device=device, progress=progress,
        )  # fmt: skip
    except PruningError as error:
        raise PipelineInputError(first_line(error)) from None
    if json_path is not None:
        write_json_atomically(json_path, report.to_dict())
    if plot_path is not None:
        write_file_atomically(plot_path, report.plot)
    if update_card:
        update_card_speed(checkpoint, report)
    return report
