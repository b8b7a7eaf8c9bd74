"""A checkpoint's model skeleton: its pruned shapes on the meta device, without reading the weights.

What re-rendering a model card needs (the structure and the parameter counts) from a folder on disk; it reads a
checkpoint's config in any of its forms, so it lives with the other checkpoint readers. With `check_weights=True`
the folder gets the checks `from_pretrained` applies before a card may describe it, from the weight files'
headers only: the config loads, the record is sound, the weight files are there and complete, and every weight
the skeleton has is in them with the same shape (none missing, no layer weight the record has no place for).
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import torch
from accelerate import init_empty_weights
from safetensors import SafetensorError, safe_open
from torch import nn

from ..engine import structure
from ..engine.record import check_record, validate_record
from ..engine.structure import PATCH_KEY, restructured_class
from ..errors import PruningError, first_line
from .loading import (
    _WEIGHT_NAMES,
    check_loading_info,
    check_tied_weights,
    check_weight_files,
    load_config,
    model_class_of,
    safetensors_files,
    weight_map,
)
from .per_layer_load import check_per_layer_config, prepare_per_layer_config, saved_overrides
from .renames import loaded_names
from .v4 import convert_v4_config

__all__ = ["checkpoint_skeleton", "saved_weight_shapes"]


def checkpoint_skeleton(
    checkpoint_dir: str | Path, *, check_weights: bool = False, buffers: bool = False, dtype: torch.dtype | None = None
) -> nn.Module:
    """The checkpoint's model with its pruned shapes on the meta device: all a card needs (structure and
    parameter counts), without reading the weights.

    `check_weights=True` refuses, with the one-line `PruningError` that `from_pretrained` would give, a folder
    whose model would not load: weight files missing or truncated, a weight missing (a dropped layer, a head), a
    shape that differs from the config or the `config.hfprune` record, layer weights the record has no place for,
    a `tie_word_embeddings` flipped by hand. Only the safetensors headers are read (a `.bin` checkpoint is mapped,
    not loaded). A config.json that transformers refuses is a `PruningError` either way.

    `buffers=True` builds the buffers for real (rotary frequencies, position ids: what a forward pass needs besides
    the weights, as `from_pretrained` computes them), `dtype` the floating-point dtype the model is built in.
    """
    checkpoint_dir = Path(checkpoint_dir)
    config, _ = convert_v4_config(load_config(checkpoint_dir))  # its structure in any of its forms
    model_class = model_class_of(config)
    own_class = model_class.__name__ in (getattr(config, "architectures", None) or [])
    saved_per_layer = saved_overrides(config)
    prepare_per_layer_config(config, model_class)
    record = getattr(config, PATCH_KEY, None)
    if record:
        validate_record(record, config)
    if (record or {}).get("patch"):
        model_class = restructured_class(model_class)
    if check_weights:
        check_weight_files(checkpoint_dir, {})
    try:
        with _empty_weights(buffers), _default_dtype(dtype):
            model = model_class(config)
        if buffers:  # accelerate's empty-weights context gives each parameter a new meta tensor: tie them again
            model.tie_weights()
    except structure.PatchError as error:
        raise PruningError(str(error)) from None
    if check_weights:
        _check_against_weights(model, checkpoint_dir, recorded=bool(record), own_class=own_class)
        check_tied_weights(model, checkpoint_dir, {})
        if record:
            check_record(model)
        if saved_per_layer:
            check_per_layer_config(model, saved_per_layer)
    return model


@contextlib.contextmanager
def _empty_weights(buffers: bool):
    """Parameters on the meta device; buffers too unless `buffers` (then they are built on the CPU)."""
    if buffers:
        with init_empty_weights(include_buffers=False):
            yield
    else:
        with torch.device("meta"):
            yield


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype | None):
    previous = torch.get_default_dtype()
    if dtype is not None and dtype.is_floating_point:
        torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def saved_weight_shapes(checkpoint_dir: str | Path) -> dict[str, tuple[int, ...]]:
    """`{name: shape}` of every tensor in a local checkpoint folder, read from the safetensors headers (one file
    or every shard of its index), else from `pytorch_model.bin` (and its shards) mapped onto the meta device:
    no weight is read. `{}` when the folder holds neither."""
    directory = Path(checkpoint_dir)
    shapes: dict[str, tuple[int, ...]] = {}
    files = safetensors_files(directory, {})
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as weights:
                for key in weights.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
                    shapes[key] = tuple(weights.get_slice(key).get_shape())
        except (SafetensorError, OSError) as error:
            raise PruningError(f"{file} is truncated or corrupt ({first_line(error)})") from None
    if files:
        return shapes
    single, index = directory / _WEIGHT_NAMES[2], directory / _WEIGHT_NAMES[3]
    if single.is_file():
        files = [single]
    elif index.is_file():
        files = [directory / shard for shard in sorted(set(weight_map(index).values()))]
    for file in files:
        try:
            state = torch.load(file, map_location="meta", weights_only=True, mmap=True)
        except Exception as error:  # noqa: BLE001 (a pickle can fail in many ways; each is a bad file)
            raise PruningError(
                f"cannot read the weights {file} ({type(error).__name__}: {first_line(error)})"
            ) from None
        shapes.update({key: tuple(value.shape) for key, value in state.items() if isinstance(value, torch.Tensor)})
    return shapes


def _check_against_weights(model: nn.Module, directory: Path, *, recorded: bool, own_class: bool) -> None:
    """What `from_pretrained`'s loading report would say of these weights in `model`, from their shapes alone:
    the missing, mismatched and unexpected keys, judged by the same `check_loading_info`. Stored keys are read under
    the names they load into (`loaded_names`: legacy names, another base-model prefix); a weight converted on load
    (fused, split, stacked) has the shape of its stored parts, so only its presence is checked."""
    stored = saved_weight_shapes(directory)
    loads = loaded_names(model, stored)
    saved = {loads[key][0] if key in loads else key: shape for key, shape in stored.items()}
    converted = {name for name, conversion in loads.values() if conversion is not None}
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    tied: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        tied.setdefault(id(parameter), []).append(name)
    aliases = {name: names for names in tied.values() for name in names}
    ignore_missing = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_missing", None) or ()]
    ignore_unexpected = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ()]
    missing = [
        key
        for key in expected
        if key not in saved
        and not any(alias in saved for alias in aliases.get(key, ()))  # a tied weight is saved once
        and not any(pattern.search(key) for pattern in ignore_missing)
    ]
    unexpected = [key for key in saved if key not in expected and not any(p.search(key) for p in ignore_unexpected)]
    mismatched = [
        (key, saved[key], shape) for key, shape in expected.items() if key in saved and key not in converted and saved[key] != shape
    ]
    info = {"missing_keys": missing, "unexpected_keys": unexpected, "mismatched_keys": mismatched}
    check_loading_info(model, info, recorded, False, own_class)
