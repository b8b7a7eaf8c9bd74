"""Latency models kept between runs: one fit per model shape, timing setup and machine, as TensorRT keeps a timing
cache.

A latency model is a property of the model's shapes and the machine, not of a run. Fitting it again in every run
costs about a minute on a CPU, and its fit is noisy: on an idle 2-core machine the attention block's fixed cost
came out anywhere from 0 to 4.9 ms in three fits, so the same `--speedup 3` command kept 7 heads in one run and 12
in another (`benchmarks/results/latency_model_spread*.json`). With the cache, the first run's fit is reused by every
later run on the same machine with the same shapes, threads and input size, so two runs of one command plan alike
(their measured speedups still decide any extra step).

Files are JSON under `HF_HOME/hfprune/latency/` (`huggingface_hub`'s cache root; `HFPRUNE_LATENCY_CACHE` names
another folder), named by a hash of everything the
timings depend on (`latency_key`); a file that cannot be read is measured again and replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import constants
from torch import nn

from .latency import VARIANTS, LatencyModel
from .speed import cpu_name

__all__ = ["ENV_VAR", "FORMAT", "cached_latency_model", "default_latency_cache", "latency_key"]

FORMAT = 1
"""The cache files' format, in their key: a change to how a latency model is measured or fitted bumps it."""
_IGNORED_CONFIG_KEYS = ("_name_or_path", "transformers_version", "id2label", "label2id", "architectures", "finetuning_task")


ENV_VAR = "HFPRUNE_LATENCY_CACHE"
"""Names another folder for the cache (as `HF_DATASETS_CACHE` does for datasets)."""


def default_latency_cache() -> Path:
    """Where latency models are kept: `$HFPRUNE_LATENCY_CACHE`, else `HF_HOME/hfprune/latency`."""
    return Path(os.environ.get(ENV_VAR) or Path(constants.HF_HOME) / "hfprune" / "latency")


def _device_description(device: str | torch.device | None) -> str:
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        return f"cuda {torch.cuda.get_device_name(device)} {torch.version.cuda}"
    return f"{device.type} {cpu_name()} {os.cpu_count()}"


def latency_key(
    model: nn.Module, batch_size: int, seq_len: int, device: str | torch.device | None, num_threads: int | None
) -> str:
    """A hash of what a latency model's timings depend on: the model's class, weight shapes and dtypes and the rest
    of its config (not its name or labels), the input size, the device and the machine (host, processor, cores),
    the threads, torch's version and `FORMAT`."""
    config = {key: value for key, value in model.config.to_dict().items() if key not in _IGNORED_CONFIG_KEYS}
    shapes = [(name, list(tensor.shape), str(tensor.dtype)) for name, tensor in model.state_dict().items()]
    identity = {
        "format": FORMAT, "variants": VARIANTS, "class": type(model).__name__, "config": config, "shapes": shapes,
        "batch_size": batch_size, "seq_len": seq_len, "device": _device_description(device), "host": platform.node(),
        "threads": num_threads if num_threads is not None else torch.get_num_threads(), "torch": torch.__version__,
    }  # fmt: skip
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _read(path: Path) -> LatencyModel | None:
    try:
        return LatencyModel.from_dict(json.loads(path.read_text())["latency_model"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing, or written by something else: measured again


def _write(path: Path, latency: LatencyModel, key: str) -> None:
    """Write atomically (a temporary file renamed into place), so concurrent runs never read half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"key": key, "format": FORMAT, "latency_model": latency.to_dict()}
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as file:
        json.dump(payload, file, indent=1)
    os.replace(file.name, path)


def cached_latency_model(
    model: nn.Module,
    measure: Callable[[], LatencyModel],
    *,
    batch_size: int,
    seq_len: int,
    device: str | torch.device | None,
    num_threads: int | None,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[LatencyModel, Path | None]:
    """The latency model of `model` kept in `cache_dir` (default `default_latency_cache()`), else `measure()`'s,
    which is then kept. Returns it and the cache file it was read from (None when it was measured now).

    A cache folder that cannot be written is not an error: the measured model is returned, and the next run
    measures again."""
    key = latency_key(model, batch_size, seq_len, device, num_threads)
    path = Path(cache_dir if cache_dir is not None else default_latency_cache()) / f"{key}.json"
    cached = _read(path)
    if cached is not None:
        return cached, path
    latency = measure()
    try:
        _write(path, latency, key)
    except OSError:
        pass  # a read-only home: this run still has its measurement
    return latency, None
