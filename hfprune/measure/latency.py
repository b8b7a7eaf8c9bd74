"""A latency model of one model on one device: what each layer, head and FFN neuron costs in seconds.

`measure_latency_model` times the model beside copies of it with half its heads, no attention, half its FFN
neurons, no FFN and half its layers (hfprune's own surgery), each pair side by side, and solves for the
costs of a forward pass at one batch size and sequence length:

    seconds = fixed + sum over kept layers of [layer + (attention + head * heads if heads)
                                                     + (mlp + neuron * neurons if neurons)]

`fixed` is the embeddings and the task head, `layer` what a layer costs with both blocks empty (norms,
residual adds), `attention` / `mlp` a block's cost beyond its heads / neurons. `hfprune.planning.allocation` then
spends a time budget by importance per saved second. Costs are linear in the counts because the pruned
matmuls are: on a CPU that holds well; on a GPU small widths can fall off the kernels' sweet spots, which is
why `PruningTrainer` measures the result again before it stops (`speed_target.SpeedTarget`).
"""

from __future__ import annotations

import copy
import statistics
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..engine.record import get_record, gqa_group_size, kept_ffn
from ..engine.surgery import drop_layers, prune_ffn, prune_heads
from ..errors import PruningError
from .speed import measure_speed

Timer = Callable[[Mapping[str, nn.Module]], dict[str, float]]
"""`timer({name: model}) -> {name: seconds per forward}`, the models timed side by side."""

VARIANTS = ("half_heads", "no_attention", "half_ffn", "no_ffn", "half_layers")


def speed_timer(
    batch_size: int = 32,
    seq_len: int = 128,
    *,
    device: str | torch.device | None = None,
    num_threads: int | None = None,
    repeats: int = 5,
    warmup: int = 2,
) -> Timer:
    """The default `Timer`: `hfprune.measure_speed` at one shape, median seconds per forward of each model."""
    def timer(models: Mapping[str, nn.Module]) -> dict[str, float]:
        report = measure_speed(
            dict(models), batch_sizes=(batch_size,), seq_lengths=(seq_len,), warmup=warmup, repeats=repeats,
            num_threads=num_threads, device=device,
        )  # fmt: skip
        return {row["model"]: row["median_ms"] / 1e3 for row in report.rows}

    return timer


def structure_counts(model: nn.Module) -> list[tuple[int, int]]:
    """`(heads, neurons)` of every kept layer, in order: all the latency model needs to know of a structure."""
    record = get_record(model)
    return [(len(record["kept_heads"][i]), len(kept_ffn(record, i))) for i in range(len(record["kept_layers"]))]


@dataclass
class LatencyModel:
    """Seconds per forward pass of one model at `batch_size` x `seq_len` on `device`, as linear costs."""

    fixed: float
    layer: float
    attention: float
    head: float
    mlp: float
    neuron: float
    dense_seconds: float  # the measured model itself
    batch_size: int
    seq_len: int
    device: str = ""
    measured: dict[str, float] = field(default_factory=dict)  # seconds of every timed variant

    def layer_seconds(self, heads: int, neurons: int) -> float:
        """What one layer with `heads` heads and `neurons` FFN neurons costs (0 heads: no attention block)."""
        seconds = self.layer
        if heads:
            seconds += self.attention + self.head * heads
        if neurons:
            seconds += self.mlp + self.neuron * neurons
        return seconds

    def floor_seconds(self, min_layers: int = 1) -> float:
        """The least any structure with `min_layers` kept layers can take: the fixed costs and empty layers."""
        return self.fixed + min_layers * self.layer

    def predict_counts(self, counts: list[tuple[int, int]]) -> float:
        """Seconds per forward of a structure given as `structure_counts`."""
        return self.fixed + sum(self.layer_seconds(heads, neurons) for heads, neurons in counts)

    def predict(self, model: nn.Module) -> float:
        """Predicted seconds per forward of `model` (a pruned copy of the measured one)."""
        return self.predict_counts(structure_counts(model))

    def speedup(self, model: nn.Module) -> float:
        """Predicted speedup of `model` over the measured model."""
        return self.dense_seconds / self.predict(model)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyModel:
        return cls(**data)


def _variant(model: nn.Module, name: str) -> tuple[nn.Module, dict[str, int]]:
    """A pruned copy of `model` and how many heads / neurons / layers it lost, per `VARIANTS` name."""
    variant = copy.deepcopy(model)
    with warnings.catch_warnings():  # an emptied block's zero-element weights make torch warn
        warnings.simplefilter("ignore", UserWarning)
        return variant, _prune_variant(variant, name)


