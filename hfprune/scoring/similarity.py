"""Layer scores from how little a layer changes its input: cosine similarity, block influence (Men et al.
2024) and angular distance (Gromov et al. 2024), all forward passes only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.arch import get_adapter
from ..engine.record import get_record
from ..errors import PruningError
from .common import Batch, model_device, scoring_mode, to_device


# ---- layer similarity --------------------------------------------------------------------------------
def _token_mask(batch: Batch, last_token: bool) -> torch.Tensor:
    """[batch, tokens] bool: the non-padding tokens, or only each example's last one."""
    mask = batch.get("attention_mask")
    mask = torch.ones_like(batch["input_ids"], dtype=torch.bool) if mask is None else mask.bool()
    if not last_token:
        return mask
    last = mask.shape[1] - 1 - mask.flip(1).int().argmax(dim=1)
    return F.one_hot(last, mask.shape[1]).bool()


def _mean_block_similarity(
    model: nn.Module,
    dataloader: Iterable[Batch],
    span: int,
    transform: Callable[[torch.Tensor], torch.Tensor],
    last_token: bool,
) -> torch.Tensor:
    """`[num_layers]`: mean over tokens of `transform(cos(input of layer l, output of layer l + span - 1))`.

    Indexed by the original index of the first layer of each block of `span` consecutive current layers;
    NaN where no such block starts.
    """
    adapter, record, device = get_adapter(model), get_record(model), model_device(model)
    layers = adapter.get_layers(model)
    if not 1 <= span <= len(layers):
        raise PruningError(f"n must be in [1, {len(layers)}] (the model's layers), got {span}")
    time_major = adapter.time_major
    inputs, outputs = [None] * len(layers), [None] * len(layers)

    def capture(position: int):
        def hook(module, args, kwargs, output):
            hidden_in = args[0] if args else kwargs["hidden_states"]
            hidden_out = output[0] if isinstance(output, tuple) else output
            if time_major:
                hidden_in, hidden_out = hidden_in.transpose(0, 1), hidden_out.transpose(0, 1)
            inputs[position], outputs[position] = hidden_in, hidden_out

        return hook

    handles = [layer.register_forward_hook(capture(i), with_kwargs=True) for i, layer in enumerate(layers)]
    starts = len(layers) - span + 1
    sums, tokens = torch.zeros(starts, dtype=torch.float64), 0
    try:
        with scoring_mode(model):
            for batch in dataloader:
                batch = to_device(batch, device)
                model(**batch)
                mask = _token_mask(batch, last_token)
                for start in range(starts):
                    first, last = inputs[start], outputs[start + span - 1]
                    dtype = torch.promote_types(first.dtype, torch.float32)
                    cosine = F.cosine_similarity(first.to(dtype), last.to(dtype), dim=-1)
                    sums[start] += transform(cosine)[mask.to(cosine.device)].double().sum().cpu()
                tokens += int(mask.sum())
    finally:
        for handle in handles:
            handle.remove()
    if tokens == 0:
        raise PruningError("the dataloader gave no (non-padding) tokens to score")
    scores = torch.full((record["original"]["num_layers"],), float("nan"), dtype=torch.float64)
    scores[record["kept_layers"][:starts]] = sums / tokens
    return scores


def layer_cosine_scores(model: nn.Module, dataloader: Iterable[Batch]) -> torch.Tensor:
    """`[num_layers]` cosine similarity between each layer's input and output hidden states, averaged over
    all non-padding tokens (Sajjad et al., 2020, contribution-based dropping): high = contributes little."""
    return _mean_block_similarity(model, dataloader, 1, lambda cosine: cosine, last_token=False)


def block_influence(model: nn.Module, dataloader: Iterable[Batch]) -> torch.Tensor:
    """`[num_layers]` Block Influence of ShortGPT (Men et al., 2024): 1 - mean cosine(input, output);
    low = the layer changes its input little and is the first to remove."""
    return 1 - layer_cosine_scores(model, dataloader)


def angular_distance(
    model: nn.Module, dataloader: Iterable[Batch], n: int = 1, last_token: bool = True
) -> torch.Tensor:
    """`[num_layers]` angular distance arccos(cos)/pi between the input of layer l and the output of layer
    l + n - 1 (Gromov et al., 2024, "The Unreasonable Ineffectiveness of the Deeper Layers"); the block of
    n layers with the smallest distance is the one to drop.

    As in the paper, only each example's last non-padding token is used (`last_token=False`: all tokens),
    and the per-token distances are averaged. Entry l is NaN where fewer than n layers start at l.
    """
    return _mean_block_similarity(
        model, dataloader, n, lambda cosine: torch.arccos(cosine.clamp(-1.0, 1.0)) / math.pi, last_token
    )
