"""Streamed GGUF export against the in-memory one on the real SmolLM2-135M (issue 27): peak memory, seconds, bytes.

    python benchmarks/stream_gguf.py [--checkpoint benchmarks/.cache/streaming/smollm2-untied] [--dtype f32]
        [--threads 1]

Protocol (written into the JSON next to the numbers):
- The checkpoint: SmolLM2-135M with an untied head, bfloat16 safetensors (made by benchmarks/streaming.py), with its
  own tokenizer (pre-tokenizer `smollm`, found by hash).
- `memory`: `hfprune.export_gguf(ckpt, path, dtype)` (the model loaded whole, in float32); `stream`:
  `hfprune.stream_export_gguf(ckpt, path, dtype)` (one layer at a time). Each with `check=False` (the writing alone)
  and `check=True` (the default: PyTorch's logits on the three check sequences, then the file loaded in llama.cpp
  and compared).
- Each run is a fresh process (`subprocess`, so exec'd: its own address space) with `--threads` torch threads;
  peak RSS is VmHWM from /proc/self/status at the end (mapped safetensors and GGUF pages that were touched count);
  a thread samples RssAnon (the process's own memory) and RssFile (mapped file pages, which the kernel can drop)
  every 20 ms for their peaks, and VmRSS after the imports is the baseline (torch, transformers).
  Seconds are the export call alone (imports excluded). The machine is shared (2 cores): load averages recorded.
- Byte identity: the two files of each setting compared whole.

Results: benchmarks/results/stream_gguf.{json,md}.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
DEFAULT_CHECKPOINT = ROOT / ".cache" / "streaming" / "smollm2-untied"


def status_bytes(*keys: str) -> dict[str, int]:
    """Fields of /proc/self/status (kB) in bytes."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) * 1024 for key in keys}


class Sampler(threading.Thread):
    """The peaks of RssAnon (the process's own memory) and RssFile (mapped file pages: safetensors, the GGUF file
    llama.cpp maps), sampled every 20 ms; VmHWM has only their peak sum."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peaks = {"RssAnon": 0, "RssFile": 0}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            for key, value in status_bytes(*self.peaks).items():
                self.peaks[key] = max(self.peaks[key], value)


def child(kind: str, checkpoint: str, path: str, dtype: str, check: bool) -> None:
    """One export in this fresh process; prints its seconds and peak RSS as JSON."""
    import torch

    import hfprune

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    export = hfprune.stream_export_gguf if kind == "stream" else hfprune.export_gguf
    before = status_bytes("VmRSS")["VmRSS"]
    sampler = Sampler()
    sampler.start()
    start = time.perf_counter()
    result = export(checkpoint, path, dtype=dtype, check=check)
    seconds = time.perf_counter() - start
    sampler.done.set()
    sampler.join()
    row = {"seconds": seconds, "peak_rss_bytes": status_bytes("VmHWM")["VmHWM"], "rss_before_bytes": before}
    print(json.dumps({**row, "peak_anon_bytes": sampler.peaks["RssAnon"], "peak_file_bytes": sampler.peaks["RssFile"], "result": result.to_dict()}))


def run(kind: str, checkpoint: Path, path: Path, dtype: str, check: bool, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    args = [sys.executable, __file__, "--child", kind, "--checkpoint", str(checkpoint), "--out", str(path), "--dtype", dtype]
    out = subprocess.run(args + (["--check"] if check else []), env=env, capture_output=True, text=True, check=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    gb = {key: round(row[f"{key}_bytes"] / 1e9, 3) for key in ("peak_rss", "rss_before", "peak_anon", "peak_file")}
    return {"path": kind, "check": check, "seconds": round(row["seconds"], 2), **{f"{key}_gb": value for key, value in gb.items()},
            "load_avg": [round(value, 2) for value in os.getloadavg()], "max_relative_difference": row["result"]["max_relative_difference"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--dtype", default="f32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", choices=["memory", "stream"])
    parser.add_argument("--out")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    if args.child:
        child(args.child, str(args.checkpoint), args.out, args.dtype, args.check)
        return
    rows, identical = [], {}
    with tempfile.TemporaryDirectory(prefix="hfprune-stream-gguf-") as folder:
        for check in (False, True):
            files = {kind: Path(folder) / f"{kind}-{check}.gguf" for kind in ("memory", "stream")}
            for kind, path in files.items():
                rows.append(run(kind, args.checkpoint, path, args.dtype, check, args.threads))
                print(rows[-1], flush=True)
            identical[f"check={check}"] = filecmp.cmp(files["memory"], files["stream"], shallow=False)
            size = files["memory"].stat().st_size
            for path in files.values():
                path.unlink()
    protocol = __doc__.split("Protocol (written into the JSON next to the numbers):\n", 1)[1].split("\n\nResults:", 1)[0]
    payload = {"checkpoint": args.checkpoint.name, "dtype": args.dtype, "threads": args.threads, "file_bytes": size,
               "byte_identical": identical, "rows": rows, "protocol": protocol}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "stream_gguf.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [
        f"# Streamed GGUF export: {args.checkpoint.name}, {args.dtype}, {args.threads} torch thread(s)",
        "",
        f"File: {size / 1e6:.1f} MB; byte-identical (memory vs stream): "
        + ", ".join(f"{key}: {'yes' if value else 'NO'}" for key, value in identical.items()),
        "",
        "| path | check | seconds | peak RSS, VmHWM (GB) | RSS after imports | peak RssAnon | peak RssFile | max rel. logit diff | load avg (1/5/15 min) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *(
            f"| {row['path']} | {'yes' if row['check'] else 'no'} | {row['seconds']:.1f} | {row['peak_rss_gb']:.2f} | "
            f"{row['rss_before_gb']:.2f} | {row['peak_anon_gb']:.2f} | {row['peak_file_gb']:.2f} | "
            f"{'-' if row['max_relative_difference'] is None else format(row['max_relative_difference'], '.1e')} | "
            f"{' / '.join(map(str, row['load_avg']))} |"
            for row in rows
        ),
        "",
        "Protocol:",
        "",
        protocol,
        "",
    ]
    (RESULTS / "stream_gguf.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