def _prune_variant(variant: nn.Module, name: str) -> dict[str, Any]:
    record = get_record(variant)
    group = gqa_group_size(record)
    kept = record["kept_layers"]
    lost = {"heads": 0, "neurons": 0, "layers": []}
    if name in ("half_heads", "no_attention"):
        plan = {}
        for position, layer in enumerate(kept):
            heads = record["kept_heads"][position]
            groups = sorted({head // group for head in heads})
            gone = groups if name == "no_attention" else groups[: len(groups) // 2]
            plan[layer] = [head for head in heads if head // group in gone]
            lost["heads"] += len(plan[layer])
        prune_heads(variant, plan)
    elif name in ("half_ffn", "no_ffn"):
        plan = {}
        for position, layer in enumerate(kept):
            neurons = kept_ffn(record, position)
            plan[layer] = neurons if name == "no_ffn" else neurons[: len(neurons) // 2]
            lost["neurons"] += len(plan[layer])
        prune_ffn(variant, plan)
    else:
        lost["layers"] = list(range(len(kept) - len(kept) // 2, len(kept)))  # positions of the last half
        drop_layers(variant, [kept[position] for position in lost["layers"]])
    return lost


def measure_latency_model(
    model: nn.Module,
    batch_size: int = 32,
    seq_len: int = 128,
    *,
    timer: Timer | None = None,
    device: str | torch.device | None = None,
    num_threads: int | None = None,
) -> LatencyModel:
    """Fit a `LatencyModel` of `model` from side-by-side timings of it and five pruned copies.

    The model is timed as it is (the default timer moves it to `device` and restores its train/eval mode);
    only the copies are pruned. `timer`: how to time models (default
    `speed_timer(batch_size, seq_len, device=device, num_threads=num_threads)`), e.g. an ONNX Runtime or a
    serving stack's timer, so the costs are those of where the model will run. Each variant is timed beside
    the dense copy and its seconds are its measured ratio to the dense model times the dense median over all
    pairs, so load drifting between pairs cancels. Costs that noise makes negative are clamped at 0.
    """
    timer = timer or speed_timer(batch_size, seq_len, device=device, num_threads=num_threads)
    reference = model
    counts = structure_counts(reference)
    if not counts:
        raise PruningError("the model has no layers left to measure a latency model of")
    dense_times, ratios, lost = [], {}, {}
    for name in VARIANTS:
        if name == "half_layers" and len(counts) < 2:
            continue
        variant, lost[name] = _variant(reference, name)
        times = timer({"dense": reference, name: variant})
        dense_times.append(times["dense"])
        ratios[name] = times[name] / times["dense"]
        del variant
    dense = statistics.median(dense_times)
    measured = {name: ratio * dense for name, ratio in ratios.items()}

    heads = sum(h for h, _ in counts)
    neurons = sum(n for _, n in counts)
    head = max((dense - measured["half_heads"]) / lost["half_heads"]["heads"], 0.0) if lost["half_heads"]["heads"] else 0.0
    neuron = max((dense - measured["half_ffn"]) / lost["half_ffn"]["neurons"], 0.0) if lost["half_ffn"]["neurons"] else 0.0
    attention_layers = sum(1 for h, _ in counts if h)
    mlp_layers = sum(1 for _, n in counts if n)
    attention = max((dense - measured["no_attention"] - head * heads) / attention_layers, 0.0) if attention_layers else 0.0
    mlp = max((dense - measured["no_ffn"] - neuron * neurons) / mlp_layers, 0.0) if mlp_layers else 0.0
    costs = LatencyModel(
        fixed=0.0, layer=0.0, attention=attention, head=head, mlp=mlp, neuron=neuron, dense_seconds=dense,
        batch_size=batch_size, seq_len=seq_len, device=str(device or ""), measured=measured,
    )  # fmt: skip
    if "half_layers" in measured:
        dropped = lost["half_layers"]["layers"]
        blocks = sum(costs.layer_seconds(*counts[position]) for position in dropped)
        costs.layer = max((dense - measured["half_layers"] - blocks) / len(dropped), 0.0)
    costs.fixed = dense - sum(costs.layer_seconds(*layer_counts) for layer_counts in counts)
    if costs.fixed < 0:  # noise put more into the layers than the whole model took: scale them down to fit
        scale = dense / (dense - costs.fixed)
        for name in ("layer", "attention", "head", "mlp", "neuron"):
            setattr(costs, name, getattr(costs, name) * scale)
        costs.fixed = 0.0
    return costs


__all__ = ["LatencyModel", "Timer", "measure_latency_model", "speed_timer", "structure_counts"]
