"""Whether a timing can be trusted: the noise checks of one row (wide spread, drift, a speedup above the FLOPs
ideal), of the machine (load average above the CPUs, more threads than CPUs), and the verdict of a report.

All but the readings of the machine's load are pure functions of the numbers, so a saved report can be
judged again; it exists apart from the timing so that `SpeedReport` and the benchmarks can use the checks alone.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["assess_noise", "load_reasons", "noise_reasons"]

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


def load_average() -> float | None:
    """The 1-minute load average; None where the OS has none."""
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


def machine_load(before: float | None, after: float | None, threads: int) -> tuple[dict[str, Any], list[str]]:
    """The load averages read before and after a CPU measurement with `threads` threads: the report's
    `settings["load_average"]` (`before`, `after`, `cpus`) and their `load_reasons`, each reason once."""
    cpus, loads = _cpu_count(), {"before": before, "after": after}
    return {**loads, "cpus": cpus}, _machine_reasons(loads, cpus, threads)


def noise_verdict(reasons: list[str]) -> dict[str, Any]:
    """`{"noisy", "reasons"}`: the verdict that `reasons` give."""
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
        row["noise"] = noise_verdict(
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
    return noise_verdict(reasons)
