"""Prefill and decode speed of GGUF files in llama.cpp, side by side: the speed where a decoder is served.

PyTorch's speedup of a pruned decoder (`measure_generation_speed`) is not llama.cpp's: llama.cpp runs its own
kernels, quantized weights and a KV cache of its own layout. `measure_llama_cpp_speed` times the two phases of
greedy generation for each file, interleaved round by round in rotating order as the PyTorch timings are, with a
fixed thread count, and judges the timings with the same noise checks.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .._validation import check_count
from ..errors import PruningError
from .llama_cpp import open_gguf, require_llama_cpp
from .noise import NOISE_ADVICE, load_average, machine_load, noise_reasons, noise_verdict
from .speed import quartiles

__all__ = ["LlamaCppSpeedReport", "measure_llama_cpp_speed"]


@dataclass
class LlamaCppSpeedReport:
    """What `measure_llama_cpp_speed` measured: one row per file (the first the baseline), the noise verdict and
    the settings; `dtype` names the GGUF type every file was timed at (set by the caller that exported them)."""

    rows: list[dict[str, Any]]
    noise: dict[str, Any]
    settings: dict[str, Any]

    @property
    def noisy(self) -> bool:
        return bool(self.noise.get("noisy"))

    def noise_warning(self) -> str | None:
        """One line for a terminal or a card when the timing is noisy (None when it is not)."""
        if not self.noisy:
            return None
        reasons = self.noise.get("reasons") or ["see the rows"]
        more = f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else ""
        return f"noisy llama.cpp timing ({reasons[0]}{more}): these speedups are not trustworthy; {NOISE_ADVICE}"

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "noise": self.noise, "settings": self.settings}

    def table(self) -> str:
        """A markdown table of prefill and decode speed, the settings above it and the noise warning below it."""
        settings = self.settings
        lines = [
            f"llama.cpp {settings.get('dtype', '')}, CPU, {settings['threads']} thread(s), KV cache {settings['kv_cache']}; "
            f"prompt {settings['prompt_len']} tokens + {settings['new_tokens']} greedy; median of {settings['repeats']} "
            f"interleaved repeats after {settings['warmup']} warm-up.",
            "",
            "| model | prefill tok/s | decode tok/s | prefill speedup | ideal (FLOPs) | decode speedup | noise |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in self.rows:
            ideal = row.get("ideal_prefill_speedup")
            lines.append(
                f"| {row['model']} | {row['prefill_tokens_per_s']:,.0f} | {row['decode_tokens_per_s']:,.1f} "
                f"| {row['prefill_speedup']:.2f}x | {f'{ideal:.2f}x' if ideal else '-'} | {row['decode_speedup']:.2f}x "
                f"| {'NOISY' if row['noise']['noisy'] else 'ok'} |"
            )
        if self.noisy:
            lines += ["", f"Warning: {self.noise_warning()}"]
        return "\n".join(lines)


def _vocab_size(llm: Any) -> int:
    return int(llm.n_vocab())


def _prompt(vocab_size: int, length: int) -> list[int]:
    """Seeded random token ids, the same for every file and every run (timing must not depend on the text)."""
    return np.random.default_rng(0).integers(0, vocab_size, size=length).tolist()


def _greedy_token(llm: Any) -> int:
    """The argmax of the last position's logits (llama.cpp keeps only the last position's without `logits_all`)."""
    llama_cpp = require_llama_cpp()
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
    return int(np.argmax(logits))


def _phases(llm: Any, prompt: list[int], new_tokens: int) -> tuple[Callable[[], None], Callable[[], None]]:
    """One prefill (the prompt into an empty cache, giving the first new token) and the `new_tokens - 1` greedy
    steps that follow, one token per call as a server decodes."""
    state: dict[str, int] = {}

    def prefill() -> None:
        llm.reset()
        llm.eval(prompt)
        state["next"] = _greedy_token(llm)

    def decode() -> None:
        token = state["next"]
        for _ in range(new_tokens - 1):
            llm.eval([token])
            token = _greedy_token(llm)

    return prefill, decode


def _timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def _row(name: str, times: dict[str, list[float]], prompt_len: int, new_tokens: int, threads: int) -> dict[str, Any]:
    (prefill_p25, prefill, prefill_p75), (decode_p25, decode, decode_p75) = (
        quartiles(times[phase]) for phase in ("prefill", "decode")
    )
    return {
        "model": name, "engine": "llama.cpp", "threads": threads, "batch_size": 1, "prompt_len": prompt_len,
        "new_tokens": new_tokens, "prefill_ms": prefill, "prefill_p25_ms": prefill_p25, "prefill_p75_ms": prefill_p75,
        "decode_ms": decode, "decode_p25_ms": decode_p25, "decode_p75_ms": decode_p75,
        "prefill_tokens_per_s": prompt_len / (prefill / 1e3),
        "decode_tokens_per_s": max(new_tokens - 1, 1) / (decode / 1e3),
    }  # fmt: skip


def measure_llama_cpp_speed(
    files: Mapping[str, str | os.PathLike],
    *,
    prompt_len: int = 128,
    new_tokens: int = 32,
    warmup: int = 1,
    repeats: int = 5,
    threads: int = 1,
    ideal_prefill_speedup: Mapping[str, float] | None = None,
) -> LlamaCppSpeedReport:
    """Prefill and decode tokens/s of GGUF files in llama.cpp, the first file being the baseline of the speedups.

    Every file is opened once (CPU, `threads` threads, llama.cpp's default f16 KV cache, as it is served); each
    round then runs, for every file in rotating order, a prefill of a `prompt_len`-token prompt (seeded random ids)
    and the `new_tokens - 1` greedy decode steps after it, timed apart. `ideal_prefill_speedup[name]` (the dense
    FLOPs over the file's, when known) adds the "above the FLOPs ideal" noise check.

    Returns a `LlamaCppSpeedReport`; a row has `prefill_ms`,
    `decode_ms` (medians, with p25 and p75), `prefill_tokens_per_s`, `decode_tokens_per_s`, `prefill_speedup`,
    `decode_speedup` and its own `noise` verdict.
    """
    if not isinstance(files, Mapping) or not files:
        raise PruningError("files must be a non-empty {name: path} mapping; the first one is the baseline")
    for value, name, low in ((prompt_len, "prompt_len", 1), (new_tokens, "new_tokens", 1), (warmup, "warmup", 0),
                             (repeats, "repeats", 1), (threads, "threads", 1)):  # fmt: skip
        check_count(name, value, low)
    names = list(files)
    load_before = load_average()
    models = {name: open_gguf(path, n_ctx=prompt_len + new_tokens, threads=threads, f32_cache=False) for name, path in files.items()}
    try:
        prompt = _prompt(min(_vocab_size(llm) for llm in models.values()), prompt_len)
        phases = {name: _phases(llm, prompt, new_tokens) for name, llm in models.items()}
        times = {name: {"prefill": [], "decode": []} for name in names}
        for round_ in range(warmup + repeats):
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                prefill, decode = phases[name]
                elapsed = _timed(prefill), _timed(decode)
                if round_ >= warmup:
                    times[name]["prefill"].append(elapsed[0])
                    times[name]["decode"].append(elapsed[1])
    finally:
        for llm in models.values():
            llm.close()
    rows = [_row(name, times[name], prompt_len, new_tokens, threads) for name in names]
    ideal = dict(ideal_prefill_speedup or {})
    for index, row in enumerate(rows):
        row["prefill_speedup"] = rows[0]["prefill_ms"] / row["prefill_ms"]
        row["decode_speedup"] = rows[0]["decode_ms"] / row["decode_ms"]
        row["ideal_prefill_speedup"] = ideal.get(row["model"])
        baseline = index == 0
        reasons = [
            f"prefill: {reason}" for reason in noise_reasons(
                row["prefill_ms"], row["prefill_p25_ms"], row["prefill_p75_ms"], times_ms=times[row["model"]]["prefill"],
                speedup=None if baseline else row["prefill_speedup"], ideal_speedup=None if baseline else ideal.get(row["model"]),
            )
        ] + [
            f"decode: {reason}" for reason in noise_reasons(
                row["decode_ms"], row["decode_p25_ms"], row["decode_p75_ms"], times_ms=times[row["model"]]["decode"]
            )
        ]  # fmt: skip
        row["noise"] = noise_verdict(reasons)
    load, machine_reasons = machine_load(load_before, load_average(), threads)
    reasons = machine_reasons + [f"{row['model']} {reason}" for row in rows for reason in row["noise"]["reasons"]]
    settings = {"engine": "llama.cpp", "threads": threads, "prompt_len": prompt_len, "new_tokens": new_tokens,
                "warmup": warmup, "repeats": repeats, "kv_cache": "f16", "load_average": load}  # fmt: skip
    return LlamaCppSpeedReport(rows, noise_verdict(reasons), settings)
