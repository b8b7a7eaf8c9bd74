"""`hfprune score`, `eval`, `bench` and `card`: commands that measure or describe a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from hfprune.constants import IMPORTANCE_IMAGE, SCORES_FILE, SCORING_METHODS, choices

from .common import (
    GgufFileOption,
    MaxEvalOption,
    MaxLengthOption,
    TaskOption,
    fail,
    handle_errors,
    metrics_table,
    parse_ints,
    progress_display,
    quiet_libraries,
    warn,
    with_data_options,
)


@with_data_options
def score(
    model: str = typer.Argument(..., help="Model directory or Hub id (ideally already fine-tuned on the task)."),
    task: str = TaskOption,
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help=f"Where to write {SCORES_FILE} and {IMPORTANCE_IMAGE}."),
    method: str = typer.Option("importance", "--method", help=f"{choices(SCORING_METHODS)} (importance: Michel et al.)."),
    num_examples: int = typer.Option(512, "--num-examples", "-n", min=1, help="Training examples to score on (never the eval split)."),
    data_options: dict[str, Any] | None = None,  # the task-data options, added by @with_data_options
    gguf_file: Optional[str] = GgufFileOption,
    max_length: int = MaxLengthOption,
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    seed: int = typer.Option(42, "--seed", help="Seed for the training subset (and for 'random')."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty output directory."),
) -> None:
    """Score every attention head of MODEL on TASK; write the scores (JSON) and a heatmap. Changes nothing.

    Example: hfprune score ./bert-sst2 --task sst2 -o scores/
    """
    with handle_errors():
        quiet_libraries()
        import torch

        from hfprune.jobs.score import score_task

        if method not in SCORING_METHODS:
            fail(f"unknown --method {method!r}; choose {choices(SCORING_METHODS)}")
        kwargs = data_options
        payload = score_task(
            model, task, output_dir=output_dir, method=method, num_examples=num_examples, batch_size=batch_size,
            max_length=max_length, seed=seed, gguf_file=gguf_file, data_kwargs=kwargs, overwrite=overwrite, log=warn,
        )  # fmt: skip
    scores = torch.tensor([[float("nan") if v is None else v for v in row] for row in payload["scores"]])
    finite = scores[~torch.isnan(scores)]
    typer.echo(f"scored {scores.shape[0]} layers x {scores.shape[1]} heads ({method}, {payload['num_examples']} examples); "
               f"min {finite.min():.4f}, max {finite.max():.4f}")  # fmt: skip
    typer.echo(f"wrote {output_dir / SCORES_FILE} and {output_dir / IMPORTANCE_IMAGE}")


@with_data_options
def evaluate(
    model: str = typer.Argument(..., help="Model directory (pruned or not) or Hub id."),
    task: str = TaskOption,
    data_options: dict[str, Any] | None = None,  # the task-data options, added by @with_data_options
    gguf_file: Optional[str] = GgufFileOption,
    max_eval_samples: Optional[int] = MaxEvalOption,
    max_length: int = MaxLengthOption,
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the metrics to this JSON file (strict JSON: an undefined metric is null)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Evaluate MODEL on every eval split of TASK (both MNLI dev sets) with GLUE's metrics.

    Example: hfprune eval ./bert-mnli-pruned --task mnli
    """
    with handle_errors():
        quiet_libraries()
        from hfprune.jobs.evaluate import evaluate_checkpoint

        with progress_display(enabled=not quiet) as bars:
            result = evaluate_checkpoint(
                model, task, json_path=json_path, data_kwargs=data_options, max_eval_samples=max_eval_samples,
                max_length=max_length, batch_size=batch_size, gguf_file=gguf_file, progress=bars, log=warn,
            )  # fmt: skip
    from rich.console import Console

    Console().print(metrics_table(f"{model} on {result['task']}", {"value": result["metrics"]}))


ENGINES = ("pytorch", "llama.cpp")


