"""How much do the speed target's latency model and the plans it makes move between fits?

    python benchmarks/latency_model_spread.py [--fits 3] [--repeats 5] [--threads 2] [--target 3] [--score-examples 512]

Protocol (written into the JSON next to the numbers):
- The frontier's dense MiniLM-L6 (benchmarks/frontier.py, cached), `hfprune.measure_latency_model` at batch 32 x 128
  on this CPU with `--threads` threads, `--fits` times in a row, each with the default timer (`speed_timer`, 2
  warm-up and `--repeats` timed rounds per call; `prune_for_task` times 5). Nothing else ran on the machine.
- The fit: `measure_latency_model` as it is at the commit recorded in the JSON. The v2 results were measured with a
  candidate fit that was NOT merged: least squares over the dense model and nine pruned copies (3/4, 1/2, 1/4 and
  none of the heads and of the FFN neurons, half the layers), three models per timer call, the attention, MLP and
  empty-layer overheads shrunk toward 0 by their noise. Its plans spread more than the one-pair fits' (below), and
  it took about 100 s per fit against about 45 s, so hfprune kept the one-pair fit.
  Reported per fit: every cost, the dense seconds, each copy's seconds and the fit's wall time; per cost, the
  spread (max / min over the fits; null when a fit put it at 0).
- The plans: importance scores computed ONCE, on the first `--score-examples` examples of the frontier's recovery
  slice (shuffle positions from 20,000; max length 128), as `PruningTrainer` allocates a speed target: heads and
  FFN neurons by unnormalised gradient importance (`importance_scores`), layers by their measured loss increase
  (`layer_ablation_scores`). Each fit then plans `--target`x in one step (`prune_for_task` plans two and corrects
  them by measurement; one step isolates the latency model) with `calibrated_allocation` on those scores and
  examples, as `SpeedTarget.plan` does (no rounding of FFN widths), and with `allocate_for_time` on the raw scores.
  Reported per fit: kept heads, kept FFN neurons, dropped layers, emptied attention blocks and the predicted
  speedup; per count, the spread (max / min over the fits). The issue's goal: within 10% (max / min <= 1.1).
- The baseline: the same plans for the one-pair fits of latency_model_spread.json (the fit this one replaced, its
  `fixed` being what the dense seconds leave), on the same scores.

Results: benchmarks/results/latency_model_spread_v2.json (latency_model_spread.json: the one-pair fits' costs).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from typing import Any

import torch
from common import CACHE, FRONTIER_SLICES, RESULTS, SST2, load_avg, log, protocol_of, save_json
from transformers import AutoModelForSequenceClassification

from hfprune.measure.latency import LatencyModel, measure_latency_model, speed_timer, structure_counts
from hfprune.planning.allocation import allocate_for_time, calibrated_allocation
from hfprune.scoring.loss import importance_scores, layer_ablation_scores

COSTS = ("fixed", "layer", "attention", "head", "mlp", "neuron")
"""`LatencyModel`'s costs."""

BATCH, SEQ = 32, 128
ONE_PAIR_RESULTS = RESULTS / "latency_model_spread.json"


def spread(values: list[float]) -> float | None:
    """max / min over the fits; None when one of them is 0."""
    return max(values) / min(values) if min(values) > 0 else None


def allocation_scores(model: torch.nn.Module, batches: list[dict]) -> dict[str, torch.Tensor]:
    """What `PruningTrainer` allocates a speed target on: gradient importance of units, ablation of layers."""
    scores = importance_scores(model, batches, ("heads", "ffn"), normalize=False)
    scores["layers"] = layer_ablation_scores(model, batches)
    return scores


def plan_counts(model: torch.nn.Module, plan: dict[str, Any], latency: LatencyModel) -> dict[str, Any]:
    """What a plan keeps of the dense `model`, and the speedup the latency model predicts for it."""
    kept = [
        (heads - len(plan["heads"].get(layer, [])), neurons - len(plan["ffn"].get(layer, [])))
        for layer, (heads, neurons) in enumerate(structure_counts(model))
        if layer not in plan["layers"]
    ]
    return {
        "kept_heads": sum(heads for heads, _ in kept),
        "kept_ffn": sum(neurons for _, neurons in kept),
        "dropped_layers": plan["layers"],
        "emptied_attention_blocks": sum(1 for heads, _ in kept if heads == 0),
        "predicted_speedup": round(latency.dense_seconds / plan["predicted_seconds"], 3),
    }


