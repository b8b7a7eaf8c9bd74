"""What every benchmark shares: paths, logging, the SST-2 slices, and training and scoring through hfprune itself.

Benchmarks run the product. Every fine-tune and every recovery here is a `hfprune.PruningTrainer` run (with no
pruning target, it is the Trainer loop the product trains with), distillation is the trainer's, and accuracy is
`hfprune.tasks.compute_metrics` on the model's predictions. A number a benchmark reports can therefore be
reproduced with hfprune's public API, with the recipe written next to it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding  # noqa: E402

import hfprune  # noqa: E402
from hfprune import tasks  # noqa: E402
from hfprune.jobs.demo import default_model_path  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CACHE = HERE / ".cache"
GLUE = Path(os.environ.get("GLUE_DIR", HERE.parent.parent / "shared" / "data" / "glue"))  # ../shared/data/glue
T0 = time.time()

# The training recipe of every benchmark fine-tune and recovery (PruningConfig fields).
RECIPE = {"learning_rate": 5e-5, "weight_decay": 0.01, "warmup_steps": 0.06, "lr_scheduler_type": "linear", "max_grad_norm": 1.0}
RECIPE_TEXT = "hfprune.PruningTrainer, AdamW wd 0.01, 6% warmup, linear decay, grad clip 1.0"


def log(*args: Any) -> None:
    print(f"[{time.time() - T0:7.1f}s]", *args, flush=True)


def save_json(out: Path, name: str, payload: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(payload, indent=2) + "\n")
    log("wrote", out / name)


def load_avg() -> list[float]:
    """The 1/5/15-minute load averages, recorded next to each timing: on a shared machine they say how noisy it was."""
    return [round(value, 2) for value in os.getloadavg()]


# ---- data ---------------------------------------------------------------------------------------------
# The frontier's slices of the shuffle, and the held-out train examples that choose between recipes (dev never does).
FRONTIER_SLICES = {"finetune": (0, 20000), "recovery": (20000, 22000)}
SELECTION_SLICE = (22000, 23000)


class SST2:
    """SST-2 slices of one seeded shuffle of train.tsv, named and disjoint; dev (872 examples) is only evaluated.

    `slices` maps a name to `(start, stop)` positions in the shuffle, e.g. `{"finetune": (0, 8000),
    "score": (8000, 8512)}`: the benchmarks keep one convention, so a slice means the same examples everywhere.
    """

    def __init__(self, slices: dict[str, tuple[int, int]], *, max_length: int = 64, n_dev: int | None = None, seed: int = 0):
        self.tokenizer = AutoTokenizer.from_pretrained(default_model_path())
        self.collate = DataCollatorWithPadding(self.tokenizer)
        train = tasks.load_task("sst2", data_dir=GLUE, split="train")
        dev = tasks.load_task("sst2", data_dir=GLUE, split="validation")
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        self.indices = {name: order[start:stop] for name, (start, stop) in slices.items()}
        self.max_length = max_length
        self.train = {name: self.tokenize(train.select(idx)) for name, idx in self.indices.items()}
        self.dev = self.tokenize(dev.select(range(min(n_dev, len(dev)))) if n_dev else dev)

    def tokenize(self, dataset):
        return tasks.tokenize_task(dataset, self.tokenizer, "sst2", max_length=self.max_length)

    def batches(self, dataset, batch_size: int = 128) -> list[dict]:
        """Unshuffled batches (scoring and evaluation), sorted by length so that they carry little padding."""
        order = sorted(range(len(dataset)), key=lambda i: len(dataset[i]["input_ids"]))
        return list(DataLoader(dataset.select(order), batch_size=batch_size, collate_fn=self.collate))


# ---- training and evaluation through the product ----------------------------------------------------
def train(
    model: torch.nn.Module,
    dataset,
    collate,
    *,
    epochs: float = 1.0,
    batch_size: int = 32,
    seed: int = 0,
    teacher: torch.nn.Module | None = None,
    distillation_alpha: float = 0.0,
    callbacks: Iterable = (),
    **recipe: Any,
) -> dict[str, Any]:
    """Train `model` in place on `dataset` with `PruningTrainer` and no pruning target (recovery phase only).

    With a `teacher`, the loss is `(1 - distillation_alpha) * task + distillation_alpha * T^2 KL` at T = 2, the
    trainer's own distillation. Returns the steps, the mean training loss and the wall time.
    """
    with tempfile.TemporaryDirectory() as scratch:
        args = hfprune.PruningConfig(
            output_dir=scratch, use_cpu=True, per_device_train_batch_size=batch_size, recovery_epochs=epochs,
            seed=seed, data_seed=seed, save_strategy="no", report_to="none", logging_steps=50, disable_tqdm=True,
            distillation_alpha=distillation_alpha if teacher is not None else 0.0, **{**RECIPE, **recipe},
        )  # fmt: skip
        trainer = hfprune.PruningTrainer(
            model=model, args=args, train_dataset=dataset, data_collator=collate, teacher_model=teacher,
            callbacks=list(callbacks),
        )  # fmt: skip
        start = time.perf_counter()
        output = trainer.train()
        seconds = time.perf_counter() - start
    model.eval()
    log(f"  trained {output.global_step} steps in {seconds:.0f} s, loss {output.training_loss:.4f}")
    return {"steps": output.global_step, "train_loss": round(output.training_loss, 4), "seconds": round(seconds, 1)}


@torch.no_grad()
def accuracy(model: torch.nn.Module, batches: list[dict]) -> float:
    """SST-2 accuracy by `hfprune.tasks.compute_metrics` on the model's predictions."""
    model.eval()
    predictions, labels = [], []
    for batch in batches:
        predictions.append(model(**{k: v for k, v in batch.items() if k != "labels"}).logits.argmax(-1))
        labels.append(batch["labels"])
    return tasks.compute_metrics("sst2", torch.cat(predictions).numpy(), torch.cat(labels).numpy())["accuracy"]


