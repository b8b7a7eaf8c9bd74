"""How much does the speed target's latency model move between fits, and do more timing repeats steady it?

    python benchmarks/latency_model_spread.py [--fits 3] [--repeats 5,15] [--threads 2]

Protocol (written into the JSON next to the numbers):
- The frontier's dense MiniLM-L6 (benchmarks/frontier.py, cached), `hfprune.measure_latency_model` at batch 32 x 128
  on this CPU with `--threads` threads, `--fits` times in a row for each number of timed repeats per model
  (`speed_timer(repeats=...)`; `prune_for_task` uses 5). Nothing else ran on the machine.
- Reported: each fit's seconds per head, per FFN neuron, per attention block and per MLP block, and the dense
  model's seconds; the spread is max / min over the fits of one setting.

Results: benchmarks/results/latency_model_spread.json.
"""

from __future__ import annotations

import argparse
import time

from common import CACHE, RESULTS, load_avg, log, protocol_of, save_json

import torch
from transformers import AutoModelForSequenceClassification

from hfprune.measure.latency import measure_latency_model, speed_timer

COSTS = ("head", "neuron", "attention", "mlp", "layer", "dense_seconds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fits", type=int, default=3)
    parser.add_argument("--repeats", default="5,15")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = AutoModelForSequenceClassification.from_pretrained(CACHE / "minilm-sst2-frontier").eval()
    result = {"protocol": protocol_of(__doc__), "fits": {}}
    for repeats in [int(value) for value in args.repeats.split(",")]:
        fits = []
        for _ in range(args.fits):
            start = time.time()
            timer = speed_timer(32, 128, num_threads=args.threads, repeats=repeats)
            latency = measure_latency_model(model, 32, 128, timer=timer)
            fits.append({**{name: getattr(latency, name) for name in COSTS}, "seconds": round(time.time() - start, 1), "load_average": load_avg()})
            log(repeats, fits[-1])
        result["fits"][str(repeats)] = fits
    save_json(RESULTS, "latency_model_spread.json", result)


if __name__ == "__main__":
    main()
