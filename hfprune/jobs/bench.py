"""What `benchmark_checkpoint` (`hfprune bench`) checks from the configs alone, before any weights load or any
timing runs: shapes the model can take, and a dense `--base` that is the original of the pruned checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from ..engine.record import get_record, original_sizes
from ..engine.structure import PATCH_KEY, stock_class
from ..errors import PipelineInputError, PruningError, first_line
from ..io.checkpoint import ModelSource
from ..io.loading import from_pretrained

__all__ = ["check_dense_base", "check_sequence_lengths", "load_dense_base", "max_sequence_length"]

# Families whose position ids start after the padding index (RoBERTa's `padding_idx + 1`): that many fewer usable.
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "data2vec-text")


def max_sequence_length(config: Any) -> int | None:
    """The longest sequence the model's position embeddings cover: `max_position_embeddings` (GPT-2's
    `n_positions`), less RoBERTa's offset of `pad_token_id + 1`; None for a config without one (XLNet)."""
    try:
        limit = getattr(config, "max_position_embeddings", None)
    except AttributeError:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        return None
    if getattr(config, "model_type", None) in _OFFSET_POSITIONS:
        limit -= (getattr(config, "pad_token_id", None) or 0) + 1
    return limit


def check_sequence_lengths(config: Any, seq_lengths: Iterable[int], *, model: str = "the checkpoint") -> None:
    """Refuse a sequence length longer than the model's position embeddings (one line, before any timing)."""
    limit = max_sequence_length(config)
    too_long = sorted(length for length in seq_lengths if limit is not None and length > limit)
    if too_long:
        offset = getattr(config, "model_type", None) in _OFFSET_POSITIONS
        field = "max_position_embeddings" + (" less its padding offset" if offset else "")
        raise PipelineInputError(
            f"sequence length {too_long[-1]} is longer than {model} can take ({limit} positions, its config's {field}); "
            f"time sequences of at most {limit} tokens",
            cli_message=f"--seq-lengths {too_long[-1]} is longer than {model} can take ({limit} positions, its config's "
            f"{field}); give lengths of at most {limit}",
        )


def _sizes(config: Any) -> dict[str, Any]:
    """The shapes a dense model has, or that a pruned one had before pruning: layers, heads, KV heads, FFN and
    hidden width, head size, vocabulary."""
    return {**original_sizes(get_record(config), config), "vocab_size": getattr(config, "vocab_size", None)}


def _is_pruned(config: Any) -> bool:
    """Whether the config's record removed anything (a record that keeps everything is a dense model)."""
    record = getattr(config, PATCH_KEY, None)
    if not record:
        return False
    original = record["original"]
    return (
        list(record["kept_layers"]) != list(range(original["num_layers"]))
        or any(list(heads) != list(range(original["num_heads"])) for heads in record["kept_heads"])
        or any(kept is not None and len(kept) != original["intermediate_size"] for kept in record["kept_ffn"])
        or record.get("kept_hidden") is not None
    )


def check_dense_base(pruned_config: Any, base_config: Any, base_name: str) -> None:
    """Refuse a `--base` that is not the dense original of the pruned checkpoint: another family (model type),
    another original size (layers, heads, widths, vocabulary), or itself pruned. One line, before any timing:
    the speedup against another model would mean nothing."""
    pruned_type, base_type = getattr(pruned_config, "model_type", None), getattr(base_config, "model_type", None)
    if pruned_type != base_type:
        raise PipelineInputError(
            f"the base model {base_name} is a {base_type} model, but the checkpoint was pruned from a {pruned_type} "
            "model; give the dense model it was pruned from"
        )
    try:
        if _is_pruned(base_config):
            raise PipelineInputError(
                f"the base model {base_name} is itself pruned (its config.json has an hfprune record); "
                "give the dense model the checkpoint was pruned from"
            )
        original, base = _sizes(pruned_config), _sizes(base_config)
    except PruningError as error:
        if isinstance(error, PipelineInputError):
            raise
        raise PipelineInputError(first_line(error)) from None
    differ = [
        f"{key} {base.get(key)} (the original has {value})" for key, value in original.items() if base.get(key) != value
    ]
    if differ:
        raise PipelineInputError(
            f"the base model {base_name} is not the original of the pruned checkpoint: it has {', '.join(differ)}; "
            "give the dense model it was pruned from"
        )


def load_dense_base(base: ModelSource | None, pruned: nn.Module) -> nn.Module | None:
    """The dense `--base` a pruned model is timed against, in eval mode and the pruned model's dtype (None without
    one: the timers then build a random-weight model with the original shapes)."""
    if base is None:
        return None
    kwargs = {**base.model_kwargs, "dtype": next(pruned.parameters()).dtype}
    return from_pretrained(base.name_or_path, config=base.config, model_class=stock_class(pruned), **kwargs).eval()
