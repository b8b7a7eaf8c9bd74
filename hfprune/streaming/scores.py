"""`stream_scores`: the forward-only scores of a checkpoint on disk, one layer in memory at a time.

The calibration batches run through the layers one layer at a time (`StreamedCheckpoint`), with the same hooks
and sums as the in-memory scorers: `ActivationWatch` (heads, KV groups, FFN neurons, hidden channels, Minitron's
activation scores) and `BlockSimilarity` (angular distance, block influence, layer cosine). So a streamed score
is the in-memory one, to float rounding.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from ..engine.layer_inputs import layer_output
from ..errors import PruningError
from ..progress import Progress
from ..scoring.activations import ACTIVATION_KINDS, ActivationWatch
from ..scoring.similarity import BlockSimilarity, angle, cosine, token_mask
from .layers import DEFAULT_MAX_MEMORY, StreamedCheckpoint

LAYER_KINDS = ("angular_distance", "block_influence", "layer_cosine")
"""Per-layer scores from how little a layer changes its input (`hfprune.scoring.similarity`)."""
STREAM_KINDS = ACTIVATION_KINDS + LAYER_KINDS
"""Every score `stream_scores` computes."""
DEFAULT_STREAM_KINDS = ("heads", "kv_groups", "ffn", "angular_distance", "block_influence")


def stream_scores(
    model_dir: str | Path,
    dataloader: Iterable[Mapping[str, Any]],
    kinds: str | Iterable[str] = DEFAULT_STREAM_KINDS,
    *,
    normalize: bool = False,
    span: int = 1,
    last_token: bool = True,
    max_batches: int | None = None,
    device: str | torch.device = "cpu",
    max_memory: int = DEFAULT_MAX_MEMORY,
    progress: Progress | None = None,
) -> dict[str, torch.Tensor]:
    """Forward-only scores of the safetensors checkpoint in `model_dir`, reading one layer at a time.

    Returns `{kind: scores}` in original indices, as the in-memory scorers give them: "heads", "kv_groups",
    "ffn", "hidden" as `activation_scores` (`normalize` as there), "angular_distance" as
    `angular_distance(model, dataloader, n=span, last_token=last_token)`, "block_influence" and "layer_cosine" as
    `block_influence` / `layer_cosine_scores` (all tokens). The hidden states of the batches between two layers
    stay in memory up to `max_memory` bytes, the rest goes to disk. `progress("score", layers done, layers)`.
    """
    kinds = (kinds,) if isinstance(kinds, str) else tuple(dict.fromkeys(kinds))
    unknown = [kind for kind in kinds if kind not in STREAM_KINDS]
    if unknown or not kinds:
        raise PruningError(f"unknown streamed score kinds {unknown}; choose from {', '.join(STREAM_KINDS)}")
    activation_kinds = [kind for kind in kinds if kind in ACTIVATION_KINDS]
    with StreamedCheckpoint(model_dir, device=device, max_memory=max_memory) as checkpoint:
        model = checkpoint.model
        similarities = {kind: _similarity(model, kind, span, last_token) for kind in kinds if kind in LAYER_KINDS}
        data = list(itertools.islice(dataloader, max_batches))  # token ids: the outer modules see them twice
        batches, hidden = checkpoint.first_inputs(data)
        with ActivationWatch(model, activation_kinds) if activation_kinds else contextlib.nullcontext() as watch:
            masks = [_real_tokens(entry.mask, hidden[number]) for number, entry in enumerate(batches)]
            inputs = deque([hidden], maxlen=span)  # the inputs of the last `span` layers: a block's input
            num_layers = len(checkpoint.layers)
            for position in range(num_layers):
                outputs = checkpoint.hidden_states()
                with checkpoint.layer(position) as layer, torch.no_grad():
                    for number, batch in enumerate(batches):
                        if watch is not None:
                            watch.batch(masks[number])
                        output = layer_output(layer, batch.with_hidden(inputs[-1][number]))
                        for similarity in similarities.values():
                            start = position - similarity.span + 1
                            if start >= 0:
                                first = inputs[-similarity.span][number]
                                similarity.add(start, first, output, token_mask(masks[number], masks[number], similarity.last_token))
                        outputs.append(output)
                if len(inputs) == inputs.maxlen:
                    inputs[0].clear()
                inputs.append(outputs)
                if progress is not None:
                    progress("score", position + 1, num_layers)
            if "hidden" in activation_kinds:  # the outer channel sites (embedding and final norms, a head's) run here
                for _ in checkpoint.finish(outputs, _announcing(data, watch)):
                    pass
            for stored in inputs:
                stored.clear()
        for similarity in similarities.values():
            for mask in masks:
                similarity.count(token_mask(mask, mask, similarity.last_token))
    scores = watch.scores(normalize) if watch is not None else {}
    for kind, similarity in similarities.items():
        scores[kind] = 1 - similarity.scores() if kind == "block_influence" else similarity.scores()
    return {kind: scores[kind] for kind in kinds}


def _similarity(model, kind: str, span: int, last_token: bool) -> BlockSimilarity:
    """The accumulator of one layer kind, with the settings its in-memory scorer uses."""
    if kind == "angular_distance":
        return BlockSimilarity(model, span, angle, last_token)
    return BlockSimilarity(model, 1, cosine, last_token=False)


def _real_tokens(mask: torch.Tensor | None, hidden: torch.Tensor) -> torch.Tensor:
    """[batch, tokens] 1 for a real token (every token when the batch has no attention mask)."""
    return torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device) if mask is None else mask


def _announcing(dataloader: Iterable[Mapping[str, Any]], watch: ActivationWatch | None) -> Iterator[Mapping[str, Any]]:
    """The batches, each announced to `watch` before the model sees it (its outer norms are watched too)."""
    for batch in dataloader:
        if watch is not None:
            mask = batch.get("attention_mask")
            watch.batch(torch.ones_like(batch["input_ids"]) if mask is None else mask)
        yield batch


__all__ = ["DEFAULT_STREAM_KINDS", "LAYER_KINDS", "STREAM_KINDS", "stream_scores"]
