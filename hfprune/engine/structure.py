"""Describe and rebuild the shape of a pruned model.

A pruned model differs from the model its config would build in three ways only: some parameters
have smaller shapes, some scalar attributes (head counts, split sizes, ...) have other values, and an
attention block that lost every head is an :class:`EmptyAttention`. :func:`structure_patch` lists those
differences as JSON-able entries and :func:`apply_structure_patch` re-creates them on a freshly built
model, so `from_pretrained` can load a pruned checkpoint with all of its usual machinery (meta-device
init, dtype, device_map, tied weights).

This file imports only torch and transformers: it is copied verbatim into exported checkpoints as the
`trust_remote_code` modeling file, for users who do not have hfprune installed.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

PATCH_KEY = "hfprune"
_SKIPPED_ATTRIBUTES = {"training"}


class EmptyAttention(nn.Module):
    """Stands in for an attention block whose heads were all pruned.

    It returns zeros of width `out_features` (plus the output projection's bias, when that projection
    lived inside the block), and still appends empty keys and values to a KV cache so that the cache
    keeps counting tokens for this layer.
    """

    def __init__(self, out_features: int, head_dim: int, layer_idx: int | None = None, has_bias: bool = False):
        super().__init__()
        self.out_features = out_features
        self.head_dim = head_dim
        self.layer_idx = layer_idx
        self.bias = nn.Parameter(torch.zeros(out_features)) if has_bias else None

    def init_kwargs(self) -> dict[str, Any]:
        return {
            "out_features": self.out_features,
            "head_dim": self.head_dim,
            "layer_idx": self.layer_idx,
            "has_bias": self.bias is not None,
        }

    def forward(self, hidden_states: torch.Tensor, *args, past_key_values=None, **kwargs):
        batch_size, seq_len = hidden_states.shape[0], hidden_states.shape[1]
        if past_key_values is not None and self.layer_idx is not None and hasattr(past_key_values, "update"):
            empty = hidden_states.new_zeros(batch_size, 0, seq_len, self.head_dim)
            past_key_values.update(empty, empty.clone(), self.layer_idx)
        output = hidden_states.new_zeros(*hidden_states.shape[:-1], self.out_features)
        if self.bias is not None:
            output = output + self.bias
        return output, None


class EmptyMLP(nn.Module):
    """Stands in for an MLP whose neurons were all pruned: it returns its output projection's bias."""

    def __init__(self, out_features: int, has_bias: bool = False):
        super().__init__()
        self.out_features = out_features
        self.bias = nn.Parameter(torch.zeros(out_features)) if has_bias else None

    def init_kwargs(self) -> dict[str, Any]:
        return {"out_features": self.out_features, "has_bias": self.bias is not None}

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        output = hidden_states.new_zeros(*hidden_states.shape[:-1], self.out_features)
        return output if self.bias is None else output + self.bias


_MODULE_TYPES = {"EmptyAttention": EmptyAttention, "EmptyMLP": EmptyMLP}


def stock_class(model_or_class: nn.Module | type) -> type:
    """The transformers class under hfprune's restructured subclass (the class itself when it is stock)."""
    cls = model_or_class if isinstance(model_or_class, type) else type(model_or_class)
    while getattr(cls, "_hfprune_restructured", False):
        cls = cls.__base__
    return cls


def _reference_model(model: nn.Module) -> nn.Module:
    """The model that `model.config` alone builds, on the meta device (no memory, no init cost)."""
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        return stock_class(model)(config)


def structure_patch(model: nn.Module) -> list[dict[str, Any]]:
    """List how `model` differs in shape from the model its config builds (paths from `base_model`)."""
    reference = dict(_reference_model(model).base_model.named_modules())
    patch: list[dict[str, Any]] = []
    replaced: list[str] = []
    for path, module in model.base_model.named_modules():
        if any(path.startswith(prefix + ".") for prefix in replaced):
            continue
        ref = reference.get(path)
        if ref is None:
            raise ValueError(f"module '{path}' has no counterpart in a model built from the config")
        if type(module) is not type(ref):
            if type(module).__name__ not in _MODULE_TYPES:
                raise ValueError(f"module '{path}' was replaced by an unknown type {type(module).__name__}")
            patch.append({"path": path, "module": type(module).__name__, "kwargs": module.init_kwargs()})
            replaced.append(path)
            continue
        ref_params = dict(ref.named_parameters(recurse=False))
        for name, param in module.named_parameters(recurse=False):
            if name not in ref_params or ref_params[name].shape != param.shape:
                patch.append({"path": path, "parameter": name, "shape": list(param.shape)})
        for name, value in vars(module).items():
            if name.startswith("_") or name in _SKIPPED_ATTRIBUTES or not isinstance(value, (bool, int, float)):
                continue
            if getattr(ref, name, None) != value:
                patch.append({"path": path, "attribute": name, "value": value})
    return patch


class PatchError(ValueError):
    """A `config.hfprune` patch that does not fit the model the config builds (hand-edited or corrupt)."""


def apply_structure_patch(model: nn.Module, patch: list[dict[str, Any]]) -> nn.Module:
    """Reshape a freshly built `model` as `patch` says; the new parameters are empty, ready to be loaded."""
    for number, entry in enumerate(patch):
        try:
            _apply_entry(model.base_model, entry)
        except (AttributeError, KeyError, TypeError, ValueError, IndexError, RuntimeError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            path = entry.get("path") if isinstance(entry, dict) else entry
            raise PatchError(
                f"config.hfprune patch[{number}] ({path}) does not fit the model the config builds: {reason}"
            ) from None
    return model


def _apply_entry(base: nn.Module, entry: dict[str, Any]) -> None:
    path = entry["path"]
    if "module" in entry:
        parent_path, _, child = path.rpartition(".")
        parent = base.get_submodule(parent_path)
        old = parent.get_submodule(child)
        reference = next(old.parameters(), None)
        new = _MODULE_TYPES[entry["module"]](**entry["kwargs"])
        if reference is not None:
            new = new.to(device=reference.device, dtype=reference.dtype)
        setattr(parent, child, new)
    elif "parameter" in entry:
        module = base.get_submodule(path)
        old = getattr(module, entry["parameter"])
        empty = torch.empty(entry["shape"], dtype=old.dtype, device=old.device)
        setattr(module, entry["parameter"], nn.Parameter(empty, requires_grad=old.requires_grad))
    else:
        setattr(base.get_submodule(path), entry["attribute"], entry["value"])


_RESTRUCTURED_CLASSES: dict[type, type] = {}


def restructured_class(model_class: type) -> type:
    """A subclass of `model_class` that applies `config.hfprune["patch"]` right after building.

    It keeps the original class name, so `save_pretrained` writes the stock architecture name.
    """
    if getattr(model_class, "_hfprune_restructured", False):
        return model_class
    if model_class not in _RESTRUCTURED_CLASSES:

        def __init__(self, config, *args, **kwargs):
            model_class.__init__(self, config, *args, **kwargs)
            record = getattr(config, PATCH_KEY, None) or {}
            apply_structure_patch(self, record.get("patch", []))

        _RESTRUCTURED_CLASSES[model_class] = type(
            model_class.__name__,
            (model_class,),
            {"__init__": __init__, "_hfprune_restructured": True, "__module__": model_class.__module__},
        )
    return _RESTRUCTURED_CLASSES[model_class]
