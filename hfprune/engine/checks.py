"""Input checks shared by surgery and masks, so that `pruned == masked` always compares the same units.

Indices are read strictly: Python ints, numpy integers and integer tensors (0-d as one index, 1-d as a
list) are accepted; floats (even `1.0`), booleans and bool/float tensors or arrays are refused rather
than truncated or read as positions, and negative indices are refused rather than counted from the end.
A dict naming one layer twice (`0` and `torch.tensor(0)`) prunes the union of both lists.

Wrappers are resolved to the transformers model inside them: a `torch.compile` wrapper and
`nn.DataParallel` share the model's modules, so surgery on the inner model is seen by the wrapper; a
DDP/FSDP/DeepSpeed wrapper keeps its own view of the parameters, and PEFT adapters wrap the very layers
surgery cuts, so those are refused before anything changes.
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ..errors import PruningError

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def _is_pretrained(value) -> bool:
    """`isinstance(value, PreTrainedModel)` without importing transformers' modeling code, which pulls in scipy:
    until something has imported it, no model can exist."""
    modeling = sys.modules.get("transformers.modeling_utils")
    return modeling is not None and isinstance(value, modeling.PreTrainedModel)

_PEFT_ADVICE = (
    "call model.merge_and_unload() first (or prune before adding adapters): LoRA layers wrap the "
    "projections hfprune would cut"
)


# ---- indices --------------------------------------------------------------------------------------------
def _refuse_dtype(what: str, dtype) -> None:
    if dtype is torch.bool or getattr(dtype, "kind", None) == "b":
        raise PruningError(f"{what}: got booleans; give the indices themselves (e.g. [0, 2]), not a mask of positions")
    raise PruningError(f"{what} must be integers, got a tensor of {dtype}")


def _is_integer_tensor(value: torch.Tensor) -> bool:
    return not (value.dtype == torch.bool or value.is_floating_point() or value.is_complex())


def _as_index(what: str, value) -> int:
    """One index, read strictly (no float truncation, no bool, no negative counting)."""
    if isinstance(value, torch.Tensor):
        if value.ndim != 0:
            raise PruningError(f"{what} must be integers, got a {value.ndim}-d tensor inside the list")
        if not _is_integer_tensor(value):
            _refuse_dtype(what, value.dtype)
        return int(value.item())
    if isinstance(value, np.ndarray):
        if value.ndim != 0:
            raise PruningError(f"{what} must be integers, got a {value.ndim}-d array inside the list")
        value = value[()]
    if isinstance(value, (bool, np.bool_)):
        raise PruningError(f"{what}: got booleans; give the indices themselves (e.g. [0, 2]), not a mask of positions")
    try:
        return operator.index(value)
    except TypeError:
        raise PruningError(f"{what} must be integers, got {value!r}") from None


def _as_index_list(what: str, values) -> list[int]:
    if isinstance(values, torch.Tensor):
        if values.ndim != 1:
            raise PruningError(f"{what} must be a list of integers (a 1-d tensor), got a {values.ndim}-d tensor")
        if not _is_integer_tensor(values):
            _refuse_dtype(what, values.dtype)
        return [int(value) for value in values.tolist()]
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise PruningError(f"{what} must be a list of integers (a 1-d array), got a {values.ndim}-d array")
        if not np.issubdtype(values.dtype, np.integer):
            _refuse_dtype(what, values.dtype)
        return [int(value) for value in values.tolist()]
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise PruningError(f"{what} must be a list of integers, got {type(values).__name__}")
    return [_as_index(what, value) for value in values]


def check_indices(what: str, values, limit: int) -> list[int]:
    """Sorted unique indices in `[0, limit)`; a `PruningError` for anything else."""
    indices = _as_index_list(what, values)
    for index in indices:
        if not 0 <= index < limit:
            raise PruningError(f"{what}: index {index} is out of range [0, {limit})")
    return sorted(set(indices))


def check_mapping(what: str, mapping, num_layers: int, limit: int) -> dict[int, list[int]]:
    """`{layer: sorted unique indices}`; two keys naming the same layer are merged (union)."""
    if not isinstance(mapping, Mapping):
        raise PruningError(f"{what} must be a dict {{layer: [indices]}}, got {type(mapping).__name__}")
    merged: dict[int, set[int]] = {}
    for key, values in mapping.items():
        layer = _as_index(f"{what}: layer", key)
        if not 0 <= layer < num_layers:
            raise PruningError(f"{what}: layer: index {layer} is out of range [0, {num_layers})")
        merged.setdefault(layer, set()).update(check_indices(f"{what}: layer {layer}", values, limit))
    return {layer: sorted(indices) for layer, indices in sorted(merged.items())}


# ---- models ---------------------------------------------------------------------------------------------
def _is_compiled(model) -> bool:
    return isinstance(model, nn.Module) and hasattr(model, "_orig_mod") and "OptimizedModule" in type(model).__name__


def _is_peft(module: nn.Module) -> bool:
    return type(module).__module__.split(".")[0] == "peft"


def _unwrap(model, *, through_compile: bool):
    """Peel wrappers that share the model's modules; returns (model, "compiled" if a compile wrapper stopped it)."""
    while True:
        if _is_compiled(model):
            if not through_compile:
                return model, "compiled"
            model = model._orig_mod
        elif type(model) is nn.DataParallel:
            model = model.module
        else:
            return model, None