def plans(model, scores, latency: LatencyModel, batches: list[dict], target: float) -> dict[str, Any]:
    seconds = latency.dense_seconds / target
    return {
        "calibrated": plan_counts(model, calibrated_allocation(model, scores, latency, seconds, batches), latency),
        "uncalibrated": plan_counts(model, allocate_for_time(model, scores, latency, seconds), latency),
    }


def plan_spread(fits: list[dict[str, Any]]) -> dict[str, Any]:
    """Per way of planning, the spread of kept heads and FFN neurons over the fits, and whether it is within 10%."""
    summary = {}
    for way in ("calibrated", "uncalibrated"):
        counts = {name: [fit["plans"][way][name] for fit in fits] for name in ("kept_heads", "kept_ffn")}
        spreads = {name: spread(values) for name, values in counts.items()}
        within = all(value is not None and value <= 1.1 for value in spreads.values())
        summary[way] = {**counts, "spread": spreads, "within_10_percent": within}
    return summary


def one_pair_latency(fit: dict[str, float], counts: list[tuple[int, int]]) -> LatencyModel:
    """A one-pair fit of latency_model_spread.json as a latency model, its `fixed` what the dense seconds leave."""
    costs = {name: fit[name] for name in COSTS[1:]}
    latency = LatencyModel(fixed=0.0, **costs, dense_seconds=fit["dense_seconds"], batch_size=BATCH, seq_len=SEQ)
    latency.fixed = latency.dense_seconds - sum(latency.layer_seconds(*layer) for layer in counts)
    return latency


def one_pair_fits(model: torch.nn.Module) -> list[tuple[str, LatencyModel]]:
    """`(timed repeats, latency model)` of every fit in latency_model_spread.json (the one-pair estimator)."""
    if not ONE_PAIR_RESULTS.exists():
        return []
    saved = json.loads(ONE_PAIR_RESULTS.read_text())["fits"]
    counts = structure_counts(model)
    return [(repeats, one_pair_latency(fit, counts)) for repeats, fits in saved.items() for fit in fits]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fits", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per timer call (speed_timer's default: 5)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--target", type=float, default=3.0, help="the speedup each fit plans")
    parser.add_argument("--score-examples", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = AutoModelForSequenceClassification.from_pretrained(CACHE / "minilm-sst2-frontier").eval()
    start = FRONTIER_SLICES["recovery"][0]
    data = SST2({"score": (start, start + args.score_examples)}, max_length=SEQ)
    batches = data.batches(data.train["score"], batch_size=32)
    scores = allocation_scores(model, batches)
    log("scored", args.score_examples, "examples")
    settings = {"fits": args.fits, "repeats": args.repeats, "threads": args.threads, "target": args.target,
                "score_examples": args.score_examples, "batch_size": BATCH, "seq_len": SEQ}  # fmt: skip
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=RESULTS).stdout.strip()
    result = {"protocol": protocol_of(__doc__), "settings": settings, "hfprune_commit": commit, "fits": [], "one_pair_fits": []}
    for _ in range(args.fits):
        began = time.time()
        timer = speed_timer(BATCH, SEQ, num_threads=args.threads, repeats=args.repeats)
        latency = measure_latency_model(model, BATCH, SEQ, timer=timer)
        seconds = round(time.time() - began, 1)
        fit = {**{name: getattr(latency, name) for name in (*COSTS, "dense_seconds")}, "measured": latency.measured,
               "seconds": seconds, "load_average": load_avg()}  # fmt: skip
        fit["plans"] = plans(model, scores, latency, batches, args.target)
        result["fits"].append(fit)
        log({name: fit[name] for name in (*COSTS, "seconds")}, fit["plans"])
    for repeats, latency in one_pair_fits(model):
        fit = {"repeats": int(repeats), **{name: getattr(latency, name) for name in (*COSTS, "dense_seconds")}}
        result["one_pair_fits"].append({**fit, "plans": plans(model, scores, latency, batches, args.target)})
    result["cost_spread"] = {name: spread([fit[name] for fit in result["fits"]]) for name in (*COSTS, "dense_seconds")}
    result["plan_spread"] = plan_spread(result["fits"])
    if result["one_pair_fits"]:
        result["one_pair_plan_spread"] = plan_spread(result["one_pair_fits"])
    log("plan spread", result["plan_spread"], "one-pair", result.get("one_pair_plan_spread"))
    save_json(RESULTS, "latency_model_spread_v2.json", result)


if __name__ == "__main__":
    main()
