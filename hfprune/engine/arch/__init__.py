"""Architecture adapters, one small class per model family, and the registry that picks one by `model_type`.

Adding a family is one file: subclass `ArchAdapter`, fill in the paths, and `register_adapter(MyAdapter())`.
"""

from __future__ import annotations

from ...errors import PruningError
from .base import ArchAdapter
from .bert import BertAdapter
from .distilbert import DistilBertAdapter
from .gpt2 import GPT2Adapter
from .llama import LlamaAdapter
from .xlnet import XLNetAdapter

ADAPTERS: dict[str, ArchAdapter] = {}


def register_adapter(adapter: ArchAdapter) -> ArchAdapter:
    for model_type in adapter.model_types:
        ADAPTERS[model_type] = adapter
    return adapter


for _adapter in (BertAdapter(), DistilBertAdapter(), GPT2Adapter(), LlamaAdapter(), XLNetAdapter()):
    register_adapter(_adapter)


def supported_model_types() -> list[str]:
    return sorted(ADAPTERS)


def get_adapter(model_or_config) -> ArchAdapter:
    """The adapter for a model (or config); a clear error naming the supported types otherwise."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        raise PruningError(
            f"hfprune has no adapter for model type '{model_type}'; supported: {', '.join(supported_model_types())}"
        )
    return ADAPTERS[model_type]


__all__ = ["ADAPTERS", "ArchAdapter", "get_adapter", "register_adapter", "supported_model_types"]