def _expect_pretrained(model) -> None:
    if not _is_pretrained(model):
        raise PruningError(f"expected a transformers PreTrainedModel, got {type(model).__name__}")


def model_for_surgery(model) -> PreTrainedModel:
    """The transformers model that surgery changes, or a one-line `PruningError` before anything changes."""
    inner, _ = _unwrap(model, through_compile=True)
    name = type(inner).__name__
    if isinstance(inner, nn.Module) and any(_is_peft(module) for module in inner.modules()):
        raise PruningError(f"cannot prune a model with PEFT adapters ({name}); {_PEFT_ADVICE}")
    if not _is_pretrained(inner) and isinstance(getattr(inner, "module", None), nn.Module):
        raise PruningError(
            f"cannot prune through a {name} wrapper: it keeps its own references to the parameters that surgery "
            f"replaces; prune the model inside it ({name}.module) before wrapping it"
        )
    _expect_pretrained(inner)
    if any(type(parameter).__name__ == "DTensor" for parameter in inner.parameters()):
        raise PruningError("cannot slice sharded (FSDP2 / tensor-parallel) parameters; prune the unsharded model")
    return inner


def model_for_masks(model) -> PreTrainedModel:
    """The transformers model that mask hooks go on (adapters and data-parallel wrappers unwrapped)."""
    inner, refused = _unwrap(model, through_compile=False)
    if refused == "compiled":
        raise PruningError(
            "masks are hooks, and a torch.compile model ignores hooks added after compiling: apply the masks "
            "to the uncompiled model (model._orig_mod) and run that one"
        )
    return _config_holder(inner)


def model_for_config(model) -> PreTrainedModel:
    """The transformers model whose config describes `model` (any wrapper peeled; nothing is changed)."""
    inner, _ = _unwrap(model, through_compile=True)
    return _config_holder(inner)


def _config_holder(model) -> PreTrainedModel:
    if _is_peft(model) and hasattr(model, "get_base_model"):  # PeftModel
        model = model.get_base_model()
    elif _is_peft(model) and _is_pretrained(getattr(model, "model", None)):  # LoraModel & co
        model = model.model
    elif not _is_pretrained(model) and _is_pretrained(getattr(model, "module", None)):
        model = model.module  # DDP and other wrappers: hooks on the inner modules run inside their forward
    _expect_pretrained(model)
    return model
