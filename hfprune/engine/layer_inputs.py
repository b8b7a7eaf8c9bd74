"""Running a model one layer at a time: each calibration batch as the first layer receives it (the model runs
only up to there), and as the next layer receives it. What layer-wise work (reconstruction, streamed scoring)
drives instead of whole forward passes, as SparseGPT and llm-compressor's sequential pipeline do.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import PruningError
from .arch import get_adapter

NOT_MODEL_INPUTS = ("labels", "label", "idx")
"""Batch keys that are not model inputs (a layer's inputs do not depend on them)."""


class StopForward(Exception):
    """Raised by a hook once it has what it needs: the rest of the forward pass is not run."""


@dataclass
class LayerInput:
    """One calibration batch as a layer receives it, and which of its tokens are real (`mask`: the batch's
    `attention_mask`, None when it has none)."""

    args: tuple
    kwargs: dict[str, Any]
    mask: torch.Tensor | None

    @property
    def hidden(self) -> torch.Tensor:
        """The hidden states the layer reads (its first input)."""
        return self.args[0] if self.args else self.kwargs["hidden_states"]

    @property
    def tokens(self) -> int:
        """Real (non-padding) tokens in the batch."""
        hidden = self.hidden
        return int(self.mask.sum()) if self.mask is not None else hidden.shape[0] * hidden.shape[1]

    def with_hidden(self, hidden: torch.Tensor) -> LayerInput:
        """The same batch with other hidden states (the next layer's inputs, or ones read back from disk)."""
        if self.args:
            return LayerInput((hidden, *self.args[1:]), self.kwargs, self.mask)
        return LayerInput(self.args, {**self.kwargs, "hidden_states": hidden}, self.mask)


def model_inputs(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch's model inputs on `device` (labels and ids dropped)."""
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items() if k not in NOT_MODEL_INPUTS}


def first_layer_inputs(
    model: nn.Module, dataloader: Iterable[Mapping[str, Any]], max_batches: int | None = None, *, device: torch.device | None = None
) -> list[LayerInput]:
    """Each calibration batch as the model's first layer receives it; nothing after the embeddings runs, so the
    layers may still be on the meta device. `device`: where the inputs go (the first parameter's by default)."""
    device = device if device is not None else next(model.parameters()).device
    cached: list[LayerInput] = []
    current: dict[str, torch.Tensor | None] = {}

    def catch(module, args, kwargs):
        cached.append(LayerInput(args, kwargs, current["mask"]))
        raise StopForward

    handle = get_adapter(model).get_layers(model)[0].register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for number, batch in enumerate(dataloader):
            if max_batches is not None and number >= max_batches:
                break
            inputs = model_inputs(batch, device)
            current["mask"] = inputs.get("attention_mask")
            try:
                model(**inputs, **({"use_cache": False} if hasattr(model.config, "use_cache") else {}))
            except StopForward:
                pass
    finally:
        handle.remove()
    if not cached:
        raise PruningError("layer-wise work needs calibration data: the dataloader gave no batch")
    return cached


def layer_output(layer: nn.Module, entry: LayerInput) -> torch.Tensor:
    """The hidden states `layer` puts out for one batch."""
    output = layer(*entry.args, **entry.kwargs)
    return output[0] if isinstance(output, tuple) else output


def next_input(layer: nn.Module, entry: LayerInput) -> LayerInput:
    """The same batch as the next layer receives it: this layer's output."""
    return entry.with_hidden(layer_output(layer, entry))


__all__ = ["NOT_MODEL_INPUTS", "LayerInput", "StopForward", "first_layer_inputs", "layer_output", "model_inputs", "next_input"]