def bench(
    checkpoint: Path = typer.Argument(..., help="A pruned checkpoint directory."),
    base: Optional[str] = typer.Option(None, "--base", help="The dense model to compare with; default: random weights with the original shapes."),
    gguf_file: Optional[str] = typer.Option(None, "--gguf-file", help="The --base model is this GGUF checkpoint inside the --base folder."),
    engine: str = typer.Option("pytorch", "--engine", help="pytorch (forward passes at --batch-sizes x --seq-lengths) or llama.cpp (both models exported to GGUF at --dtype; prefill and decode tokens/s; Llama family)."),
    batch_sizes: str = typer.Option("1,8,32", "--batch-sizes", help="pytorch: comma-separated batch sizes."),
    seq_lengths: str = typer.Option("128", "--seq-lengths", help="pytorch: comma-separated sequence lengths."),
    dtype: str = typer.Option("q8_0", "--dtype", help="llama.cpp: the GGUF type both models are timed at (f32, f16, bf16, q8_0, q4_k_m...)."),
    prompt_len: int = typer.Option(128, "--prompt-len", min=1, help="llama.cpp: prompt tokens (prefill)."),
    new_tokens: int = typer.Option(32, "--new-tokens", min=1, help="llama.cpp: greedy tokens generated after the prompt (decode)."),
    threads: Optional[int] = typer.Option(1, "--threads", min=1, help="CPU threads (pinned while timing)."),
    repeats: int = typer.Option(10, "--repeats", min=1, help="Timed repeats per shape."),
    warmup: int = typer.Option(3, "--warmup", min=0, help="Untimed warm-up rounds per shape."),
    device: Optional[str] = typer.Option(None, "--device", help="pytorch: cpu, cuda, cuda:1, ...; default: the GPU if there is one."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the report as JSON."),
    plot_path: Optional[Path] = typer.Option(None, "--plot", help="pytorch: write a throughput/speedup PNG."),
    update_card: bool = typer.Option(False, "--update-card", help="Store the timings in the checkpoint and re-render its model card."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Time a pruned checkpoint against its dense original (latency, throughput, FLOPs, speedup), in PyTorch or,
    for the Llama family, in llama.cpp where it is served.

    Examples: hfprune bench ./bert-mnli-pruned --batch-sizes 1,8,32 --threads 1
              hfprune bench ./smollm-pruned --engine llama.cpp --dtype q8_0 --threads 2
    """
    if engine not in ENGINES:
        fail(f"unknown --engine {engine!r}; choose {', '.join(ENGINES)}")
    if engine == "llama.cpp":
        if plot_path is not None or device not in (None, "cpu"):
            fail("--plot and --device are for --engine pytorch; llama.cpp is timed on the CPU")
        with handle_errors():
            quiet_libraries()
            from hfprune.jobs.llama_cpp_bench import benchmark_llama_cpp

            report = benchmark_llama_cpp(
                checkpoint, base_model=base, base_gguf_file=gguf_file, dtype=dtype, prompt_len=prompt_len,
                new_tokens=new_tokens, threads=threads or 1, repeats=repeats, warmup=warmup, json_path=json_path,
                update_card=update_card,
            )  # fmt: skip
    else:
        sizes, lengths = parse_ints("--batch-sizes", batch_sizes), parse_ints("--seq-lengths", seq_lengths)
        with handle_errors():
            quiet_libraries()
            from hfprune.jobs.prune import benchmark_checkpoint

            with progress_display(enabled=not quiet) as bars:
                report = benchmark_checkpoint(
                    checkpoint, base_model=base, base_gguf_file=gguf_file, batch_sizes=sizes, seq_lengths=lengths,
                    num_threads=threads, repeats=repeats, warmup=warmup, device=device, json_path=json_path,
                    plot_path=plot_path, update_card=update_card, progress=bars,
                )  # fmt: skip
    typer.echo(report.table())
    if report.noisy:
        warn(report.noise_warning())
    if update_card:
        typer.echo(f"updated {checkpoint / 'README.md'}")


def card(
    checkpoint: Path = typer.Argument(..., help="A pruned checkpoint directory."),
    repo_id: Optional[str] = typer.Option(None, "--repo-id", help="Hub repo id the loading code should use (default: the folder name)."),
    base_model: Optional[str] = typer.Option(None, "--base-model", help="Base model to name (default: the one recorded by `hfprune prune`)."),
    task: Optional[str] = typer.Option(None, "--task", help="Task to name (default: the one recorded)."),
    base_model_id: Optional[str] = typer.Option(None, "--base-model-id", help="Hub id of the base model, for the card's base_model metadata (when it was pruned from a local copy)."),
) -> None:
    """(Re)write README.md and the heatmaps of a pruned checkpoint from its config and hfprune_results.json.

    Refuses a folder hfprune did not write, and one whose weights would not load; its README.md is left as it is.

    Example: hfprune card ./bert-mnli-pruned --repo-id me/bert-mnli-pruned
    """
    with handle_errors():
        quiet_libraries()
        from hfprune.export.card import regenerate_model_card

        regenerate_model_card(checkpoint, repo_id=repo_id, base_model=base_model, task=task, base_model_id=base_model_id)
    typer.echo(f"wrote {checkpoint / 'README.md'}")
