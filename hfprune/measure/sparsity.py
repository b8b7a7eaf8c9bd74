"""How much of a model was removed: layers, heads, FFN neurons and parameters against the dense original.

Counting reads only the model's record (`config.hfprune`) and its parameters, so it sits with the other
measurements, below the jobs that report it and the model card that shows it.
"""

from __future__ import annotations

from torch import nn

from ..engine.record import get_record, kept_ffn, unpruned_twin
from ..engine.structure import PATCH_KEY

__all__ = ["num_parameters", "original_parameter_count", "sparsity_summary"]


def num_parameters(model: nn.Module) -> int:
    """The parameters a model holds now (tied weights once, as `model.parameters()` yields them)."""
    return sum(parameter.numel() for parameter in model.parameters())


def original_parameter_count(model: nn.Module) -> int | None:
    """Parameters of the unpruned model (built on the meta device: no memory, no init cost)."""
    if not getattr(model.config, PATCH_KEY, None):
        return num_parameters(model)
    try:
        return sum(p.numel() for p in unpruned_twin(model, "meta").parameters())
    except Exception:  # a family whose config cannot be rebuilt this way: leave the count out
        return None


def sparsity_summary(model: nn.Module, base_num_parameters: int | None = None) -> dict[str, dict[str, float]]:
    """`{"layers" | "heads" | "ffn_neurons" | "parameters": {"original", "kept", "removed", "sparsity"}}`.

    Heads and FFN neurons of dropped layers count as removed. `base_num_parameters` is the dense model's
    parameter count; without it, it is rebuilt from the config (on the meta device, no memory).
    """
    record = get_record(model)
    original = record["original"]
    num_layers = len(record["kept_layers"])
    totals = {
        "layers": (original["num_layers"], num_layers),
        "heads": (
            original["num_layers"] * original["num_heads"],
            sum(len(heads) for heads in record["kept_heads"]),
        ),
        "ffn_neurons": (
            original["num_layers"] * original["intermediate_size"],
            sum(len(kept_ffn(record, layer)) for layer in range(num_layers)),
        ),
    }
    base = base_num_parameters if base_num_parameters is not None else original_parameter_count(model)
    if base:
        totals["parameters"] = (base, sum(p.numel() for p in model.parameters()))
    return {
        unit: {"original": total, "kept": kept, "removed": total - kept, "sparsity": (total - kept) / total if total else 0.0}
        for unit, (total, kept) in totals.items()
    }
