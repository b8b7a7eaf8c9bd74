"""Width importance on a fine-tuned MiniLM-L6: does it beat random channel cuts, and what does scoring cost?

    python benchmarks/hidden_importance.py [--quick] [--threads 1] [--fractions 0.1,0.25,0.5] [--random-seeds 5]

Accuracy: MiniLM-L6 fine-tuned on SST-2 (the speed headline's dense model, `benchmarks/.cache/minilm-sst2-headline`,
fine-tuned by `PruningTrainer` through `common.dense_finetuned` if it is not cached), a fraction of its 384
residual-stream channels removed by `hfprune.prune_hidden` WITHOUT retraining, SST-2 dev accuracy (872 examples).
Channels are chosen by `hfprune.hidden_importance` (gradient x activation on the norm outputs, the default), by
its forward-only `method="activation"`, or at random (mean of several seeds). Scores come from train examples
that neither the fine-tuning nor dev saw. Goal of issue 15: importance >= random + 1 point at 25 %.

Cost: median CPU and wall time (interleaved rounds, fixed thread count) over the same scoring batches of one forward pass,
`activation_scores` (every kind: heads, KV groups, FFN, hidden), `hidden_importance` (both methods) and the
gradient scores `importance_scores(kinds=("heads", "ffn"))`. Goal: activation scoring <= 1.2x one forward pass.

Results: benchmarks/results/hidden_importance.json (--quick: benchmarks/results/quick/).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

from common import CACHE, HERE, RESULTS, SST2, accuracy, dense_finetuned, load_avg, log, save_json  # first: offline env

import torch

import hfprune

SLICES = {"finetune": (0, 8000), "score": (8000, 9000)}  # positions in the seeded shuffle of train.tsv
QUICK_SLICES = {"finetune": (0, 320), "score": (8000, 8064)}


def lowest(scores: torch.Tensor, count: int) -> list[int]:
    """The `count` channels with the lowest scores (NaN = already gone, never chosen)."""
    order = torch.argsort(scores.nan_to_num(float("inf")))
    return sorted(order[:count].tolist())


def cut_accuracy(dense, channels: list[int], dev) -> float:
    model = copy.deepcopy(dense)
    hfprune.prune_hidden(model, channels)
    return accuracy(model, dev)


def timed(function) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): on a shared machine the CPU time is the cost itself, the wall
    time adds the waits for a core."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def cost(dense, batches, rounds: int) -> dict:
    @torch.no_grad()
    def forward():
        for batch in batches:
            dense(**batch)

    calls = {
        "forward pass": forward,
        "activation_scores (heads, kv_groups, ffn, hidden)": lambda: hfprune.activation_scores(dense, batches),
        "hidden_importance(method='activation')": lambda: hfprune.hidden_importance(dense, batches, method="activation"),
        "hidden_importance (gradient x activation)": lambda: hfprune.hidden_importance(dense, batches),
        "importance_scores(kinds=('heads', 'ffn'))": lambda: hfprune.importance_scores(dense, batches, ("heads", "ffn")),
    }
    forward()  # warm-up
    wall, cpu = {name: [] for name in calls}, {name: [] for name in calls}
    before = load_avg()
    for round_ in range(rounds):
        for name, call in calls.items():
            seconds = timed(call)
            wall[name].append(seconds[0])
            cpu[name].append(seconds[1])
        log(f"  cost round {round_ + 1} (CPU s): " + ", ".join(f"{values[-1]:.2f}" for values in cpu.values()))

    def summary(times: dict[str, list[float]]) -> dict:
        base = statistics.median(times["forward pass"])
        return {
            "seconds_median": {name: round(statistics.median(values), 3) for name, values in times.items()},
            "seconds_all": {name: [round(v, 3) for v in values] for name, values in times.items()},
            "x_forward_pass": {name: round(statistics.median(values) / base, 3) for name, values in times.items()},
        }

    return {"rounds": rounds, "load_avg_before": before, "load_avg_after": load_avg(), "cpu": summary(cpu), "wall": summary(wall)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (results/quick/)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fractions", default="0.1,0.25,0.5")
    parser.add_argument("--random-seeds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    slices = QUICK_SLICES if args.quick else SLICES
    data = SST2(slices, max_length=128, n_dev=64 if args.quick else None)
    cache = CACHE / ("minilm-sst2-headline-quick" if args.quick else "minilm-sst2-headline")
    dense, finetune = dense_finetuned(data, cache)
    dev = data.batches(data.dev)
    score = data.batches(data.train["score"], batch_size=32)
    dense_acc = accuracy(dense, dev)
    log(f"dense dev accuracy {dense_acc * 100:.2f}%")

    log("scoring channels")
    scores = {
        "gradient x activation (default)": hfprune.hidden_importance(dense, score),
        "activation (forward only)": hfprune.hidden_importance(dense, score, method="activation"),
    }
    size = dense.config.hidden_size
    fractions = [float(f) for f in args.fractions.split(",")]
    curves: dict[str, dict] = {name: {} for name in scores}
    randoms: dict[str, list[float]] = {}
    for fraction in fractions:
        count = round(fraction * size)
        for name, values in scores.items():
            curves[name][str(fraction)] = cut_accuracy(dense, lowest(values, count), dev)
        randoms[str(fraction)] = []
        for seed in range(args.random_seeds):
            channels = torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:count]
            randoms[str(fraction)].append(cut_accuracy(dense, sorted(channels.tolist()), dev))
        mean = statistics.mean(randoms[str(fraction)])
        log(f"{fraction:.0%} of channels ({count}): " + ", ".join(f"{n} {c[str(fraction)] * 100:.2f}" for n, c in curves.items())
            + f", random {mean * 100:.2f} (seeds {[round(r * 100, 2) for r in randoms[str(fraction)]]})")

    random_mean = {f: statistics.mean(values) for f, values in randoms.items()}
    random_std = {f: statistics.stdev(values) if len(values) > 1 else 0.0 for f, values in randoms.items()}
    goal_fraction = "0.25"
    margin = None
    if goal_fraction in random_mean:
        margin = (curves["gradient x activation (default)"][goal_fraction] - random_mean[goal_fraction]) * 100

    log("timing scoring against one forward pass")
    timing = cost(dense, score, 1 if args.quick else args.rounds)
    ratio = timing["cpu"]["x_forward_pass"]["activation_scores (heads, kv_groups, ffn, hidden)"]

    result = {
        "what": "SST-2 dev accuracy of MiniLM-L6 with a fraction of its 384 hidden channels removed by hfprune.prune_hidden, "
                "no retraining; channels by hfprune.hidden_importance vs random; and the cost of activation scoring",
        "protocol": (
            f"Dense: MiniLM-L6 + new 2-class head fine-tuned 1 epoch on SST-2 train examples {slices['finetune']} of a "
            f"seeded shuffle by PruningTrainer ({finetune.get('recipe')}, lr {finetune.get('lr')}, batch 32, max length "
            f"{finetune.get('max_length')}). Scores on train examples {slices['score']} (disjoint; batches of 32 sorted by "
            "length), computed once on the dense model. Each cut: a copy of the dense model, the lowest-scored channels "
            "removed by prune_hidden (embeddings, every projection, LayerNorms, pooler and classifier input), dev accuracy "
            f"on {len(data.dev)} examples, no retraining. Random: torch.randperm with seeds 0..{args.random_seeds - 1}. "
            f"Timing: torch.set_num_threads({args.threads}), CPU, {timing['rounds']} interleaved rounds, medians of this "
            "process's CPU time (time.process_time; the goal is judged on it) and of wall time (perf_counter; on this "
            "shared 2-core machine it includes waits for a core, see load_avg)."
        ),
        "dense_model": {"finetune": finetune, "dev_accuracy": dense_acc, "path": str(cache.relative_to(HERE.parent))},
        "hidden_size": size,
        "accuracy": {name: curve for name, curve in curves.items()},
        "random": {"mean": random_mean, "std": random_std, "seeds": randoms},
        "goals": {
            "importance_minus_random_at_25pct_points": None if margin is None else round(margin, 2),
            "importance_beats_random_by_1_point_at_25pct": None if margin is None else margin >= 1.0,
            "activation_scoring_x_forward_pass_cpu_time": ratio,
            "activation_scoring_at_most_1.2x_forward": ratio <= 1.2,
        },
        "cost": {**timing, "score_examples": len(data.train["score"]), "batches": len(score)},
        "torch_threads": args.threads,
    }
    save_json(RESULTS / "quick" if args.quick else RESULTS, "hidden_importance.json", result)


if __name__ == "__main__":
    main()
