"""The speed target's recovery recipe at 3x: more pruning steps, or more weight on the layers?

    python benchmarks/speed_target_recipe.py [--candidates steps2_layer1,...] [--target 3] [--threads 2]

Protocol (written into the JSON next to the numbers):
- The frontier's dense MiniLM-L6 and recovery slice (benchmarks/frontier.py; 2,000 train examples). One
  `hfprune.prune_for_task(target_speedup=3)` call per candidate, the frontier's recipe (1 epoch per pruning step at
  lr 1e-4, batch 32, logit distillation 0.5) with the candidate's `steps` and `distillation_layer_weight`.
- A candidate is CHOSEN on 1,000 further train examples (shuffle positions 22,000-23,000, in no other slice): the
  highest accuracy there among those whose measured speedup is within 10% of the target. SST-2 dev (872) is
  reported beside it and chose nothing. `steps2_layer1` is `hfprune.SPEED_TARGET_RECIPE` when this ran.
- More steps is more training: the dense control of such a point trains as many epochs (frontier.py).

Results: benchmarks/results/speed_target_recipe.json.
"""

from __future__ import annotations

import argparse
import json
import time

from common import RESULTS, HeldOutChoice, accuracy, dense_finetuned, load_avg, log, train

import torch

import hfprune

CANDIDATES = {
    "steps2_layer1": {"steps": 2, "distillation_layer_weight": 1.0},
    "steps3_layer1": {"steps": 3, "distillation_layer_weight": 1.0},
    "steps2_layer2": {"steps": 2, "distillation_layer_weight": 2.0},
}
SEQ, BATCH = 128, 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", default=",".join(CANDIDATES), help=f"comma-separated subset of {','.join(CANDIDATES)}")
    parser.add_argument("--target", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    def met(key: str, run: dict) -> bool:  # eligible: a run at this target, measured within 10% of it
        return key.endswith(f"@{args.target:g}") and run["speedup"] >= 0.9 * args.target

    choice = HeldOutChoice("speed_target_recipe.json", __doc__, max_length=SEQ)
    data, runs = choice.data, choice.runs
    for name in args.candidates.split(","):
        key = f"{name}@{args.target:g}"
        if key in runs:
            continue
        start = time.time()
        pruned = hfprune.prune_for_task(
            str(choice.dense_dir), "sst2", output_dir=choice.output, overwrite=True, data_dir=choice.glue, dense_control=False,
            target_speedup=args.target, schedule="iterative", **CANDIDATES[name], recovery_epochs=1.0, learning_rate=1e-4,
            batch_size=32, distillation_alpha=0.5, score_num_examples=512, max_length=SEQ, seed=0, device="cpu",
            speedup_batch_size=BATCH, speedup_seq_len=SEQ, bench_batch_sizes=(BATCH,), bench_threads=args.threads,
            bench_repeats=10, log=lambda message: log(f"  {message}"),
        )  # fmt: skip
        row = next(row for row in pruned.speed.rows if row["model"] == "pruned")
        runs[key] = {
            "settings": CANDIDATES[name],
            "speedup": row["speedup"],
            "ideal_speedup": row["ideal_speedup"],
            "speed_noisy": pruned.speed.noisy,
            "select_accuracy": choice.select_accuracy(),
            "dev_accuracy": pruned.metrics_after["validation"]["accuracy"],
            "train_steps": sum(entry["train_steps"] for entry in pruned.pruning_history),
            "kept": {unit: values["kept"] for unit, values in pruned.sparsity.items()},
            "seconds": round(time.time() - start, 1),
            "load_average": load_avg(),
        }
        log(key, runs[key])
        choice.save(met)
    controls = choice.result.setdefault("controls", {})  # the dense model trained as many epochs as each point did in all
    frontier = json.loads((RESULTS / "frontier.json").read_text())["controls"]
    steps_per_epoch = -(-len(data.train["recovery"]) // 32)
    for epochs in sorted({round(run["train_steps"] / steps_per_epoch) for run in runs.values()}):
        if str(epochs) not in controls:
            if str(epochs) in frontier:
                controls[str(epochs)] = {"dev_accuracy": frontier[str(epochs)]["dev_accuracy"], "from": "frontier.json"}
            else:
                model = dense_finetuned(data, choice.dense_dir)[0]
                log(f"control: the dense model, {epochs} epoch(s) on the recovery examples")
                run = train(model, data.train["recovery"], data.collate, epochs=epochs, learning_rate=1e-4)
                controls[str(epochs)] = {"dev_accuracy": accuracy(model, data.batches(data.dev)), **run}
    for run in runs.values():
        control = controls[str(round(run["train_steps"] / steps_per_epoch))]["dev_accuracy"]
        run["delta_points_vs_control"] = 100 * (run["dev_accuracy"] - control)
    choice.save(met)
    log("chosen on the selection slice:", choice.result["chosen"])


if __name__ == "__main__":
    main()
