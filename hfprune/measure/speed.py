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

import copy
import inspect
import json
import math
import os
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

from .._validation import check_count, is_integer
from ..engine.record import unpruned_twin
from ..errors import PruningError

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
        if not is_integer(value) or value < 1:
            raise PruningError(f"{name} must be positive integers, got {value!r}")
    return tuple(dict.fromkeys(values))


def _check_int(name: str, value: int, minimum: int) -> int:
    return check_count(name, value, minimum)


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


# ---- noise ---------------------------------------------------------------------------------------------
# On a quiet machine with a pinned thread count, repeated forwards of one model vary by a few percent (the
# shipped MiniLM tables: p25-p75 within 1-9% of the median). The thresholds sit well above that and below
# the effects a report is read for (50% of the heads is a 1.2x speedup), so a flagged row is one whose
# speedup cannot be read to the first decimal.
SPREAD_LIMIT = 0.2  # (p75 - p25) / median: the middle half of the timings spans more than 20% of the median
DRIFT_LIMIT = 0.15  # medians of the first and second half of the rounds differ by more than 15%
ABOVE_IDEAL_LIMIT = 1.1  # removing FLOPs cannot speed up what is left: > 1.1x the FLOPs ideal means the
# baseline was slowed by something else (cache effects explain a few percent, not 10%)
LOAD_MARGIN = 0.5  # an otherwise idle machine's load average sits at a few tenths (daemons, the kernel)
NOISE_ADVICE = "re-measure on a quiet machine with `hfprune bench --threads 1` and more `--repeats`"


def _drift(times: list[float]) -> float | None:
    """Relative difference of the medians of the first and second half of the rounds (None: too few)."""
    if len(times) < 4:
        return None
    half = len(times) // 2
    first, second = statistics.median(times[:half]), statistics.median(times[-half:])
    return abs(first - second) / min(first, second) if min(first, second) > 0 else None


def noise_reasons(
    median_ms: float | None,
    p25_ms: float | None,
    p75_ms: float | None,
    *,
    speedup: float | None = None,
    ideal_speedup: float | None = None,
    times_ms: list[float] | None = None,
) -> list[str]:
    """Why one row's timing should not be trusted (empty: no sign of noise). A pure function of the numbers.

    `speedup` / `ideal_speedup` are checked for rows other than the baseline; `times_ms`, the timed rounds in
    order, adds the drift check (at least 4 rounds).
    """
    reasons = []
    if None not in (median_ms, p25_ms, p75_ms) and median_ms > 0 and (p75_ms - p25_ms) / median_ms > SPREAD_LIMIT:
        reasons.append(f"p25-p75 spread is {(p75_ms - p25_ms) / median_ms:.0%} of the median (limit {SPREAD_LIMIT:.0%})")
    drift = _drift(times_ms) if times_ms else None
    if drift is not None and drift > DRIFT_LIMIT:
        reasons.append(f"timings drifted {drift:.0%} between the first and second half of the rounds (limit {DRIFT_LIMIT:.0%})")
    if (
        isinstance(speedup, (int, float))
        and isinstance(ideal_speedup, (int, float))
        and math.isfinite(ideal_speedup)
        and speedup > ABOVE_IDEAL_LIMIT * ideal_speedup
    ):
        reasons.append(f"measured speedup {speedup:.2f}x is more than 10% above the FLOPs ideal {ideal_speedup:.2f}x")
    return reasons


def load_reasons(load: float, cpus: int, threads: int, when: str) -> list[str]:
    """Why a CPU timing may have waited for a core: the 1-minute load average (which counts this process
    too) above the CPUs, or more timing threads than CPUs. A pure function of the numbers.

    The machine is oversubscribed when more tasks want to run than there are CPUs; comparing with the CPU
    count, not with `threads`, keeps a many-core machine with a few other jobs, or this process's own
    training just before the timing, from being flagged.
    """
    reasons = []
    if threads > cpus:
        reasons.append(f"{threads} timing threads on {cpus} CPU{'s' if cpus != 1 else ''}")
    if load > cpus + LOAD_MARGIN:
        reasons.append(f"1-minute load average {load:.1f} {when} the measurement, above the {cpus} CPU{'s' if cpus != 1 else ''}")
    return reasons


def _cpu_count() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows has no load average
        return None


def _machine_reasons(loads: Mapping[str, float | None], cpus: int, threads: int) -> list[str]:
    """`load_reasons` for the readings taken before and after the measurement, each reason once."""
    reasons: list[str] = []
    for when, load in loads.items():
        if load is not None:
            reasons += [reason for reason in load_reasons(load, cpus, threads, when) if reason not in reasons]
    return reasons


