"""Differentiable head, FFN-neuron and layer masks, applied through hooks.

transformers 5 has no `head_mask` argument any more. The hooks scale the per-head context right before
the attention output projection (which works for eager and sdpa attention alike), the intermediate
activations right before the FFN output projection, and blend a layer's output with its input
(`out = x + m * (f(x) - x)`, so m = 0 makes the layer an identity). Masks are in ORIGINAL indices, so
they mean the same thing on a model that was already pruned; a mask that requires grad gives
d loss / d mask, the basis of importance scores.

Masks follow surgery: each hook reads the units its layer keeps from the model's record when it runs (cached
until the record changes), so a mask applied before `prune_heads` / `prune_ffn` / `drop_layers` still masks the
same original heads and neurons afterwards (e.g. `HeadMaskCallback` while `PruningTrainer` prunes).

The mask builders read `{layer: [indices]}` exactly as surgery does (the same checks: no negative,
float or bool indices), so a mask and a surgery call given the same dict always mean the same units.
Hooks go on the model inside a PEFT or data-parallel wrapper; a `torch.compile` model is refused, as it
ignores hooks added after compiling.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import PruningError
from .arch import get_adapter
from .checks import (
    check_indices,
    check_mapping,
    model_for_config,
    model_for_masks,
)
from .record import check_record, get_record, kept_ffn
from .structure import PATCH_KEY


class MaskHandle:
    """The hooks of one `apply_masks` call; `remove()` (or leaving the `with` block) takes them off."""

    def __init__(self, handles: list):
        self.handles = handles

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def __enter__(self) -> MaskHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _check_shape(name: str, mask: torch.Tensor, expected: tuple[int, ...]) -> None:
    if not isinstance(mask, torch.Tensor):
        raise PruningError(f"{name} must be a torch.Tensor of shape {list(expected)}, got {type(mask).__name__}")
    if tuple(mask.shape) != expected:
        raise PruningError(f"{name} must have shape {list(expected)} (original indices), got {list(mask.shape)}")


def apply_masks(
    model: nn.Module,
    head_mask: torch.Tensor | None = None,
    ffn_mask: torch.Tensor | None = None,
    layer_mask: torch.Tensor | None = None,
    *,
    eval_only: bool = False,
) -> MaskHandle:
    """Hook masks into `model` until the returned handle is removed.

    Args:
        head_mask: `[num_layers, num_heads]` of the original model; 0 removes a head, 1 keeps it.
        ffn_mask: `[num_layers, intermediate_size]` of the original model, one factor per FFN neuron.
        layer_mask: `[num_layers]`; 0 turns a layer into the identity, 1 keeps it.
        eval_only: the masks act only while `model` is in eval mode; in train mode the hooks leave every
            activation untouched (how `HeadMaskCallback` masks evaluation inside a training run).

    The hooks follow surgery made while they are on (`prune_heads`, `prune_ffn`, `drop_layers`): each reads the
    units its layer keeps now from `config.hfprune`, so the masks keep meaning the same original units.
    """
    model = model_for_masks(model)
    adapter, record = get_adapter(model), check_record(model)
    original = record["original"]
    if head_mask is not None:
        _check_shape("head_mask", head_mask, (original["num_layers"], original["num_heads"]))
    if ffn_mask is not None:
        _check_shape("ffn_mask", ffn_mask, (original["num_layers"], original["intermediate_size"]))
    if layer_mask is not None:
        _check_shape("layer_mask", layer_mask, (original["num_layers"],))
    active = (lambda: not model.training) if eval_only else (lambda: True)
    handles = []
    for position, layer in enumerate(adapter.get_layers(model)):
        index = record["kept_layers"][position]
        if head_mask is not None:
            heads = record["kept_heads"][position]
            if heads and adapter.has_attention(layer):
                kept = _KeptUnits(model, index, "heads")
                handles.append(adapter.register_head_mask(layer, _selector(head_mask, index, kept, active)))
        if ffn_mask is not None and kept_ffn(record, position):
            kept = _KeptUnits(model, index, "ffn")
            handles.append(adapter.register_ffn_mask(layer, _selector(ffn_mask, index, kept, active)))
        if layer_mask is not None:
            handles.append(_register_layer_mask(layer, layer_mask, index, active))
    return MaskHandle(handles)


_UNREAD = object()


class _KeptUnits:
    """The original heads (or FFN neurons) that original layer `layer` keeps NOW, read from the model's record
    when a hook runs and cached until the record object changes (surgery writes a new one, a rollback puts the
    old one back). So a mask applied before surgery keeps masking the same original units after it."""

    def __init__(self, model: nn.Module, layer: int, kind: str):
        self.model, self.layer, self.kind = model, layer, kind
        self._record = _UNREAD
        self._index: torch.Tensor | None = None
        self._on_device: dict[torch.device, torch.Tensor] = {}

    def index(self, device: torch.device) -> torch.Tensor | None:
        """Current kept units as a long tensor on `device`; None when the layer keeps none (or is gone)."""
        current = getattr(self.model.config, PATCH_KEY, None)
        if current is not self._record:
            record = get_record(self.model)
            kept: list[int] = []
            if self.layer in record["kept_layers"]:
                position = record["kept_layers"].index(self.layer)
                kept = record["kept_heads"][position] if self.kind == "heads" else kept_ffn(record, position)
            self._index = torch.as_tensor(kept, dtype=torch.long) if kept else None
            self._on_device, self._record = {}, current
        if self._index is None:
            return None
        if device not in self._on_device:
            self._on_device[device] = self._index.to(device)
        return self._on_device[device]


def _selector(mask: torch.Tensor, layer: int, kept: _KeptUnits, active=lambda: True):
    """A function giving this layer's mask entries for its kept (original) indices, cast like the input;
    None (leave the input as it is) while `active()` is false or the layer keeps none of these units."""

    def factor(reference: torch.Tensor) -> torch.Tensor | None:
        if not active():
            return None
        index = kept.index(mask.device)
        if index is None:
            return None
        return mask[layer].index_select(0, index).to(device=reference.device, dtype=reference.dtype)

    return factor


def _register_layer_mask(layer: nn.Module, layer_mask: torch.Tensor, index: int, active=lambda: True):
    def hook(module, args, kwargs, output):
        if not active():
            return None
        inputs = args[0] if args else kwargs["hidden_states"]
        outputs = output[0] if isinstance(output, tuple) else output
        scale = layer_mask[index].to(device=outputs.device, dtype=outputs.dtype)
        blended = inputs + scale * (outputs - inputs)
        return (blended,) + tuple(output[1:]) if isinstance(output, tuple) else blended

    return layer.register_forward_hook(hook, with_kwargs=True)


@contextmanager
def skip_layers(model: nn.Module, layers: Iterable[int]):
    """Run `model` with the given original layers acting as identities (to try layer drops without surgery)."""
    mask = make_layer_mask(model, layers)
    with apply_masks(model, layer_mask=mask):
        yield model


def _original_sizes(model: nn.Module) -> tuple[nn.Module, dict]:
    model = model_for_config(model)
    return model, check_record(model)["original"]


def _ones(model: nn.Module, original: dict, *shape_keys: str) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.ones(*(original[key] for key in shape_keys), device=device)


def make_head_mask(model: nn.Module, heads_to_prune: Mapping[int, Iterable[int]] | None = None) -> torch.Tensor:
    """A `[num_layers, num_heads]` mask of ones with zeros at `{layer: [heads]}` (original indices)."""
    model, original = _original_sizes(model)
    mask = _ones(model, original, "num_layers", "num_heads")
    spec = {} if heads_to_prune is None else heads_to_prune
    for layer, heads in check_mapping("heads_to_prune", spec, original["num_layers"], original["num_heads"]).items():
        mask[layer, heads] = 0
    return mask


def make_ffn_mask(model: nn.Module, neurons_to_prune: Mapping[int, Iterable[int]] | None = None) -> torch.Tensor:
    """A `[num_layers, intermediate_size]` mask of ones with zeros at `{layer: [neurons]}`."""
    model, original = _original_sizes(model)
    mask = _ones(model, original, "num_layers", "intermediate_size")
    spec = {} if neurons_to_prune is None else neurons_to_prune
    size = original["intermediate_size"]
    for layer, neurons in check_mapping("neurons_to_prune", spec, original["num_layers"], size).items():
        mask[layer, neurons] = 0
    return mask


def make_layer_mask(model: nn.Module, layers_to_skip: Iterable[int] = ()) -> torch.Tensor:
    """A `[num_layers]` mask of ones with zeros at the given original layers."""
    model, original = _original_sizes(model)
    mask = _ones(model, original, "num_layers")
    mask[check_indices("layers_to_skip", layers_to_skip, original["num_layers"])] = 0
    return mask
