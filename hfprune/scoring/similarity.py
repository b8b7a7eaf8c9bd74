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
def token_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, last_token: bool) -> torch.Tensor:
    """[batch, tokens] bool: the non-padding tokens, or only each example's last one."""
    mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    if not last_token:
        return mask
    last = mask.shape[1] - 1 - mask.flip(1).int().argmax(dim=1)
    return F.one_hot(last, mask.shape[1]).bool()


def cosine(similarity: torch.Tensor) -> torch.Tensor:
    return similarity


def angle(similarity: torch.Tensor) -> torch.Tensor:
    """The angular distance arccos(cos) / pi of a cosine similarity."""
    return torch.arccos(similarity.clamp(-1.0, 1.0)) / math.pi


class BlockSimilarity:
    """Sums of `transform(cos(input of layer l, output of layer l + span - 1))` over tokens, for every block of
    `span` consecutive current layers: fed by whole forward passes here, or one layer at a time by
    `hfprune.streaming`. `scores()` gives the means, indexed by the original index of each block's first layer."""

    def __init__(self, model: nn.Module, span: int, transform: Callable[[torch.Tensor], torch.Tensor], last_token: bool):
        self.record = get_record(model)
        num_layers = len(self.record["kept_layers"])
        if not 1 <= span <= num_layers:
            raise PruningError(f"n must be in [1, {num_layers}] (the model's layers), got {span}")
        self.span, self.transform, self.last_token = span, transform, last_token
        self.time_major = get_adapter(model).time_major
        self.starts = num_layers - span + 1
        self.sums, self.tokens = torch.zeros(self.starts, dtype=torch.float64), 0

    def add(self, start: int, first: torch.Tensor, last: torch.Tensor, mask: torch.Tensor) -> None:
        """One batch's block starting at current layer `start`: its input `first`, its output `last`, and the
        tokens that count (`token_mask`)."""
        if self.time_major:
            first, last = first.transpose(0, 1), last.transpose(0, 1)
        dtype = torch.promote_types(first.dtype, torch.float32)
        similarity = F.cosine_similarity(first.to(dtype), last.to(dtype), dim=-1)
        self.sums[start] += self.transform(similarity)[mask.to(similarity.device)].double().sum().cpu()

    def count(self, mask: torch.Tensor) -> None:
        """Count one batch's tokens (once per batch, after its blocks are added)."""
        self.tokens += int(mask.sum())

    def scores(self) -> torch.Tensor:
        if self.tokens == 0:
            raise PruningError("the dataloader gave no (non-padding) tokens to score")
        scores = torch.full((self.record["original"]["num_layers"],), float("nan"), dtype=torch.float64)
        scores[self.record["kept_layers"][: self.starts]] = self.sums / self.tokens
        return scores


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
    similarity = BlockSimilarity(model, span, transform, last_token)
    layers, device = get_adapter(model).get_layers(model), model_device(model)
    inputs, outputs = [None] * len(layers), [None] * len(layers)

    def capture(position: int):
        def hook(module, args, kwargs, output):
            inputs[position] = args[0] if args else kwargs["hidden_states"]
            outputs[position] = output[0] if isinstance(output, tuple) else output

        return hook

    handles = [layer.register_forward_hook(capture(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        with scoring_mode(model):
            for batch in dataloader:
                batch = to_device(batch, device)
                model(**batch)
                mask = token_mask(batch["input_ids"], batch.get("attention_mask"), last_token)
                for start in range(similarity.starts):
                    similarity.add(start, inputs[start], outputs[start + span - 1], mask)
                similarity.count(mask)
    finally:
        for handle in handles:
            handle.remove()
    return similarity.scores()


def layer_cosine_scores(model: nn.Module, dataloader: Iterable[Batch]) -> torch.Tensor:
    """`[num_layers]` cosine similarity between each layer's input and output hidden states, averaged over
    all non-padding tokens (Sajjad et al., 2020, contribution-based dropping): high = contributes little."""
    return _mean_block_similarity(model, dataloader, 1, cosine, last_token=False)


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
    return _mean_block_similarity(model, dataloader, n, angle, last_token)