def dense_finetuned(data: SST2, cache: Path, *, slice_name: str = "finetune", seed: int = 0, **load_kwargs: Any):
    """`(model, info)`: MiniLM-L6 with a new head fine-tuned for one epoch on `data.train[slice_name]`, cached."""
    info_file = cache / "finetune_info.json"
    if (cache / "config.json").exists() and info_file.exists():
        log("loading the cached dense model from", cache)
        return AutoModelForSequenceClassification.from_pretrained(cache, **load_kwargs).eval(), json.loads(info_file.read_text())
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(default_model_path(), num_labels=2, **load_kwargs)
    log(f"fine-tuning MiniLM-L6 on {len(data.train[slice_name])} SST-2 examples")
    run = train(model, data.train[slice_name], data.collate, seed=seed)
    info = {
        "train_examples": len(data.train[slice_name]), "epochs": 1, "batch_size": 32, "max_length": data.max_length,
        "lr": RECIPE["learning_rate"], "recipe": RECIPE_TEXT, "seed": seed, **run,
    }  # fmt: skip
    model.save_pretrained(cache)
    data.tokenizer.save_pretrained(cache)  # a checkpoint the product can load as it is
    info_file.write_text(json.dumps(info, indent=2))
    return model.eval(), info


def write_glue_folder(data: SST2, slice_name: str, folder: Path) -> Path:
    """A GLUE folder whose train.tsv is one slice of SST-2 train and whose dev.tsv is the real dev set, so that
    `prune_for_task` recovers on exactly that slice (disjoint from the dense model's data) and reports on dev."""
    train = tasks.load_task("sst2", data_dir=GLUE, split="train").select(data.indices[slice_name])
    (folder / "SST-2").mkdir(parents=True, exist_ok=True)
    rows = ["sentence\tlabel", *(f"{row['sentence']}\t{row['label']}" for row in train)]
    (folder / "SST-2" / "train.tsv").write_text("\n".join(rows) + "\n")
    shutil.copy(GLUE / "SST-2" / "dev.tsv", folder / "SST-2" / "dev.tsv")
    return folder


def protocol_of(doc: str) -> str:
    """The "Protocol (written into the JSON next to the numbers):" section of a benchmark's docstring."""
    return doc.split("Protocol (written into the JSON next to the numbers):\n")[1].split("\n\nResults:")[0]


class HeldOutChoice:
    """Settings compared on the frontier's dense model and recovery slice, and CHOSEN on `SELECTION_SLICE`.

    Each run is one `prune_for_task` call writing to `self.output`; `select_accuracy()` scores what it wrote on the
    held-out train examples. Results accumulate in `results/<name>`, so an interrupted comparison resumes.
    """

    def __init__(self, name: str, doc: str, max_length: int = 128):
        self.data = SST2({**FRONTIER_SLICES, "select": SELECTION_SLICE}, max_length=max_length)
        self.dense_dir = CACHE / "minilm-sst2-frontier"
        dense_finetuned(self.data, self.dense_dir)  # cached by the frontier
        self.select = self.data.batches(self.data.train["select"])
        scratch = Path(tempfile.mkdtemp(prefix="held-out-choice-"))
        self.glue = write_glue_folder(self.data, "recovery", scratch / "glue")
        self.output = scratch / "pruned"
        self.name = name
        previous = RESULTS / name
        self.result = json.loads(previous.read_text()) if previous.exists() else {}
        self.result["protocol"] = protocol_of(doc)
        self.runs = self.result.setdefault("runs", {})

    def select_accuracy(self) -> float:
        return accuracy(hfprune.from_pretrained(self.output), self.select)

    def save(self, eligible=lambda key, run: True) -> None:
        """Write the results, with the eligible run most accurate on the held-out slice as `chosen`."""
        runs = {key: run for key, run in self.runs.items() if eligible(key, run)}
        self.result["chosen"] = max(runs, key=lambda key: runs[key]["select_accuracy"]) if runs else None
        save_json(RESULTS, self.name, self.result)
