"""Latency and throughput of dense and pruned models, measured side by side.

"No speedup after pruning" usually comes from how the timing was taken: models timed one after the other
while the machine's load changes, a thread count left to chance, batch size 1 only, or the first (cold)
call in the numbers. `measure_speed` times every model in the same run, interleaved per repeat, after a
warm-up, with a fixed CPU thread count (or CUDA events), and reports medians with their spread next to
the speedup that the removed FLOPs would allow (`ideal_speedup`, from `flops`), so a report says how close it
comes. The timer, the device and the quartiles here are shared with `generation_speed`; the noise checks live in
`noise` and the report in `speed_report`.
"""

from __future__ import annotations

import copy
import math
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._validation import check_count
from ..engine.record import unpruned_twin
from ..errors import PruningError
from .flops import (
    check_model,
    check_positive_ints,
    forward_flops,
    forward_kwargs,
    model_device,
    model_vocab_size,
    random_inputs,
)
from .noise import assess_noise, load_average, machine_load
from .speed_report import SpeedReport

__all__ = ["HALF_PRECISIONS", "cuda_computes_bf16", "half_precisions", "measure_speed", "time_against_dense"]

ProgressFn = Callable[[int, int, dict[str, Any]], None]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _device_name(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (cuda:{device.index or 0})"
    if device.type == "cpu":
        return f"cpu ({cpu_name()}, {threads} thread{'s' if threads != 1 else ''})"
    return str(device)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`device` as a torch device (`cuda` gets its index); default `accelerate.PartialState().device`."""
    if device is None:
        from accelerate import PartialState

        return torch.device(PartialState().device)
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise PruningError(f"device {device!r} is not a torch device ({error})") from None
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    return device


def cuda_computes_bf16(device: str | torch.device | None = None) -> bool:
    """Whether the CUDA GPU `device` (None: the current one) computes bf16 natively: compute capability 8.0 and
    later (Ampere, Hopper, ...) and every ROCm GPU. Older GPUs (V100, T4) only emulate it, slower than fp32."""
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(device)[0] >= 8


HALF_PRECISIONS: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16}
"""The half precisions a CUDA GPU is also timed in, by the name `--precision` and the speed table use."""
DTYPE_NAMES: dict[torch.dtype, str] = {torch.float32: "fp32", **{dtype: name for name, dtype in HALF_PRECISIONS.items()}}


def half_precisions(device: torch.device, model_dtype: torch.dtype = torch.float32) -> list[str]:
    """The extra dtypes `time_against_dense` times in on `device`: on a CUDA GPU fp16, and bf16 where the GPU
    computes it natively, less the models' own dtype. None elsewhere: a CPU emulates most half-precision
    matmuls, and its fp32 table is the one that says what pruning saved."""
    if device.type != "cuda":
        return []
    names = ["fp16", "bf16"] if cuda_computes_bf16(device) else ["fp16"]
    return [name for name in names if HALF_PRECISIONS[name] != model_dtype]


def device_timer(device: torch.device) -> Callable[[Callable[[], Any]], float]:
    """A function that runs `fn()` once and returns its wall time in ms, waiting for the device to finish.

    CUDA: events recorded on the stream around the call, then a synchronize (host time would only measure
    the kernel launches). Other accelerators: synchronize before and after a perf_counter. CPU: perf_counter.
    """
    if device.type == "cuda":

        def time_cuda(fn: Callable[[], Any]) -> float:
            with torch.cuda.device(device):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize(device)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize(device)
                return start.elapsed_time(end)

        return time_cuda

    def sync() -> None:
        if device.type == "cpu":
            return
        if hasattr(torch, "accelerator"):  # torch >= 2.6
            torch.accelerator.synchronize(device)
        else:
            getattr(torch, device.type).synchronize(device)

    def time_host(fn: Callable[[], Any]) -> float:
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return (time.perf_counter() - start) * 1e3

    return time_host


def quartiles(times: list[float]) -> tuple[float, float, float]:
    """`(p25, median, p75)` of the timed rounds (inclusive quartiles; one round gives it three times)."""
    if len(times) == 1:
        return times[0], times[0], times[0]
    p25, median, p75 = statistics.quantiles(times, n=4, method="inclusive")
    return p25, median, p75



def _run(timer, model, inputs, kwargs, name: str, batch_size: int, seq_len: int) -> float:
    try:
        return timer(lambda: model(**inputs, **kwargs))
    except torch.OutOfMemoryError:
        raise PruningError(
            f"model {name!r} ran out of memory at batch {batch_size} x seq {seq_len}; measure smaller batch_sizes"
        ) from None


def _checked_arguments(
    models: Any,
    batch_sizes: Iterable[int],
    seq_lengths: Iterable[int],
    warmup: int,
    repeats: int,
    num_threads: int | None,
    dtype: Any,
    progress: Any,
) -> tuple[tuple[int, ...], tuple[int, ...], int, int]:
    """`measure_speed`'s arguments checked (a `PruningError` for the first bad one): the batch sizes and
    sequence lengths without repeats, `warmup` and `repeats`."""
    if not isinstance(models, Mapping) or not models:
        raise PruningError("models must be a non-empty {name: model} mapping; the first one is the baseline")
    for name, model in models.items():
        if not isinstance(name, str) or not name:
            raise PruningError(f"model names must be non-empty strings, got {name!r}")
        check_model(name, model)
    batch_sizes = check_positive_ints("batch_sizes", batch_sizes)
    seq_lengths = check_positive_ints("seq_lengths", seq_lengths)
    warmup = check_count("warmup", warmup, 0)
    repeats = check_count("repeats", repeats, 1)
    if num_threads is not None:
        check_count("num_threads", num_threads, 1)
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise PruningError(f"dtype must be a torch.dtype (e.g. torch.bfloat16), got {dtype!r}")
    if progress is not None and not callable(progress):
        raise PruningError("progress must be a callable progress(done, total, row)")
    return batch_sizes, seq_lengths, warmup, repeats


def _time_shape(
    models: Mapping[str, nn.Module],
    kwargs: Mapping[str, dict[str, Any]],
    timer: Callable[[Callable[[], Any]], float],
    vocab_size: int,
    batch_size: int,
    seq_len: int,
    warmup: int,
    repeats: int,
) -> tuple[dict[str, int], dict[str, list[float]]]:
    """The forward FLOPs and the timed rounds (ms) of every model at one shape: `warmup` untimed rounds, then
    `repeats` timed ones, the models interleaved in an order that rotates each round."""
    names = list(models)
    inputs = {
        name: random_inputs(vocab_size, batch_size, seq_len, model_device(model)) for name, model in models.items()
    }
    flops = {name: forward_flops(model, inputs[name]) for name, model in models.items()}
    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.inference_mode():
        for round_ in range(warmup + repeats):
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                elapsed = _run(timer, models[name], inputs[name], kwargs[name], name, batch_size, seq_len)
                if round_ >= warmup:
                    times[name].append(elapsed)
    return flops, times


def _shape_rows(
    times: Mapping[str, list[float]], flops: Mapping[str, int], params: Mapping[str, int], batch_size: int, seq_len: int
) -> list[dict[str, Any]]:
    """One report row per model at one shape, in the models' order; speedups are relative to the first."""
    base = next(iter(times))
    base_median = quartiles(times[base])[1]
    rows = []
    for name in times:
        p25, median, p75 = quartiles(times[name])
        row = {"model": name, "batch_size": batch_size, "seq_len": seq_len}
        row.update(median_ms=median, p25_ms=p25, p75_ms=p75, throughput=batch_size / (median / 1e3))
        row.update(flops=flops[name], params=params[name], speedup=base_median / median)
        row["ideal_speedup"] = flops[base] / flops[name] if flops[name] else math.inf
        row["efficiency"] = row["speedup"] / row["ideal_speedup"]
        rows.append(row)
    return rows


def measure_speed(
    models: Mapping[str, nn.Module],
    batch_sizes: Iterable[int] = (1, 8, 16, 32, 64),
    seq_lengths: Iterable[int] = (128,),
    *,
    warmup: int = 3,
    repeats: int = 10,
    num_threads: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    progress: ProgressFn | None = None,
) -> SpeedReport:
    """Time the forward pass of every model on every `(batch_size, seq_len)`, all side by side.

    For each shape, the models run interleaved, `warmup` untimed rounds and then `repeats` timed rounds,
    the order rotating each round (A B C, B C A, ...) so that load changes on a shared machine and
    cache effects hit every model alike. Inputs are seeded random token ids with a full attention mask;
    models run in eval mode under `torch.inference_mode()`.

    Args:
        models: `{name: model}`; the first is the baseline for `speedup` and `ideal_speedup`.
        device: where to run; default `accelerate.PartialState().device` (the GPU when there is one).
            Models are moved there (and cast to `dtype` if given) in place and stay there; their
            train/eval mode is restored. A model dispatched with a `device_map` is not moved.
        num_threads: CPU only: `torch.set_num_threads` for the measurement, restored afterwards; default
            the current setting. On a shared CPU, fewer threads than cores is steadier.
        progress: called as `progress(done, total, row)` after each row is measured.

    Returns:
        A `SpeedReport`, rows ordered by sequence length, batch size, then model. Its `noise` (and every
        row's) says whether the timing can be trusted: a wide p25-p75 spread, timings that drift between
        the first and second half of the rounds, a speedup more than 10% above the FLOPs ideal, or (CPU) a
        load average above the CPU count before or after the measurement (`noise_reasons`, `load_reasons`).
    """
    batch_sizes, seq_lengths, warmup, repeats = _checked_arguments(
        models, batch_sizes, seq_lengths, warmup, repeats, num_threads, dtype, progress
    )
    device = resolve_device(device)

    vocab_size = min(model_vocab_size(model) for model in models.values())
    training = {name: model.training for name, model in models.items()}
    previous_threads = torch.get_num_threads()
    if device.type == "cpu" and num_threads is not None:
        torch.set_num_threads(num_threads)
    threads = torch.get_num_threads()
    timer = device_timer(device)
    total, rows, all_times = len(models) * len(batch_sizes) * len(seq_lengths), [], {}
    load_start = load_average() if device.type == "cpu" else None
    try:
        for model in models.values():
            if not getattr(model, "hf_device_map", None):
                model.to(device=device, dtype=dtype)
            model.eval()
        kwargs = {name: forward_kwargs(model) for name, model in models.items()}
        params = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
        for seq_len in seq_lengths:
            for batch_size in batch_sizes:
                flops, times = _time_shape(models, kwargs, timer, vocab_size, batch_size, seq_len, warmup, repeats)
                for row in _shape_rows(times, flops, params, batch_size, seq_len):
                    rows.append(row)
                    all_times[(row["model"], batch_size, seq_len)] = times[row["model"]]
                    if progress is not None:
                        progress(len(rows), total, row)
    finally:
        if device.type == "cpu":
            torch.set_num_threads(previous_threads)
        for name, model in models.items():
            model.train(training[name])
    load_end = load_average() if device.type == "cpu" else None
    settings = dict(
        warmup=warmup,
        repeats=repeats,
        num_threads=threads if device.type == "cpu" else None,
        dtype=str(dtype or next(iter(models.values())).dtype),
        timer="cuda events" if device.type == "cuda" else "perf_counter",
        order="interleaved, rotating each round",
        inputs="seeded random token ids, full attention mask",
        torch=torch.__version__,
    )
    machine: list[str] = []
    if device.type == "cpu":
        settings["load_average"], machine = machine_load(load_start, load_end, threads)
    noise = assess_noise(rows, all_times, machine)
    return SpeedReport(device=_device_name(device, threads), rows=rows, settings=settings, noise=noise)


def dense_twin(pruned: nn.Module) -> nn.Module:
    """A random-weight model with `pruned`'s original shapes, on its device and dtype, in eval mode: the dense
    baseline of a timing (speed does not depend on weight values, so the dense checkpoint is not needed)."""
    reference = next(pruned.parameters())
    return unpruned_twin(pruned).to(reference.device, reference.dtype).eval()


def time_against_dense(
    pruned: nn.Module,
    dense: nn.Module | None = None,
    *,
    half_precision: bool = True,
    progress: Callable[[str, int, int], None] | None = None,
    **measure_kwargs: Any,
) -> SpeedReport:
    """`measure_speed` of a pruned model beside its dense original, named "dense" and "pruned".

    Without `dense`, the baseline is a random-weight model with the original shapes, on the pruned model's
    device and dtype: timing does not depend on weight values, so the dense checkpoint is not needed.
    On a CUDA GPU, with `half_precision` and no `dtype`, the pair is timed again in fp16 and (where the GPU
    computes it natively) bf16, as a GPU serves it: rows "dense fp16", "pruned fp16", ..., each speedup against
    dense in the same dtype. Those are copies cast for timing only; the models given keep their dtype.
    `progress(stage, done, total)` is the jobs' progress callback.
    """
    dense = dense if dense is not None else dense_twin(pruned)
    report = measure_speed({"dense": dense, "pruned": pruned}, progress=_stage(progress, ""), **measure_kwargs)
    dispatched = getattr(pruned, "hf_device_map", None) or getattr(dense, "hf_device_map", None)
    if not half_precision or measure_kwargs.get("dtype") is not None or dispatched:
        return report
    labels = half_precisions(resolve_device(measure_kwargs.get("device")), next(pruned.parameters()).dtype)
    for label in labels:  # one dtype's copies at a time (each copied in the model's dtype, then cast), freed after
        dtype = HALF_PRECISIONS[label]
        copies = {f"dense {label}": copy.deepcopy(dense).to(dtype), f"pruned {label}": copy.deepcopy(pruned).to(dtype)}
        report = report.merged(measure_speed(copies, progress=_stage(progress, f" ({label})"), **measure_kwargs))
        del copies
        torch.cuda.empty_cache()
    if labels:
        own = next(pruned.parameters()).dtype
        report.settings["precisions"] = [DTYPE_NAMES.get(own, str(own).removeprefix("torch.")), *labels]
    return report


def _stage(progress: Callable[[str, int, int], None] | None, suffix: str) -> ProgressFn | None:
    """`measure_speed`'s progress as the jobs' callback, under the stage "time dense vs pruned" + `suffix`."""
    if progress is None:
        return None
    return lambda done, total, row: progress(f"time dense vs pruned{suffix}", done, total)