def _verdict(reasons: list[str]) -> dict[str, Any]:
    return {"noisy": bool(reasons), "reasons": list(reasons)}


def _row_label(row: Mapping[str, Any]) -> str:
    return f"{row['model']} at batch {row['batch_size']} x {row['seq_len']}"


def assess_noise(
    rows: list[dict[str, Any]],
    times: Mapping[tuple[str, int, int], list[float]] | None = None,
    machine_reasons: Iterable[str] = (),
) -> dict[str, Any]:
    """Set `row["noise"] = {"noisy", "reasons"}` on every row and return the overall verdict.

    `times[(model, batch_size, seq_len)]` are the timed rounds (for the drift check); without them only
    the checks that the rows themselves allow are made (a report saved before noise was recorded). A
    non-baseline row whose baseline row at the same shape is noisy is noisy too: its speedup divides by it.
    """
    times = times or {}
    base = rows[0]["model"] if rows else None
    for row in rows:
        key = (row["model"], row["batch_size"], row["seq_len"])
        is_base = row["model"] == base
        row["noise"] = _verdict(
            noise_reasons(
                row.get("median_ms"), row.get("p25_ms"), row.get("p75_ms"),
                speedup=None if is_base else row.get("speedup"),
                ideal_speedup=None if is_base else row.get("ideal_speedup"),
                times_ms=times.get(key),
            )
        )  # fmt: skip
    reasons = list(machine_reasons)
    reasons += [f"{_row_label(row)}: {reason}" for row in rows for reason in row["noise"]["reasons"]]
    baseline_noisy = {(r["batch_size"], r["seq_len"]) for r in rows if r["model"] == base and r["noise"]["noisy"]}
    for row in rows:
        if row["model"] != base and (row["batch_size"], row["seq_len"]) in baseline_noisy:
            row["noise"]["reasons"].append(f"its baseline ({base}) timing at this shape is noisy")
            row["noise"]["noisy"] = True
    return _verdict(reasons)


