"""How steady is `--speedup 3`? The same command run three times, end to end, with and without the kept latency
model (issue 26's goal: two runs keep heads and FFN neurons within 10% of each other).

    python benchmarks/speed_target_steadiness.py [--target 3] [--threads 2]

Protocol (written into the JSON next to the numbers):
- Dense model: the frontier's MiniLM-L6 fine-tuned on SST-2 (benchmarks/frontier.py, cached). Each run is one
  `hfprune.prune_for_task(dense, "sst2", target_speedup=TARGET, recovery_epochs=0, dense_control=False,
  score_num_examples=512, seed=0)` in a fresh process, timed at batch 32 x 128 on this CPU with `--threads` threads;
  scoring uses 512 examples of the frontier's recovery slice of SST-2 train. No training, so the scores, and
  with them any difference between runs, come only from the latency model and the measured corrections.
- Three runs in a row on this shared machine (each row keeps the load average after it; whatever else runs beside
  them is the noise a user's machine has too), all with one empty latency cache folder
  (`HFPRUNE_LATENCY_CACHE`): "kept 1" (`latency_cache=True`: fits the latency model and keeps it), "kept 2"
  (`latency_cache=True`: reuses that fit), "fresh" (`latency_cache=False`: fits again, as every run did before
  the cache). Spread "fresh fits" = kept 1 against fresh (two independent fits: before); spread "kept fit" =
  kept 1 against kept 2 (after).
- Reported per run: kept heads, FFN neurons and layers, the planned steps, the speedup the job measured, dev
  accuracy, minutes and where its latency model came from; per pair, max / min of each count (goal <= 1.1).

Results: benchmarks/results/speed_target_steadiness.{json,md}.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from common import CACHE, FRONTIER_SLICES, RESULTS, SST2, load_avg, log, protocol_of, save_json, write_glue_folder
from smollm_width import git_commit

import torch

import hfprune

BATCH, SEQ = 32, 128
RUNS = (("kept 1", True), ("kept 2", True), ("fresh", False))
PAIRS = {"fresh fits": ("kept 1", "fresh"), "kept fit": ("kept 1", "kept 2")}
COUNTS = ("heads", "ffn_neurons", "layers")


def one_run(name: str, latency_cache: bool, target: float, glue: str, output: str, threads: int, cache_dir: str, queue) -> None:
    """A child process: one `prune_for_task` call; puts its row on `queue`."""
    os.environ["HFPRUNE_LATENCY_CACHE"] = cache_dir
    torch.set_num_threads(threads)
    start = time.perf_counter()
    result = hfprune.prune_for_task(
        str(CACHE / "minilm-sst2-frontier"), "sst2", output_dir=output, overwrite=True, data_dir=glue,
        target_speedup=target, recovery_epochs=0.0, dense_control=False, score_num_examples=512, max_length=SEQ,
        seed=0, device="cpu", bench=False, speedup_batch_size=BATCH, speedup_seq_len=SEQ, latency_cache=latency_cache,
        log=lambda message: log(f"  [{name}] {message}"),
    )  # fmt: skip
    speed = result.speed_target
    queue.put({
        "run": name, "latency_cache": latency_cache, "latency_source": speed.get("latency_source"),
        "kept": {unit: values["kept"] for unit, values in result.sparsity.items()},
        "steps": len(speed["measurements"]), "measured_speedup": speed["measured_speedup"],
        "predicted_speedup": speed["predicted_speedup"], "measurements": speed["measurements"],
        "dense_accuracy": result.metrics_before["validation"]["accuracy"],
        "accuracy": result.metrics_after["validation"]["accuracy"],
        "minutes": round((time.perf_counter() - start) / 60, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2), "load_average": load_avg(),
    })  # fmt: skip


def spread(rows: dict[str, dict[str, Any]], pair: tuple[str, str]) -> dict[str, float]:
    """max / min of each kept count over the pair's two runs."""
    first, second = (rows[name]["kept"] for name in pair)
    return {unit: max(first[unit], second[unit]) / max(min(first[unit], second[unit]), 1) for unit in COUNTS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not (CACHE / "minilm-sst2-frontier" / "config.json").exists():
        raise SystemExit("run benchmarks/frontier.py first: it fine-tunes and caches the dense MiniLM-L6")
    scratch = Path(tempfile.mkdtemp(prefix="steadiness-"))
    glue = write_glue_folder(SST2(FRONTIER_SLICES, max_length=SEQ), "recovery", scratch / "glue")
    context = multiprocessing.get_context("spawn")
    rows: dict[str, dict[str, Any]] = {}
    for name, latency_cache in RUNS:
        log(f"{name}: target_speedup={args.target}, latency_cache={latency_cache}")
        queue = context.Queue()
        run_args = (name, latency_cache, args.target, str(glue), str(scratch / "pruned"), args.threads, str(scratch / "latency"), queue)
        child = context.Process(target=one_run, args=run_args)
        child.start()
        rows[name] = queue.get()
        child.join()
        log(f"{name}: {rows[name]['kept']}, {rows[name]['measured_speedup']:.2f}x, {rows[name]['latency_source']}")
    result = {
        "protocol": protocol_of(__doc__).replace("TARGET", f"{args.target:g}"), "target_speedup": args.target,
        "threads": args.threads, "hfprune_commit": git_commit(), "runs": list(rows.values()),
        "spread": {label: spread(rows, pair) for label, pair in PAIRS.items()},
    }  # fmt: skip
    save_json(RESULTS, "speed_target_steadiness.json", result)
    (RESULTS / "speed_target_steadiness.md").write_text(markdown(result))
    log(f"spread: {result['spread']}")


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Two runs of `--speedup {result['target_speedup']:g}`, with and without the kept latency model (`benchmarks/speed_target_steadiness.py`)",
        "", result["protocol"], "",
        "| run | latency model | kept heads / FFN neurons / layers | steps | measured speedup | dev accuracy (dense) | minutes |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]  # fmt: skip
    for row in result["runs"]:
        kept = row["kept"]
        lines.append(
            f"| {row['run']} | {row['latency_source']} | {kept['heads']} / {kept['ffn_neurons']} / {kept['layers']} | {row['steps']} "
            f"| {row['measured_speedup']:.2f}x | {row['accuracy']:.4f} ({row['dense_accuracy']:.4f}) | {row['minutes']:.1f} |"
        )
    lines += ["", "| pair | heads (max/min) | FFN neurons | layers | goal (<= 1.1) |", "| --- | ---: | ---: | ---: | --- |"]
    for label, values in result["spread"].items():
        met = "met" if max(values.values()) <= 1.1 else "not met"
        lines.append(f"| {label} | {values['heads']:.2f} | {values['ffn_neurons']:.2f} | {values['layers']:.2f} | {met} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
