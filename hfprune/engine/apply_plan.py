"""`apply_plan`: one plan, in the form every planner gives it, carried out by the engine's surgery.

The planners (`allocate_for_time`, `ParamTarget`, `plan_parameter_budget`) return `{"layers": [...], "heads":
{layer: [...]}, "ffn": {layer: [...]}}` and optionally `"hidden": [...]`, in ORIGINAL indices; the trainer, the
streamed surgery and the streamed planner's dry runs all apply them here, in one order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from ..errors import PruningError
from .hidden import prune_hidden
from .surgery import drop_layers, prune_ffn, prune_heads

PLAN_KEYS = ("hidden", "heads", "ffn", "layers")
"""What a plan cuts, in the order it is applied: channels, heads, FFN neurons, then whole layers."""
PLAN_NOTES = frozenset({"predicted_seconds", "hidden_size", "loss", "calibration", "ffn_width", "parameters", "dense_parameters"})
"""What planners report beside the cut (predictions, the width chosen, counts); `apply_plan` ignores them."""


def apply_plan(model: nn.Module, plan: Mapping[str, Any]) -> nn.Module:
    """Carry out `plan` on `model` (in place; returns it): channels, heads, FFN neurons, then layers. Each call
    is all or nothing, as the surgery functions are; keys other than `PLAN_KEYS` and `PLAN_NOTES` are refused."""
    if not isinstance(plan, Mapping):
        raise PruningError(f"plan must be a dict with keys {', '.join(PLAN_KEYS)}, got {type(plan).__name__}")
    unknown = sorted(str(key) for key in plan if key not in PLAN_KEYS and key not in PLAN_NOTES)
    if unknown:
        raise PruningError(f"plan has unknown key(s) {', '.join(unknown)}; expected {', '.join(PLAN_KEYS)}")
    if plan.get("hidden"):
        prune_hidden(model, plan["hidden"])
    prune_heads(model, plan.get("heads") or {})
    prune_ffn(model, plan.get("ffn") or {})
    drop_layers(model, plan.get("layers") or [])
    return model


__all__ = ["PLAN_KEYS", "PLAN_NOTES", "apply_plan"]