# ---- the report ----------------------------------------------------------------------------------------
@dataclass
class SpeedReport:
    """Side-by-side timings of several models; `speedup` and `ideal_speedup` are relative to the first model.

    Each row: `model`, `batch_size`, `seq_len`, `median_ms`, `p25_ms`, `p75_ms` (the spread over repeats),
    `throughput` (examples/s at the median), `flops` (forward), `params`, `speedup` (first model's median /
    this one's), `ideal_speedup` (first model's FLOPs / this one's), `efficiency` (speedup / ideal) and
    `noise` (`{"noisy": bool, "reasons": [...]}`, see `noise_reasons`). `noise` on the report is the overall
    verdict: the machine's load and every row's reasons.
    """

    device: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    noise: dict[str, Any] = field(default_factory=lambda: _verdict([]))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpeedReport:
        """The inverse of `to_dict`. A report saved before noise was recorded gets the checks its rows allow
        (spread, speedup above the ideal); drift and load cannot be judged afterwards."""
        rows = [copy.deepcopy(dict(row)) for row in data["rows"]]
        noise = data.get("noise")
        if noise is None or any("noise" not in row for row in rows):
            noise = assess_noise(rows)
        return cls(device=data["device"], rows=rows, settings=dict(data.get("settings", {})), noise=copy.deepcopy(dict(noise)))

    def save_json(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load_json(cls, path: str | Path) -> SpeedReport:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def models(self) -> list[str]:
        return list(dict.fromkeys(row["model"] for row in self.rows))

    @property
    def noisy(self) -> bool:
        return bool(self.noise.get("noisy"))

    def noise_warning(self) -> str | None:
        """One line for a terminal or a card when the timing is noisy (None when it is not)."""
        if not self.noisy:
            return None
        noisy_rows = sum(1 for row in self.rows if row.get("noise", {}).get("noisy"))
        reasons = self.noise.get("reasons", [])
        first = reasons[0] if reasons else "see the rows"
        more = f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else ""
        return (
            f"noisy timing ({noisy_rows} of {len(self.rows)} rows; {first}{more}): these speedups are not "
            f"trustworthy; {NOISE_ADVICE}"
        )

    def table(self) -> str:
        """A markdown table, one row per model and shape, with the device and settings above it and a
        warning below it when the timing is noisy."""
        lines = [
            f"Device: {self.device}; median of {self.settings.get('repeats', '?')} interleaved repeats "
            f"after {self.settings.get('warmup', '?')} warm-up, p25-p75 in brackets.",
            "",
            "| model | batch | seq | median ms [p25-p75] | examples/s | GFLOPs | params (M) | speedup | ideal | speedup / ideal | noise |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in self.rows:
            lines.append(
                f"| {row['model']} | {row['batch_size']} | {row['seq_len']} "
                f"| {row['median_ms']:.1f} [{row['p25_ms']:.1f}-{row['p75_ms']:.1f}] "
                f"| {row['throughput']:.1f} | {row['flops'] / 1e9:.2f} | {row['params'] / 1e6:.2f} "
                f"| {row['speedup']:.2f}x | {row['ideal_speedup']:.2f}x | {row['efficiency']:.2f} "
                f"| {'NOISY' if row.get('noise', {}).get('noisy') else 'ok'} |"
            )
        if self.noisy:
            lines += ["", f"Warning: {self.noise_warning()}"]
            lines += [f"- {reason}" for reason in self.noise.get("reasons", [])]
        return "\n".join(lines)

    def plot(self, path: str | Path) -> None:
        """A PNG: throughput vs batch size per model (left) and measured vs ideal speedup (right), one row of
        panels per sequence length, ticks at the measured batch sizes."""
        figure = self._figure()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=110)

    def _figure(self):
        """The matplotlib Figure of `plot`, on its own Agg canvas (no global backend change)."""
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
            measured = sorted({row["batch_size"] for row in self.rows if row["seq_len"] == seq_len})
            left.set(xscale="log", xlabel="batch size", ylabel="examples / s", title=f"throughput, seq {seq_len}")
            right.set(xscale="log", xlabel="batch size", ylabel=f"speedup vs {models[0]}", title=f"speedup, seq {seq_len}")
            right.axhline(1.0, color="gray", lw=0.8)
            for axis in (left, right):
                axis.set_xticks(measured, [str(batch) for batch in measured])
                axis.set_xticks([], minor=True)  # no log-scale minor ticks between the measured sizes
                axis.grid(alpha=0.3)
                if axis.get_legend_handles_labels()[0]:
                    axis.legend(fontsize=7)
        title = self.device + ("  (NOISY timing: " + NOISE_ADVICE + ")" if self.noisy else "")
        figure.suptitle(title, fontsize=9)
        figure.tight_layout()
        return figure


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
        A `SpeedReport`, rows ordered by sequence length, batch size, then model. Its `noise` (and every
        row's) says whether the timing can be trusted: a wide p25-p75 spread, timings that drift between
        the first and second half of the rounds, a speedup more than 10% above the FLOPs ideal, or (CPU) a
        load average above the CPU count before or after the measurement (`noise_reasons`, `load_reasons`).
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
    total, rows, all_times = len(names) * len(batch_sizes) * len(seq_lengths), [], {}
    load_start = _load_average() if device.type == "cpu" else None
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
                    all_times[(name, batch_size, seq_len)] = times[name]
                    if progress is not None:
                        progress(len(rows), total, row)
    finally:
        if device.type == "cpu":
            torch.set_num_threads(previous_threads)
        for name, model in models.items():
            model.train(training[name])
    load_end = _load_average() if device.type == "cpu" else None
    cpus = _cpu_count()
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
    if device.type == "cpu":
        settings["load_average"] = {"before": load_start, "after": load_end, "cpus": cpus}
    machine = _machine_reasons({"before": load_start, "after": load_end}, cpus, threads) if device.type == "cpu" else []
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
    progress: Callable[[str, int, int], None] | None = None,
    **measure_kwargs: Any,
) -> SpeedReport:
    """`measure_speed` of a pruned model beside its dense original, named "dense" and "pruned".

    Without `dense`, the baseline is a random-weight model with the original shapes, on the pruned model's
    device and dtype: timing does not depend on weight values, so the dense checkpoint is not needed.
    `progress(stage, done, total)` is the jobs' progress callback.
    """
    dense = dense if dense is not None else dense_twin(pruned)
    callback = (lambda done, total, row: progress("time dense vs pruned", done, total)) if progress else None
    return measure_speed({"dense": dense, "pruned": pruned}, progress=callback, **measure_kwargs)


def _run(timer, model, inputs, kwargs, name: str, batch_size: int, seq_len: int) -> float:
    try:
        return timer(lambda: model(**inputs, **kwargs))
    except torch.OutOfMemoryError:
        raise PruningError(
            f"model {name!r} ran out of memory at batch {batch_size} x seq {seq_len}; measure smaller batch_sizes"
        ) from None


__all__ = [
    "SpeedReport",
    "assess_noise",
    "count_flops",
    "load_reasons",
    "measure_speed",
    "noise_reasons",
    "time_against_dense",
]
