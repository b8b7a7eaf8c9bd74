"""`streamed_perplexity`: a causal LM checkpoint's perplexity on disk, one layer in memory at a time."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from ..progress import Progress
from ..tasks.lm import NextTokenLoss
from .layers import DEFAULT_MAX_MEMORY, StreamedCheckpoint


def streamed_perplexity(
    model_dir: str | Path,
    dataloader: Iterable[Mapping[str, torch.Tensor]],
    *,
    device: str | torch.device = "cpu",
    max_memory: int = DEFAULT_MAX_MEMORY,
    progress: Progress | None = None,
) -> float:
    """exp(mean next-token NLL) of the checkpoint in `model_dir`, as `hfprune.tasks.lm.perplexity` gives it for the
    loaded model: the batches run through one layer at a time, then through the model's final norm and head."""
    data = list(dataloader)
    loss = NextTokenLoss()
    with StreamedCheckpoint(model_dir, device=device, max_memory=max_memory) as checkpoint:
        batches, hidden = checkpoint.first_inputs(data)
        hidden = checkpoint.run_layers(batches, hidden, progress=progress)
        model_inputs = ({key: batch[key] for key in ("input_ids", "attention_mask") if key in batch} for batch in data)
        for batch, outputs in zip(data, checkpoint.finish(hidden, model_inputs)):
            loss.add(outputs.logits, batch)
        hidden.clear()
    return loss.perplexity()


__all__ = ["streamed_perplexity"]
