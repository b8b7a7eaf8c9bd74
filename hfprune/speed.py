"""Latency, throughput and FLOPs of dense and pruned models, measured side by side.

"No speedup after pruning" usually comes from how the timing was taken: models timed one after the other
while the machine's load changes, a thread count left to chance, batch size 1 only, or the first (cold)
call in the numbers. `measure_speed` times every model in the same run, interleaved per repeat, after a
warm-up, with a fixed CPU thread count (or CUDA events), and reports medians with their spread next to
the speedup that the removed FLOPs would allow (`ideal_speedup`), so a report says how close it comes.

FLOPs are counted by running the model under `torch.utils.flop_counter.FlopCounterMode` (matrix products
only, 2 per multiply-add: what dominates a transformer), not from hand formulas, so they follow whatever
the surgery actually left.
"""

from __future__ import annotations

import inspect
import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .errors import PruningError

ProgressFn = Callable[[int, int, dict[str, Any]], None]

# PyTorch's counter knows the CUDA attention kernels but not the fused CPU one that `sdpa` attention
# uses; without it an sdpa model on CPU would seem to do no attention work at all.
def _sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_EXTRA_FLOP_FORMULAS = {}
if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
    _EXTRA_FLOP_FORMULAS[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_flop


# ---- inputs --------------------------------------------------------------------------------------------
def _check_positive_ints(name: str, values: Iterable[int]) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise PruningError(f"{name} must be a list of positive integers, got {values!r}")
    values = tuple(values)
    if not values:
        raise PruningError(f"{name} is empty: give at least one positive integer")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PruningError(f"{name} must be positive integers, got {value!r}")
    return tuple(dict.fromkeys(values))


def _check_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PruningError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_model(name: str, model: Any) -> nn.Module:
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise PruningError(f"model {name!r} must be a transformers PreTrainedModel, got {type(model).__name__}")
    if _vocab_size(model) is None:
        raise PruningError(f"model {name!r} has no config.vocab_size: cannot make token ids for it")
    return model


def _vocab_size(model: nn.Module) -> int | None:
    config = model.config
    size = getattr(config, "vocab_size", None)
    if size is None and hasattr(config, "get_text_config"):
        size = getattr(config.get_text_config(), "vocab_size", None)
    return size


def _model_device(model: nn.Module) -> torch.device:
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device


def _random_inputs(vocab_size: int, batch_size: int, seq_len: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Random token ids (seeded, so every model and every run sees the same) with a full attention mask:
    padding would let a fused kernel skip work and make the timing depend on the data."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator)
    return {"input_ids": input_ids.to(device), "attention_mask": torch.ones_like(input_ids, device=device)}


def _forward_kwargs(model: nn.Module) -> dict[str, Any]:
    """`use_cache=False` where the forward takes it: a benchmark forward builds no KV cache."""
    return {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}


def _count(model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> int:
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS) as counter:
        model(**inputs, **_forward_kwargs(model))
    return int(counter.get_total_flops())


def count_flops(model: nn.Module, batch_size: int, seq_len: int) -> int:
    """Forward FLOPs of `model` on a `[batch_size, seq_len]` batch of token ids, counted by running it once
    under `FlopCounterMode` (matrix products, 2 FLOPs per multiply-add, fused attention included).

    Runs on the model's device in eval mode (its train/eval mode is restored).
    """
    _check_model("model", model)
    (batch_size,) = _check_positive_ints("batch_size", [batch_size])
    (seq_len,) = _check_positive_ints("seq_len", [seq_len])
    inputs = _random_inputs(_vocab_size(model), batch_size, seq_len, _model_device(model))
    training = model.training
    model.eval()
    try:
        return _count(model, inputs)
    finally:
        model.train(training)


# ---- the report ----------------------------------------------------------------------------------------
@dataclass
class SpeedReport:
    """Side-by-side timings of several models; `speedup` and `ideal_speedup` are relative to the first model.

    Each row: `model`, `batch_size`, `seq_len`, `median_ms`, `p25_ms`, `p75_ms` (the spread over repeats),
    `throughput` (examples/s at the median), `flops` (forward), `params`, `speedup` (first model's median /
    this one's), `ideal_speedup` (first model's FLOPs / this one's) and `efficiency` (speedup / ideal).
    """

    device: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpeedReport:
        return cls(device=data["device"], rows=[dict(row) for row in data["rows"]], settings=dict(data.get("settings", {})))

    def save_json(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load_json(cls, path: str | Path) -> SpeedReport:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def models(self) -> list[str]:
        return list(dict.fromkeys(row["model"] for row in self.rows))

    def table(self) -> str:
        """A markdown table, one row per model and shape, with the device and settings above it."""
        lines = [
            f"Device: {self.device}; median of {self.settings.get('repeats', '?')} interleaved repeats "
            f"after {self.settings.get('warmup', '?')} warm-up, p25-p75 in brackets.",
            "",
            "| model | batch | seq | median ms [p25-p75] | examples/s | GFLOPs | params (M) | speedup | ideal | speedup / ideal |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in self.rows:
            lines.append(
                f"| {row['model']} | {row['batch_size']} | {row['seq_len']} "
                f"| {row['median_ms']:.1f} [{row['p25_ms']:.1f}-{row['p75_ms']:.1f}] "
                f"| {row['throughput']:.1f} | {row['flops'] / 1e9:.2f} | {row['params'] / 1e6:.2f} "
                f"| {row['speedup']:.2f}x | {row['ideal_speedup']:.2f}x | {row['efficiency']:.2f} |"
            )
        return "\n".join(lines)

    def plot(self, path: str | Path) -> None:
        """A PNG: throughput vs batch size per model (left) and measured vs ideal speedup (right), one row of
        panels per sequence length. Uses matplotlib's Agg canvas directly (no global backend change)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        if not self.rows:
            raise PruningError("the report has no rows to plot")
        seq_lengths = list(dict.fromkeys(row["seq_len"] for row in self.rows))
        models = self.models()
        figure = Figure(figsize=(11, 4 * len(seq_lengths)))
        FigureCanvasAgg(figure)
        axes = figure.subplots(len(seq_lengths), 2, squeeze=False)
        colors = [f"C{i % 10}" for i in range(len(models))]
        for (left, right), seq_len in zip(axes, seq_lengths):
            for name, color in zip(models, colors):
                rows = [row for row in self.rows if row["model"] == name and row["seq_len"] == seq_len]
                batches = [row["batch_size"] for row in rows]
                left.errorbar(
                    batches,
                    [row["throughput"] for row in rows],
                    yerr=_throughput_spread(rows),
                    marker="o",
                    color=color,
                    label=name,
                    capsize=3,
                )
                if name != models[0]:
                    right.plot(batches, [row["speedup"] for row in rows], "o-", color=color, label=f"{name} measured")
                    right.plot(batches, [row["ideal_speedup"] for row in rows], "--", color=color, label=f"{name} ideal (FLOPs)")
            left.set(xscale="log", xlabel="batch size", ylabel="examples / s", title=f"throughput, seq {seq_len}")
            right.set(xscale="log", xlabel="batch size", ylabel=f"speedup vs {models[0]}", title=f"speedup, seq {seq_len}")
            right.axhline(1.0, color="gray", lw=0.8)
            for axis in (left, right):
                axis.grid(alpha=0.3)
                if axis.get_legend_handles_labels()[0]:
                    axis.legend(fontsize=7)
        figure.suptitle(self.device, fontsize=9)
        figure.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=110)


def _throughput_spread(rows: list[dict[str, Any]]) -> list[list[float]]:
    """Asymmetric error bars of the throughput from the p25/p75 latencies."""
    low = [row["throughput"] - row["batch_size"] / (row["p75_ms"] / 1e3) for row in rows]
    high = [row["batch_size"] / (row["p25_ms"] / 1e3) - row["throughput"] for row in rows]
    return [low, high]


# ---- timing --------------------------------------------------------------------------------------------
def _cpu_name() -> str:
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
        return f"cpu ({_cpu_name()}, {threads} thread{'s' if threads != 1 else ''})"
    return str(device)


def _resolve_device(device: str | torch.device | None) -> torch.device:
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


def _timer(device: torch.device) -> Callable[[Callable[[], Any]], float]:
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


def _quartiles(times: list[float]) -> tuple[float, float, float]:
    if len(times) == 1:
        return times[0], times[0], times[0]
    p25, median, p75 = statistics.quantiles(times, n=4, method="inclusive")
    return p25, median, p75


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
        A `SpeedReport`, rows ordered by sequence length, batch size, then model.
    """
    if not isinstance(models, Mapping) or not models:
        raise PruningError("models must be a non-empty {name: model} mapping; the first one is the baseline")
    for name, model in models.items():
        if not isinstance(name, str) or not name:
            raise PruningError(f"model names must be non-empty strings, got {name!r}")
        _check_model(name, model)
    batch_sizes = _check_positive_ints("batch_sizes", batch_sizes)
    seq_lengths = _check_positive_ints("seq_lengths", seq_lengths)
    warmup = _check_int("warmup", warmup, 0)
    repeats = _check_int("repeats", repeats, 1)
    if num_threads is not None:
        _check_int("num_threads", num_threads, 1)
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise PruningError(f"dtype must be a torch.dtype (e.g. torch.bfloat16), got {dtype!r}")
    if progress is not None and not callable(progress):
        raise PruningError("progress must be a callable progress(done, total, row)")
    device = _resolve_device(device)

    names = list(models)
    vocab_size = min(_vocab_size(model) for model in models.values())
    training = {name: model.training for name, model in models.items()}
    previous_threads = torch.get_num_threads()
    if device.type == "cpu" and num_threads is not None:
        torch.set_num_threads(num_threads)
    threads = torch.get_num_threads()
    timer = _timer(device)
    total, rows = len(names) * len(batch_sizes) * len(seq_lengths), []
    try:
        for model in models.values():
            if not getattr(model, "hf_device_map", None):
                model.to(device=device, dtype=dtype)
            model.eval()
        kwargs = {name: _forward_kwargs(model) for name, model in models.items()}
        params = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
        for seq_len in seq_lengths:
            for batch_size in batch_sizes:
                inputs = {
                    name: _random_inputs(vocab_size, batch_size, seq_len, _model_device(model))
                    for name, model in models.items()
                }
                flops = {name: _count(model, inputs[name]) for name, model in models.items()}
                times = {name: [] for name in names}
                with torch.inference_mode():
                    for round_ in range(warmup + repeats):
                        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                            elapsed = _run(timer, models[name], inputs[name], kwargs[name], name, batch_size, seq_len)
                            if round_ >= warmup:
                                times[name].append(elapsed)
                del inputs
                base = names[0]
                base_median = _quartiles(times[base])[1]
                for name in names:
                    p25, median, p75 = _quartiles(times[name])
                    row = dict(
                        model=name,
                        batch_size=batch_size,
                        seq_len=seq_len,
                        median_ms=median,
                        p25_ms=p25,
                        p75_ms=p75,
                        throughput=batch_size / (median / 1e3),
                        flops=flops[name],
                        params=params[name],
                        speedup=base_median / median,
                        ideal_speedup=flops[base] / flops[name] if flops[name] else math.inf,
                    )
                    row["efficiency"] = row["speedup"] / row["ideal_speedup"]
                    rows.append(row)
                    if progress is not None:
                        progress(len(rows), total, row)
    finally:
        if device.type == "cpu":
            torch.set_num_threads(previous_threads)
        for name, model in models.items():
            model.train(training[name])
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
    return SpeedReport(device=_device_name(device, threads), rows=rows, settings=settings)


def _run(timer, model, inputs, kwargs, name: str, batch_size: int, seq_len: int) -> float:
    try:
        return timer(lambda: model(**inputs, **kwargs))
    except torch.OutOfMemoryError:
        raise PruningError(
            f"model {name!r} ran out of memory at batch {batch_size} x seq {seq_len}; measure smaller batch_sizes"
        ) from None


__all__ = ["SpeedReport", "count_flops", "measure_speed"]
