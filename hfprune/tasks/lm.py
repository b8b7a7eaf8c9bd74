"""Causal language modelling as a task: texts from a file, a `Dataset` or the Hub, cut into token blocks,
and scored by perplexity.

It exists apart from the classification readers because its data is plain text and its only metric is
perplexity; `task_data` (task `"lm"`) and the benchmarks use it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import datasets
import torch
from datasets import Dataset

from .specs import TaskDataError

__all__ = ["NextTokenLoss", "lm_blocks", "load_lm_texts", "perplexity"]

TEXT_SUFFIXES = (".txt", ".text", ".raw")  # in the order a data folder is searched


def load_lm_texts(
    path_or_dataset: str | os.PathLike | Dataset,
    config: str | None = None,
    split: str = "test",
    text_column: str = "text",
) -> list[str]:
    """Texts for language modelling: a plain text file, a ``Dataset``, or a Hub dataset name.

    A text file gives a single text (its whole content). A Hub name is loaded with
    ``datasets.load_dataset(name, config, split=split)``, e.g. ``("Salesforce/wikitext", "wikitext-2-raw-v1")``.
    """
    if isinstance(path_or_dataset, Dataset):
        ds = path_or_dataset
    else:
        path = Path(path_or_dataset)
        if path.is_file():
            return [path.read_text(encoding="utf-8")]
        if path.suffix.lower() in TEXT_SUFFIXES or path.is_dir():
            raise TaskDataError(f"Text file not found: {path}.")
        ds = datasets.load_dataset(str(path_or_dataset), config, split=split)
    if text_column not in ds.column_names:
        raise TaskDataError(f"Dataset has no column {text_column!r}; columns: {ds.column_names}.")
    return list(ds[text_column])


def lm_blocks(
    texts: Iterable[str], tokenizer: Any, block_size: int = 128, separator: str = "\n\n"
) -> Dataset:
    """Join ``texts`` with ``separator``, tokenize once and cut into full blocks of ``block_size`` tokens.

    This is the usual perplexity protocol for pruning (e.g. WikiText-2 in SparseGPT/Wanda); the last
    partial block is dropped. ``labels`` equal ``input_ids``: the model shifts them itself.
    """
    text = separator.join(texts)
    ids = tokenizer(text, verbose=False)["input_ids"]  # verbose=False: long input is intended here
    n_blocks = len(ids) // block_size
    if n_blocks == 0:
        raise TaskDataError(f"Only {len(ids)} tokens, fewer than one block of {block_size}.")
    blocks = [ids[i * block_size : (i + 1) * block_size] for i in range(n_blocks)]
    return Dataset.from_dict(
        {"input_ids": blocks, "attention_mask": [[1] * block_size] * n_blocks, "labels": blocks}
    ).with_format("torch")


def perplexity(model: torch.nn.Module, dataloader: Iterable[Mapping[str, torch.Tensor]]) -> float:
    """exp(mean next-token NLL) over all predicted tokens of all batches.

    Each batch needs ``input_ids`` and may have ``attention_mask`` and ``labels`` (-100 = ignored);
    NLL is summed per token, so blocks and batches of different sizes are weighted correctly.
    """
    device = getattr(model, "device", None) or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = NextTokenLoss()
    try:
        with torch.no_grad():
            for batch in dataloader:
                mask = batch.get("attention_mask")
                logits = model(input_ids=batch["input_ids"].to(device), attention_mask=mask.to(device) if mask is not None else None).logits
                total.add(logits, batch)
    finally:
        model.train(was_training)
    return total.perplexity()


class NextTokenLoss:
    """Summed next-token NLL and the tokens it covers, batch by batch, however the logits were computed (a whole
    model, or one streamed layer at a time: `hfprune.streaming`)."""

    def __init__(self) -> None:
        self.nll, self.tokens = 0.0, 0

    def add(self, logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> None:
        """One batch's logits `[batch, tokens, vocab]`; its labels (-100 ignored), else its ids where the mask is 1."""
        input_ids, mask, labels = batch["input_ids"], batch.get("attention_mask"), batch.get("labels")
        if labels is None:
            labels = input_ids if mask is None else input_ids.masked_fill(mask == 0, -100)
        labels = labels.to(logits.device)[:, 1:]
        self.nll += torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum"
        ).item()
        self.tokens += int((labels != -100).sum())

    def perplexity(self) -> float:
        if self.tokens == 0:
            raise TaskDataError("No tokens to score: the dataloader is empty or every label is -100.")
        return math.exp(self.nll / self.tokens)
