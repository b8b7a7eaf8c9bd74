"""MiniLM-L6 fine-tuned on SST-2, pruned WITHOUT any training: plain removal against reconstruction (issue 26).

    python benchmarks/reconstruction_sst2.py [--runs speed1.5:none,speed1.5:least_squares,...] [--threads 2]

Protocol (written into the JSON next to the numbers):
- Dense model: the frontier's MiniLM-L6 fine-tuned on SST-2 (benchmarks/frontier.py: 20,000 train examples,
  1 epoch; cached in benchmarks/.cache/minilm-sst2-frontier).
- Each run is one `hfprune.prune_for_task(dense, "sst2", recovery_epochs=0, dense_control=False, ...)` in a
  fresh process (its peak RSS is the run's): a `target_speedup` (measured at batch 32 x 128 on this CPU with
  `--threads` threads) or a `head_sparsity`; `reconstruct=True` with `reconstruct_method` "scales" (one scale per
  kept head and neuron) or "least_squares" (every kept column), fitted to the dense model's residual stream.
  Scoring and reconstruction use 512 examples of the GLUE folder's train.tsv, which is the frontier's recovery
  slice of SST-2 train (examples 20,000-22,000 of its shuffle, never seen by the dense fine-tune); dev is only
  evaluated. No training of any kind, so no dense control: "before" is the dense model as given.
- Reported: dev accuracy before and after (the job's own evaluation), the speedup the job measured (median of
  side-by-side timings at batch 32 x 128), the minutes of the whole call, the minutes of reconstruction, and
  the process's peak RSS.

Results: benchmarks/results/reconstruction_sst2.{json,md}; finished runs are kept, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from common import CACHE, FRONTIER_SLICES, RESULTS, SST2, load_avg, log, protocol_of, save_json, write_glue_folder

import torch

import hfprune

RUNS = (
    "speed1.5:none", "speed1.5:scales", "speed1.5:least_squares",
    "speed2:none", "speed2:least_squares",
    "heads0.4:none", "heads0.4:least_squares",
)  # fmt: skip
GOALS = "--speedup 1.5: >= 1.45x measured, within 1.0 point of dense, <= 5 minutes; 40% of heads: within 1.0 point"
BATCH, SEQ = 32, 128


def targets_of(run: str) -> dict[str, Any]:
    """`prune_for_task` keywords of one run name, e.g. "speed1.5:least_squares" or "heads0.4:none"."""
    target, method = run.split(":")
    kwargs: dict[str, Any] = {"reconstruct": method != "none"}
    if method != "none":
        kwargs["reconstruct_method"] = method
    if target.startswith("speed"):
        return {**kwargs, "target_speedup": float(target.removeprefix("speed"))}
    return {**kwargs, "head_sparsity": float(target.removeprefix("heads")), "ffn_sparsity": 0.0}


def one_run(run: str, glue: str, output: str, threads: int, queue) -> None:
    """A child process: one `prune_for_task` call; puts its row (or its error) on `queue`."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        result = hfprune.prune_for_task(
            str(CACHE / "minilm-sst2-frontier"), "sst2", output_dir=output, overwrite=True, data_dir=glue,
            recovery_epochs=0.0, dense_control=False, score_num_examples=512, max_length=SEQ, seed=0, device="cpu",
            bench_batch_sizes=(BATCH,), bench_threads=threads, speedup_batch_size=BATCH, speedup_seq_len=SEQ,
            log=lambda message: log(f"  [{run}] {message}"), **targets_of(run),
        )  # fmt: skip
    except hfprune.PruningError as error:
        queue.put({"run": run, "error": str(error)})
        return
    wall = time.perf_counter() - start
    speed = next(row for row in result.speed.rows if row["model"] == "pruned")
    queue.put({
        "run": run, "targets": targets_of(run),
        "dense_accuracy": result.metrics_before["validation"]["accuracy"],
        "accuracy": result.metrics_after["validation"]["accuracy"],
        "speedup": speed["speedup"], "ideal_speedup": speed["ideal_speedup"], "speed_noisy": result.speed.noisy,
        "kept": {unit: values["kept"] for unit, values in result.sparsity.items()},
        "minutes": round(wall / 60, 2), "reconstruct_minutes": round(result.timings.get("reconstruct", 0.0) / 60, 2),
        "timings_s": {key: round(value, 1) for key, value in result.timings.items()},
        "reconstruction_error": [
            (round(report["mean_error_before"], 4), round(report["mean_error_after"], 4)) for report in result.reconstruction or ()
        ],
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "speed_target": result.speed_target, "load_average": load_avg(),
    })  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not (CACHE / "minilm-sst2-frontier" / "config.json").exists():
        raise SystemExit("run benchmarks/frontier.py first: it fine-tunes and caches the dense MiniLM-L6")
    path = RESULTS / "reconstruction_sst2.json"
    result = json.loads(path.read_text()) if path.exists() else {"rows": []}
    result.update(protocol=protocol_of(__doc__), goals=GOALS, threads=args.threads)
    data = SST2(FRONTIER_SLICES, max_length=SEQ)
    scratch = Path(tempfile.mkdtemp(prefix="reconstruction-sst2-"))
    glue = write_glue_folder(data, "recovery", scratch / "glue")
    context = multiprocessing.get_context("spawn")
    for run in args.runs.split(","):
        if any(row["run"] == run for row in result["rows"]):
            continue
        log(f"{run}: {targets_of(run)}")
        queue = context.Queue()
        child = context.Process(target=one_run, args=(run, str(glue), str(scratch / "pruned"), args.threads, queue))
        child.start()
        row = queue.get()
        child.join()
        log(f"{run}: {row}")
        result["rows"].append(row)
        save_json(RESULTS, "reconstruction_sst2.json", result)
        (RESULTS / "reconstruction_sst2.md").write_text(markdown(result))


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# MiniLM-L6 / SST-2 without retraining: plain removal against reconstruction (`benchmarks/reconstruction_sst2.py`)",
        "", result["protocol"], "", f"Goals (issue 26): {result['goals']}.", "",
        "| run | dev accuracy (dense) | points | measured speedup (ideal) | kept heads / FFN neurons | minutes (reconstruction) | peak RSS |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]  # fmt: skip
    for row in result["rows"]:
        if "error" in row:
            lines.append(f"| {row['run']} | {row['error']} | | | | | |")
            continue
        kept = row["kept"]
        lines.append(
            f"| {row['run']} | {row['accuracy']:.4f} ({row['dense_accuracy']:.4f}) "
            f"| {100 * (row['accuracy'] - row['dense_accuracy']):+.2f} "
            f"| {row['speedup']:.2f}x ({row['ideal_speedup']:.2f}x){' noisy' if row['speed_noisy'] else ''} "
            f"| {kept.get('heads', '-')} / {kept.get('ffn_neurons', '-')} | {row['minutes']:.1f} ({row['reconstruct_minutes']:.1f}) "
            f"| {row['peak_rss_gb']:.2f} GB |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
