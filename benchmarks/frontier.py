"""The accuracy / speed frontier of MiniLM-L6 on SST-2, produced by the product: every point is one call.

    python benchmarks/frontier.py [--quick] [--methods speedup,max_drop,layers,heads,torch_pruning] [--threads 2]

Protocol (written into the JSON next to the numbers):
- Dense: MiniLM-L6 + a new head, fine-tuned by `PruningTrainer` (no target) for 1 epoch on 20,000 SST-2 train
  examples of a seeded shuffle (cached in benchmarks/.cache/).
- Every point recovers on the same N other train examples (--n-recovery, default 2,000), 1 epoch per pruning
  step at lr 1e-4, batch 32, distillation 0.5 from the dense model, importance scored on 512 of them. Reported on all 872 dev examples, which no choice sees.
- Methods, one `hfprune.prune_for_task` call per point (Torch-Pruning excepted, which is not hfprune):
  `speedup` (target_speedup 1.5, 2, 3, 4: latency model, allocation by importance per saved second, closing
  measurement; `speedup_iterative` in 2 steps; `speedup_layer_distill` the same plus layer-wise distillation,
  distillation_layer_weight 1.0), `max_drop` (1.0 point, chosen on a slice of the recovery examples;
  `max_drop_layer_distill` the same plus layer-wise distillation), `layers` (Sajjad "top",
  2 to 5 of 6 layers), `heads` (heads only, 50% and 90%), `heads_no_retraining`
  (Michel et al.: 20%, 30%, 40% of heads, no recovery, against the dense model as given), `l0`
  (`method="l0"`, CoFi's L0 gates on heads, FFN neurons and blocks to a parameter budget: 75% and 66%, the
  parameters of the 2x and 3x speed-target models; 1 epoch of gate training, then the recovery), and `torch_pruning` (its Taylor global pruning at
  the FLOPs of 1.5, 2, 3, 4x, then the same recovery through `PruningTrainer`).
- "Before" is the dense model trained on the same recovery examples for as many epochs (the control), and the
  delta of every point is against it. Speed: dense vs pruned side by side at batch 32 x 128, medians, on this CPU.

Results: benchmarks/results/frontier.{json,md,png} (--quick: benchmarks/results/quick/).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

from common import CACHE, FRONTIER_SLICES, RECIPE_TEXT, RESULTS, SST2, accuracy, dense_finetuned, load_avg, log, protocol_of, save_json, train, write_glue_folder

import torch

import hfprune
from hfprune.measure.speed import measure_speed

METHODS = (
    "speedup", "speedup_iterative", "speedup_layer_distill", "max_drop", "max_drop_layer_distill", "layers", "heads",
    "heads_no_retraining", "l0", "torch_pruning",
)  # fmt: skip
SPEEDUPS = (1.5, 2.0, 3.0, 4.0)
SEQ, BATCH = 128, 32
QUICK_SLICES = {"finetune": (0, 320), "recovery": (20000, 20160)}


def recipe(args) -> dict:
    return dict(
        recovery_epochs=1.0, learning_rate=1e-4, batch_size=32, distillation_alpha=0.5, score_num_examples=512,
        max_length=SEQ, seed=0, device="cpu", bench_batch_sizes=(BATCH,), bench_threads=args.threads,
        bench_repeats=args.repeats, speedup_batch_size=BATCH, speedup_seq_len=SEQ,
        max_eval_samples=64 if args.quick else None, allow_weak_baseline=args.quick,
    )  # fmt: skip


def point_from_result(result, method: str, target) -> dict:
    """One frontier point from a `PruneResult`: dev accuracy, measured speedup, and what was kept."""
    row = next(row for row in result.speed.rows if row["model"] == "pruned")
    history = result.pruning_history
    return {
        "method": method,
        "target": target,
        "dev_accuracy": result.metrics_after["validation"]["accuracy"],
        "speedup": row["speedup"],
        "ideal_speedup": row["ideal_speedup"],
        "speed_noisy": result.speed.noisy,
        "params": result.sparsity["parameters"]["kept"],
        "pruning_steps": len(history) - 1,
        "train_steps": sum(entry["train_steps"] for entry in history),
        "speed_target": result.speed_target,
        "selection": result.selection,
        "kept": {unit: values["kept"] for unit, values in result.sparsity.items()},
        "timings_s": {key: round(value, 1) for key, value in result.timings.items()},
    }


class Frontier:
    def __init__(self, args):
        self.args = args
        self.out = RESULTS / "quick" if args.quick else RESULTS
        slices = dict(QUICK_SLICES if args.quick else FRONTIER_SLICES)
        slices["recovery"] = (slices["recovery"][0], slices["recovery"][0] + (args.n_recovery or slices["recovery"][1] - slices["recovery"][0]))
        self.data = SST2(slices, max_length=SEQ, n_dev=64 if args.quick else None)
        self.dense_dir = CACHE / ("minilm-sst2-frontier-quick" if args.quick else "minilm-sst2-frontier")
        self.dense, finetune = dense_finetuned(self.data, self.dense_dir)
        self.dev = self.data.batches(self.data.dev)
        self.scratch = Path(tempfile.mkdtemp(prefix="frontier-"))
        self.glue = write_glue_folder(self.data, "recovery", self.scratch / "glue")
        previous = RESULTS / "frontier.json"
        import json

        self.result = json.loads(previous.read_text()) if args.resume and previous.exists() else {}
        self.result.update(
            what="SST-2 dev accuracy against measured speedup (batch 32 x 128, CPU) of MiniLM-L6, every point made by "
            "hfprune.prune_for_task except Torch-Pruning's",
            protocol=protocol_of(__doc__),
            recipe={key: value for key, value in recipe(args).items() if key != "bench_threads"},
            recovery_examples=len(self.data.train["recovery"]),
            training=RECIPE_TEXT,
            dense={"finetune": finetune, "dev_accuracy": accuracy(self.dense, self.dev)},
        )
        self.result.setdefault("controls", {})
        self.result.setdefault("points", [])
        log(f"dense dev accuracy {self.result['dense']['dev_accuracy'] * 100:.2f}%")

    def save(self) -> None:
        self.result["load_average"] = load_avg()
        save_json(self.out, "frontier.json", self.result)

    def control(self, epochs: int) -> float:
        """Dev accuracy of the dense model trained `epochs` epochs on the recovery examples (cached per epochs)."""
        key = str(epochs)
        if key not in self.result["controls"]:
            model = copy.deepcopy(self.dense)
            log(f"control: the dense model, {epochs} epoch(s) on the recovery examples")
            run = train(model, self.data.train["recovery"], self.data.collate, epochs=epochs, learning_rate=1e-4)
            self.result["controls"][key] = {"dev_accuracy": accuracy(model, self.dev), **run}
            self.save()
        return self.result["controls"][key]["dev_accuracy"]

    def done(self, method: str, target) -> bool:
        return any(point["method"] == method and point["target"] == target for point in self.result["points"])

    def add(self, point: dict) -> None:
        # the control trains as many epochs as the point did in all (L0: gate training, then recovery)
        steps_per_epoch = -(-len(self.data.train["recovery"]) // recipe(self.args)["batch_size"])
        epochs = round(point["train_steps"] / steps_per_epoch)
        # without any training the honest reference is the dense model as given
        point["control_dev_accuracy"] = self.control(max(epochs, 1)) if point["train_steps"] else self.result["dense"]["dev_accuracy"]
        point["delta_points_vs_control"] = 100 * (point["dev_accuracy"] - point["control_dev_accuracy"])
        self.result["points"].append(point)
        log(f"{point['method']} {point['target']}: {point['dev_accuracy'] * 100:.2f}% "
            f"({point['delta_points_vs_control']:+.2f} vs control), {point['speedup']:.2f}x (ideal {point['ideal_speedup']:.2f}x)")  # fmt: skip
        self.save()

    def prune(self, name: str, target, **targets) -> None:
        """One point, `name` at `target`: one `prune_for_task` call with the recipe and `targets`."""
        if self.done(name, target):
            return
        log(f"{name} {target}: prune_for_task {targets}")
        try:
            result = hfprune.prune_for_task(
                str(self.dense_dir), "sst2", output_dir=self.scratch / "pruned", overwrite=True, data_dir=self.glue,
                dense_control=False, log=lambda message: log(f"  {message}"), **{**recipe(self.args), **targets},
            )  # fmt: skip
        except hfprune.PruningError as error:  # e.g. max_drop with no step within the drop: a result too
            log(f"{name} {target}: {error}")
            self.result.setdefault("failed", []).append({"method": name, "target": target, "error": str(error)})
            self.save()
            return
        self.add(point_from_result(result, name, target))

    def torch_pruning(self, target: float) -> None:
        if self.done("torch_pruning", target):
            return
        from tp_baseline import torch_pruning_prune

        model = copy.deepcopy(self.dense).requires_grad_(True)  # a recovery froze the dense model as its teacher
        score = self.data.batches(self.data.train["recovery"].select(range(min(512, len(self.data.train["recovery"])))), 32)
        info = torch_pruning_prune(model, score, target, seq_len=SEQ, batch_size=BATCH)
        run = train(model, self.data.train["recovery"], self.data.collate, learning_rate=1e-4, teacher=self.dense, distillation_alpha=0.5)
        report = measure_speed({"dense": self.dense, "pruned": model}, (BATCH,), (SEQ,), num_threads=self.args.threads, repeats=self.args.repeats)
        row = next(row for row in report.rows if row["model"] == "pruned")
        self.add({
            "method": "torch_pruning", "target": target, "dev_accuracy": accuracy(model, self.dev), "speedup": row["speedup"],
            "ideal_speedup": row["ideal_speedup"], "speed_noisy": report.noisy, "params": sum(p.numel() for p in model.parameters()),
            "pruning_steps": 1, "train_steps": run["steps"], "torch_pruning": info,
        })  # fmt: skip


def table(result: dict) -> str:
    lines = [
        "| method | target | dev accuracy | vs same-training dense | measured speedup | FLOPs ideal | parameters |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for point in sorted(result["points"], key=lambda p: (p["method"], p["speedup"])):
        noisy = " (noisy)" if point.get("speed_noisy") else ""
        lines.append(
            f"| {point['method']} | {point['target']} | {point['dev_accuracy'] * 100:.2f}% | {point['delta_points_vs_control']:+.2f} "
            f"| {point['speedup']:.2f}x{noisy} | {point['ideal_speedup']:.2f}x | {point['params'] / 1e6:.1f} M |"
        )
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for method in METHODS:
        points = sorted((p for p in result["points"] if p["method"] == method), key=lambda p: p["speedup"])
        if points:
            axis.plot([p["speedup"] for p in points], [p["dev_accuracy"] * 100 for p in points], "o-", label=method)
    for key, control in result["controls"].items():
        axis.axhline(control["dev_accuracy"] * 100, color="grey", linestyle=":", linewidth=0.8)
    axis.axhline(result["dense"]["dev_accuracy"] * 100, color="black", linestyle="--", label="dense")
    axis.set_xlabel(f"measured speedup, batch {BATCH} x {SEQ}, CPU")
    axis.set_ylabel("SST-2 dev accuracy (%)")
    axis.set_title("MiniLM-L6: accuracy vs speed (dotted: dense with the same training)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny slices, a smoke test -> results/quick/")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--speedups", default=",".join(map(str, SPEEDUPS)))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--n-recovery", type=int, default=None, help="recovery examples (default 2000)")
    parser.add_argument("--layers", default="2,3,4,5", help="layers-only points: how many of 6 layers to drop")
    parser.add_argument("--max-drop", default="1.0", help="max_drop points, in points of accuracy")
    parser.add_argument("--distill-layers", type=float, default=1.0, help="speedup_layer_distill: distillation_layer_weight")
    parser.add_argument("--l0-budgets", default="0.75,0.66", help="l0 points: fractions of the parameters to keep")
    parser.add_argument("--resume", action="store_true", help="keep the points of results/frontier.json")
    parser.add_argument("--dense-only", action="store_true", help="fine-tune (and cache) the dense model, then stop")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    frontier = Frontier(args)
    if args.dense_only:
        return
    speedups = [float(value) for value in args.speedups.split(",")]
    methods = args.methods.split(",")
    for method in methods:
        if method == "speedup":
            for target in speedups:
                frontier.prune("speedup", target, target_speedup=target, schedule="one_shot", distillation_layer_weight=0.0)
        elif method == "speedup_iterative":  # 2 steps: the second is corrected by the first one's measurement
            for target in speedups:
                frontier.prune(
                    "speedup_iterative", target, target_speedup=target, schedule="iterative", steps=2,
                    distillation_layer_weight=0.0,
                )  # fmt: skip
        elif method == "speedup_layer_distill":  # prune_for_task's default for a speed target: + layer-wise distillation
            for target in speedups:
                frontier.prune(
                    "speedup_layer_distill", target, target_speedup=target, schedule="iterative", steps=2,
                    distillation_layer_weight=args.distill_layers,
                )  # fmt: skip
        elif method == "max_drop":
            for drop in [float(value) for value in args.max_drop.split(",")]:
                frontier.prune(
                    "max_drop", drop, max_drop=drop, target_speedup=max(speedups), steps=4, distillation_layer_weight=0.0
                )  # fmt: skip
        elif method == "max_drop_layer_distill":  # prune_for_task's default for max_drop: + layer-wise distillation
            for drop in [float(value) for value in args.max_drop.split(",")]:
                frontier.prune(
                    "max_drop_layer_distill", drop, max_drop=drop, target_speedup=max(speedups), steps=4,
                    distillation_layer_weight=args.distill_layers,
                )  # fmt: skip
        elif method == "layers":
            for dropped in [int(value) for value in args.layers.split(",")]:
                frontier.prune("layers", f"{dropped}/6", layer_sparsity=dropped / 6, layer_strategy="top")
        elif method == "heads":
            for sparsity in (0.5, 0.9):
                frontier.prune("heads", sparsity, head_sparsity=sparsity)
        elif method == "heads_no_retraining":  # Michel et al.: heads only, no recovery at all
            for sparsity in (0.2, 0.3, 0.4):
                frontier.prune("heads_no_retraining", sparsity, head_sparsity=sparsity, recovery_epochs=0.0, distillation_alpha=0.0)
        elif method == "l0":  # CoFi's gates on heads, FFN neurons and blocks, to a parameter budget (no speed target)
            for budget in [float(value) for value in args.l0_budgets.split(",")]:
                frontier.prune("l0", budget, method="l0", param_budget=budget)
        elif method == "torch_pruning":
            for target in speedups:
                frontier.torch_pruning(target)
        else:
            sys.exit(f"unknown method {method!r}; choose from {','.join(METHODS)}")
    (frontier.out / "frontier.md").write_text(table(frontier.result))
    plot(frontier.result, frontier.out / "frontier.png")
    log("done")


if __name__ == "__main__":
    main()
