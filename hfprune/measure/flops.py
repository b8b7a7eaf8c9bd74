"""What a forward pass is fed and what it costs in FLOPs: the seeded random token ids every measurement uses
(`speed`, `generation_speed`) and `count_flops`.

FLOPs are counted by running the model under `torch.utils.flop_counter.FlopCounterMode` (matrix products
only, 2 per multiply-add: what dominates a transformer), not from hand formulas, so they follow whatever
the surgery actually left. It exists apart from the timing so that counting needs no timer and no noise checks.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .._validation import is_integer
from ..errors import PruningError

__all__ = ["count_flops"]


# PyTorch's counter knows the CUDA attention kernels but not the fused CPU one that `sdpa` attention
# uses; without it an sdpa model on CPU would seem to do no attention work at all.
def _sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_EXTRA_FLOP_FORMULAS = {}
if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
    _EXTRA_FLOP_FORMULAS[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_flop


# ---- inputs --------------------------------------------------------------------------------------------
def check_positive_ints(name: str, values: Iterable[int]) -> tuple[int, ...]:
    """`values` as a tuple of positive integers without repeats (first order kept), else a `PruningError`."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise PruningError(f"{name} must be a list of positive integers, got {values!r}")
    values = tuple(values)
    if not values:
        raise PruningError(f"{name} is empty: give at least one positive integer")
    for value in values:
        if not is_integer(value) or value < 1:
            raise PruningError(f"{name} must be positive integers, got {value!r}")
    return tuple(dict.fromkeys(values))


def check_model(name: str, model: Any) -> nn.Module:
    """`model` if it is a transformers model with a vocabulary to draw token ids from, else a `PruningError`."""
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise PruningError(f"model {name!r} must be a transformers PreTrainedModel, got {type(model).__name__}")
    if model_vocab_size(model) is None:
        raise PruningError(f"model {name!r} has no config.vocab_size: cannot make token ids for it")
    return model


def model_vocab_size(model: nn.Module) -> int | None:
    """The vocabulary size of the model's (text) config; None when it has none."""
    config = model.config
    size = getattr(config, "vocab_size", None)
    if size is None and hasattr(config, "get_text_config"):
        size = getattr(config.get_text_config(), "vocab_size", None)
    return size


def model_device(model: nn.Module) -> torch.device:
    """Where the model's inputs go: its `device`, else that of its first parameter."""
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device


def random_inputs(vocab_size: int, batch_size: int, seq_len: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Random token ids (seeded, so every model and every run sees the same) with a full attention mask:
    padding would let a fused kernel skip work and make the timing depend on the data."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator)
    return {"input_ids": input_ids.to(device), "attention_mask": torch.ones_like(input_ids, device=device)}


def forward_kwargs(model: nn.Module) -> dict[str, Any]:
    """`use_cache=False` where the forward takes it: a benchmark forward builds no KV cache."""
    return {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}


def forward_flops(model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> int:
    """FLOPs of one forward of `model` on `inputs`, as it stands (no checks, no change of mode)."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS) as counter:
        model(**inputs, **forward_kwargs(model))
    return int(counter.get_total_flops())


def count_flops(model: nn.Module, batch_size: int, seq_len: int) -> int:
    """Forward FLOPs of `model` on a `[batch_size, seq_len]` batch of token ids, counted by running it once
    under `FlopCounterMode` (matrix products, 2 FLOPs per multiply-add, fused attention included).

    Runs on the model's device in eval mode (its train/eval mode is restored).
    """
    check_model("model", model)
    (batch_size,) = check_positive_ints("batch_size", [batch_size])
    (seq_len,) = check_positive_ints("seq_len", [seq_len])
    inputs = random_inputs(model_vocab_size(model), batch_size, seq_len, model_device(model))
    training = model.training
    model.eval()
    try:
        return forward_flops(model, inputs)
    finally:
        model.train(training)
