"""Prefill and decode speed of causal LMs, side by side: what a decoder's user feels, not one forward pass.

A pruned decoder's forward-pass speedup (`measure_speed`) is the prefill's. Decoding one token at a time with a
KV cache is memory-bound on most hardware and gains differently: fewer layers and KV heads shrink the cache and
the weights read per token, fewer FFN neurons only the weights. `measure_generation_speed` times both phases of
greedy generation for each model, interleaved round by round as `measure_speed` does.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .._validation import check_count
from ..errors import PruningError
from .flops import model_vocab_size, random_inputs
from .speed import dense_twin, device_timer, quartiles, resolve_device


def _prefill_and_decode(model: nn.Module, inputs: dict[str, torch.Tensor], new_tokens: int):
    """Closures for one prefill (prompt -> KV cache and the first new token) and the `new_tokens - 1` greedy
    steps that follow from that cache; `state["tokens"]` holds the tokens the last decode produced."""
    state: dict[str, Any] = {}
    # transformers 5 names the KV cache `cache` (`past_key_values` before, and still in some families)
    cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def prefill() -> None:
        output = model(**inputs, use_cache=True)
        state["cache"], state["next"] = output[cache_name], output.logits[:, -1:].argmax(-1)

    def decode() -> None:
        cache, token, mask = state["cache"], state["next"], inputs["attention_mask"]
        state["tokens"] = [token]
        for _ in range(new_tokens - 1):
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            output = model(input_ids=token, attention_mask=mask, use_cache=True, **{cache_name: cache})
            cache, token = output[cache_name], output.logits[:, -1:].argmax(-1)
            state["tokens"].append(token)

    return prefill, decode, state


def measure_generation_speed(
    models: Mapping[str, nn.Module],
    *,
    batch_size: int = 1,
    prompt_len: int = 128,
    new_tokens: int = 32,
    warmup: int = 1,
    repeats: int = 5,
    num_threads: int | None = None,
    device: str | torch.device | None = None,
) -> list[dict[str, Any]]:
    """Prefill and decode tokens/s of every model (causal LMs), the first being the baseline of the speedups.

    Each round runs, for every model in rotating order, a prefill of a `[batch_size, prompt_len]` prompt (seeded
    random ids, giving the first new token) and the `new_tokens - 1` greedy steps after it from the KV cache,
    timed apart. Returns one row per model:
    `prefill_ms`, `decode_ms` (medians), `prefill_tokens_per_s` (batch x prompt / prefill time),
    `decode_tokens_per_s` (batch x decoded tokens / decode time), `prefill_speedup`, `decode_speedup`, with the
    p25-p75 of both times. Models are moved to `device` in place; their train/eval mode is restored.
    """
    if not isinstance(models, Mapping) or not models:
        raise PruningError("models must be a non-empty {name: model} mapping; the first one is the baseline")
    for value, name, low in ((batch_size, "batch_size", 1), (prompt_len, "prompt_len", 1), (new_tokens, "new_tokens", 1),
                             (warmup, "warmup", 0), (repeats, "repeats", 1)):  # fmt: skip
        check_count(name, value, low)
    device = resolve_device(device)
    names, timer = list(models), device_timer(device)
    inputs = random_inputs(min(model_vocab_size(model) for model in models.values()), batch_size, prompt_len, device)
    training = {name: model.training for name, model in models.items()}
    previous_threads = torch.get_num_threads()
    if device.type == "cpu" and num_threads is not None:
        torch.set_num_threads(check_count("num_threads", num_threads, 1))
    times = {name: {"prefill": [], "decode": []} for name in names}
    try:
        phases = {}
        for name, model in models.items():
            model.to(device).eval()
            phases[name] = _prefill_and_decode(model, inputs, new_tokens)[:2]
        with torch.inference_mode():
            for round_ in range(warmup + repeats):
                for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                    prefill, decode = phases[name]
                    elapsed = timer(prefill), timer(decode)
                    if round_ >= warmup:
                        times[name]["prefill"].append(elapsed[0])
                        times[name]["decode"].append(elapsed[1])
    finally:
        if device.type == "cpu":
            torch.set_num_threads(previous_threads)
        for name, model in models.items():
            model.train(training[name])
    rows = []
    for name in names:
        (prefill_p25, prefill, prefill_p75), (decode_p25, decode, decode_p75) = (
            quartiles(times[name][phase]) for phase in ("prefill", "decode")
        )
        rows.append({
            "model": name, "batch_size": batch_size, "prompt_len": prompt_len, "new_tokens": new_tokens,
            "prefill_ms": prefill, "prefill_p25_ms": prefill_p25, "prefill_p75_ms": prefill_p75,
            "decode_ms": decode, "decode_p25_ms": decode_p25, "decode_p75_ms": decode_p75,
            "prefill_tokens_per_s": batch_size * prompt_len / (prefill / 1e3),
            "decode_tokens_per_s": batch_size * max(new_tokens - 1, 1) / (decode / 1e3),
        })  # fmt: skip
    for row in rows:
        row["prefill_speedup"] = rows[0]["prefill_ms"] / row["prefill_ms"]
        row["decode_speedup"] = rows[0]["decode_ms"] / row["decode_ms"]
    return rows


def generation_against_dense(pruned: nn.Module, dense: nn.Module | None = None, **measure_kwargs: Any) -> list[dict[str, Any]]:
    """`measure_generation_speed` of a pruned decoder beside its dense original ("dense", "pruned"); without
    `dense`, a random-weight twin with the original shapes (timing does not depend on weight values)."""
    dense = dense if dense is not None else dense_twin(pruned)
    return measure_generation_speed({"dense": dense, "pruned": pruned}, **measure_kwargs)


__all__ = ["generation_against_dense", "measure_generation_speed"]
