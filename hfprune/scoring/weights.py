"""Data-free baselines: head and FFN-neuron scores from weight norms (magnitude) or a seeded shuffle (random)."""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..engine.arch import get_adapter
from ..engine.arch.base import resolve
from ..engine.record import get_record, gqa_group_size, kept_ffn, kv_groups
from ..errors import PruningError
from .common import missing_as_nan, present_units


# ---- data-free baselines -----------------------------------------------------------------------------
def _head_rows(projection, heads_on_output: bool) -> torch.Tensor:
    """The projection's weight as a matrix whose rows are head units, heads one after another."""
    if isinstance(projection, nn.Parameter) and projection.dim() == 3:  # XLNet: [d_model, heads, d_head]
        return projection.permute(1, 2, 0).flatten(0, 1)
    if isinstance(projection, Conv1D):  # weight [in, out]
        return projection.weight.T if heads_on_output else projection.weight
    if isinstance(projection, nn.Linear):  # weight [out, in]
        return projection.weight if heads_on_output else projection.weight.T
    raise PruningError(f"magnitude scores cannot read heads from a {type(projection).__name__}")


def _squared_norms(rows: torch.Tensor, units: int) -> torch.Tensor:
    return rows.detach().double().reshape(units, -1).pow(2).sum(dim=1)


def magnitude_head_scores(model: nn.Module) -> torch.Tensor:
    """`[num_layers, num_heads]` L2 norm of each head's slices of the q, k, v and output weights (no data).

    Under grouped-query attention the k/v slices are those of the head's KV group, shared by its heads.
    Biases are left out. NaN for heads already gone.
    """
    adapter, record = get_adapter(model), get_record(model)
    original, group_size = record["original"], gqa_group_size(record)
    scores = torch.full((original["num_layers"], original["num_heads"]), float("nan"), dtype=torch.float64)
    for position, layer in enumerate(adapter.get_layers(model)):
        heads = record["kept_heads"][position]
        if not heads:
            continue
        groups = kv_groups(record, heads)
        paths = (adapter.query, adapter.key, adapter.value)
        if len(set(paths)) == 1:  # GPT-2: q, k and v side by side in one fused projection
            q, k, v = _head_rows(resolve(layer, adapter.query), True).chunk(3)
        else:
            q, k, v = (_head_rows(resolve(layer, path), True) for path in paths)
        o = _head_rows(resolve(layer, adapter.output), False)
        kv = _squared_norms(k, len(groups)) + _squared_norms(v, len(groups))
        own_group = torch.tensor([groups.index(head // group_size) for head in heads])
        total = _squared_norms(q, len(heads)) + _squared_norms(o, len(heads)) + kv[own_group.to(kv.device)]
        scores[record["kept_layers"][position], heads] = total.sqrt().cpu()
    return scores


def magnitude_ffn_scores(model: nn.Module) -> torch.Tensor:
    """`[num_layers, intermediate_size]` L2 norm of each FFN neuron's input rows and output column (no data).

    The weight-only baseline for FFN pruning; NaN for neurons already gone.
    """
    adapter, record = get_adapter(model), get_record(model)
    original = record["original"]
    scores = torch.full((original["num_layers"], original["intermediate_size"]), float("nan"), dtype=torch.float64)
    for position, layer in enumerate(adapter.get_layers(model)):
        neurons = kept_ffn(record, position)
        if not neurons:
            continue
        total = _squared_norms(_head_rows(layer.get_submodule(adapter.ffn_output), False), len(neurons))
        for path in adapter.ffn_inputs:
            total = total + _squared_norms(_head_rows(layer.get_submodule(path), True), len(neurons))
        scores[record["kept_layers"][position], neurons] = total.sqrt().cpu()
    return scores


def random_head_scores(model: nn.Module, seed: int = 0) -> torch.Tensor:
    """`[num_layers, num_heads]` uniform random scores (the random-pruning baseline); NaN for heads gone."""
    present = present_units(get_record(model), "heads")
    generator = torch.Generator().manual_seed(seed)
    return missing_as_nan(torch.rand(present.shape, generator=generator, dtype=torch.float64), present)


def random_ffn_scores(model: nn.Module, seed: int = 0) -> torch.Tensor:
    """`[num_layers, intermediate_size]` uniform random scores (the random-pruning baseline for FFN neurons);
    NaN for neurons gone."""
    present = magnitude_ffn_scores(model)  # only its NaN pattern is used: which neurons still exist
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(present.shape, generator=generator, dtype=torch.float64)
    return noise.masked_fill(present.isnan(), float("nan"))
