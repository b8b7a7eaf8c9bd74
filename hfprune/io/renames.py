"""Which weight of a model each stored key loads into: the key renames `from_pretrained` applies (legacy names such
as LayerNorm `gamma`/`beta`, a base-model prefix added or dropped), found by transformers' own `rename_source_key`
in the order it applies them. The skeleton's weight check and the streamed modules read a checkpoint's keys
through this, so that what loads with `from_pretrained` is what they accept.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import WeightConverter, WeightRenaming, dot_natural_key, rename_source_key

__all__ = ["loaded_names"]


def loaded_names(model: nn.Module, keys: Iterable[str]) -> dict[str, tuple[str, str | None]]:
    """`{stored key: (the state-dict name it loads into, the converter's source pattern or None)}` for the keys that
    load into a weight or buffer of `model` (others are left out), in transformers' loading order.

    A key the model already has keeps its name even when a renaming would match it (as `from_pretrained` finds it
    under its own name first). The renames that matched are kept on the model, as `from_pretrained` keeps them, so
    that `save_pretrained` writes them back.
    """
    meta_state = model.state_dict()
    mapping = get_model_conversion_mapping(model)
    renamings = [entry for entry in mapping if isinstance(entry, WeightRenaming)]
    converters = [entry for entry in mapping if isinstance(entry, WeightConverter)]
    prefix = model.base_model_prefix
    names: dict[str, tuple[str, str | None]] = {}
    for key in sorted(keys, key=dot_natural_key):
        name, converted = rename_source_key(key, renamings, converters, prefix, meta_state)
        if name not in meta_state and key in meta_state:
            name, converted = rename_source_key(key, [], [], base_model_prefix=prefix, meta_state_dict=meta_state)
        if name in meta_state:
            names[key] = (name, converted)
    model._weight_conversions = [entry for entry in mapping if entry.was_used()]
    return names
