"""Reload pruned checkpoints: with hfprune, with stock transformers, or with `trust_remote_code`."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import transformers
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import AutoConfig, PretrainedConfig

from ..constants import REMOTE_CODE_FILE
from ..engine import structure
from ..engine.arch import get_adapter
from ..engine.record import check_record, validate_record
from ..engine.structure import PATCH_KEY, restructured_class, stock_class
from ..engine.surgery import prune_heads
from ..errors import PruningError
from .per_layer_load import (
    check_per_layer_config,
    prepare_per_layer_config,
    saved_overrides,
)
from .v4 import convert_v4_config

_CONFIG_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "subfolder", "trust_remote_code", "gguf_file")
_AUTO_CLASSES = (
    "AutoModelForSequenceClassification",
    "AutoModelForCausalLM",
    "AutoModelForMaskedLM",
    "AutoModelForTokenClassification",
    "AutoModelForQuestionAnswering",
    "AutoModelForMultipleChoice",
    "AutoModel",
)


def _model_class(config: PretrainedConfig) -> type:
    architectures = getattr(config, "architectures", None) or []
    for name in architectures:
        model_class = getattr(transformers, name, None)
        if model_class is not None:
            return model_class
    return _auto_model_class(transformers.AutoModel, config)


def _auto_model_class(auto_class: type, config: PretrainedConfig) -> type:
    try:
        return auto_class._model_mapping[type(config)]
    except KeyError:
        raise PruningError(
            f"{auto_class.__name__} has no model class for model type '{config.model_type}'"
        ) from None


def from_pretrained(pretrained_model_name_or_path: str | Path, *model_args, model_class: type | None = None, **kwargs):
    """Load a (possibly pruned) checkpoint saved with `save_pretrained`.

    The class comes from `config.architectures` unless `model_class` is given (e.g. `AutoModel` for the
    bare encoder). The pruned structure is rebuilt inside `__init__` before the normal `from_pretrained`
    loads the weights, so `dtype`, `device_map` and every other keyword work as usual. The structure is read
    from `config.hfprune`, from transformers' own `per_layer_config`, or from transformers 4's `pruned_heads`
    (a checkpoint pruned with v4's `prune_heads` loads with the outputs v4 gave; see `hfprune.export.convert`).

    A checkpoint that disagrees with itself is refused with a one-line `PruningError` instead of loading
    with random weights: a corrupt `config.hfprune` record, a record or config whose shapes differ from
    the weights, layers the weights do not hold, a truncated safetensors file or a folder without weights.
    """
    config = kwargs.pop("config", None)
    if config is None:
        config_kwargs = {key: kwargs[key] for key in _CONFIG_KWARGS if key in kwargs}
        config = AutoConfig.from_pretrained(pretrained_model_name_or_path, **config_kwargs)
    config, heads_to_remove = convert_v4_config(config)  # transformers 4's pruned_heads -> config.hfprune
    if model_class is None:
        model_class = _model_class(config)
    elif hasattr(model_class, "_model_mapping"):  # an Auto class: resolve it for this config
        model_class = _auto_model_class(model_class, config)
    saved_per_layer = saved_overrides(config)
    prepare_per_layer_config(config, model_class)  # global reads allowed; a record made from it if there is none
    record = getattr(config, PATCH_KEY, None)
    if record:
        validate_record(record, config)
    if record and record.get("patch"):
        model_class = restructured_class(model_class)
    check_weight_files(pretrained_model_name_or_path, kwargs)

    return_info = kwargs.pop("output_loading_info", False)
    reinit_mismatched = kwargs.pop("ignore_mismatched_sizes", False)
    try:
        model, info = model_class.from_pretrained(
            pretrained_model_name_or_path,
            *model_args,
            config=config,
            output_loading_info=True,
            ignore_mismatched_sizes=True,  # mismatches are reported below, as one PruningError line
            **kwargs,
        )
    except structure.PatchError as error:
        raise PruningError(str(error)) from None
    except SafetensorError as error:
        raise PruningError(f"cannot read the weights of {pretrained_model_name_or_path}: {error}") from None
    _check_loading_info(model, info, bool(record), reinit_mismatched)
    if record:
        check_record(model)
    if saved_per_layer:
        check_per_layer_config(model, saved_per_layer)
    if heads_to_remove:  # XLNet: transformers 4 listed the heads but never cut them from the weights
        prune_heads(model, heads_to_remove)
    return (model, info) if return_info else model


# ---- checks ---------------------------------------------------------------------------------------------
_WEIGHT_NAMES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _with_variant(name: str, variant: str | None) -> str:
    if not variant:
        return name
    stem, _, suffix = name.partition(".")
    return f"{stem}.{variant}.{suffix}"


def check_weight_files(path: str | Path, kwargs: dict) -> None:
    """For a local folder: the weights exist and every safetensors file is complete (headers only, cheap)."""
    directory = Path(path).expanduser() / kwargs.get("subfolder", "")
    if not directory.is_dir() or kwargs.get("gguf_file") or kwargs.get("state_dict") is not None:
        return
    names = [_with_variant(name, kwargs.get("variant")) for name in _WEIGHT_NAMES]
    present = [name for name in names if (directory / name).is_file()]
    if not present:
        raise PruningError(f"{directory} holds no model weights (no {names[0]} or {names[2]})")
    if kwargs.get("use_safetensors") is False:
        return
    files = []
    if names[0] in present:
        files = [directory / names[0]]
    elif names[1] in present:
        try:
            weight_map = json.loads((directory / names[1]).read_text())["weight_map"]
            files = [directory / shard for shard in sorted(set(weight_map.values()))]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise PruningError(f"{directory / names[1]} is not a valid safetensors index ({error})") from None
    for file in files:
        if not file.is_file():
            raise PruningError(f"{file} is missing (listed in {names[1]})")
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as error:
            raise PruningError(f"{file} is truncated or corrupt ({str(error).splitlines()[0]})") from None


def _layer_prefix(model: nn.Module) -> str | None:
    """The state-dict prefix of the model's layer list (`bert.encoder.layer`), None for an unsupported family."""
    try:
        layers = get_adapter(model).get_layers(model)
    except (PruningError, AttributeError):
        return None
    return next((name for name, module in model.named_modules() if module is layers), None)


def _check_loading_info(model: nn.Module, info: dict, recorded: bool, reinit_mismatched: bool) -> None:
    """Refuse a load in which the config's layers did not get their weights from the checkpoint."""
    prefix = _layer_prefix(model)
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.") if prefix is not None else None

    def in_layers(key: str) -> bool:
        return pattern is not None and pattern.match(key) is not None

    missing = sorted(key for key in info.get("missing_keys", ()) if in_layers(key))
    if missing:
        layers = sorted({int(pattern.match(key).group(1)) for key in missing})
        count = len(get_adapter(model).get_layers(model))
        raise PruningError(
            f"the checkpoint has no weights for {len(missing)} parameters of layer(s) {layers} (e.g. {missing[0]}): "
            f"the config says {count} layers, and they would load randomly initialised"
        )
    for key, saved, expected in sorted(info.get("mismatched_keys", ()), key=lambda item: item[0]):
        if in_layers(key) or not reinit_mismatched:
            source = "config.hfprune or the config" if in_layers(key) else "the config"
            raise PruningError(
                f"{source} disagrees with the weights: {key} is {list(saved)} in the checkpoint but "
                f"{list(expected)} in the model"
                + ("" if in_layers(key) else "; pass ignore_mismatched_sizes=True to initialise it anew")
            )
    unexpected = sorted(key for key in info.get("unexpected_keys", ()) if in_layers(key))
    if recorded and unexpected:
        raise PruningError(
            f"config.hfprune disagrees with the weights: the checkpoint has {len(unexpected)} layer weights the "
            f"recorded structure has no place for (e.g. {unexpected[0]})"
        )


def _auto_class_names(model_class: type, config: PretrainedConfig) -> list[str]:
    names = []
    for name in _AUTO_CLASSES:
        mapping = getattr(transformers, name)._model_mapping
        if type(config) in mapping and mapping[type(config)] is model_class:
            names.append(name)
    return names


def save_for_remote_code(model: nn.Module, save_directory: str | Path, **save_kwargs) -> Path:
    """Save `model` so that stock transformers reloads it with `trust_remote_code=True`, without hfprune.

    Writes the normal checkpoint plus `modeling_hfprune.py` (a self-contained copy of
    `hfprune.engine.structure` and one class) and an `auto_map` in config.json pointing at it.
    """
    if not hasattr(model, "save_pretrained"):
        raise PruningError(f"expected a transformers PreTrainedModel, got {type(model).__name__}")
    save_directory = Path(save_directory)
    base_class = stock_class(model)
    auto_names = _auto_class_names(base_class, model.config)
    if not auto_names:
        raise PruningError(f"{base_class.__name__} has no Auto class in transformers; it cannot be exported")

    model.save_pretrained(save_directory, **save_kwargs)
    class_name = f"Pruned{base_class.__name__}"
    source = inspect.getsource(structure)
    source += (
        f"\n\nfrom transformers import {base_class.__name__}\n\n\n"
        f"class {class_name}(restructured_class({base_class.__name__})):\n"
        f'    """{base_class.__name__} with the pruned structure recorded in `config.hfprune`."""\n'
    )
    (save_directory / REMOTE_CODE_FILE).write_text(source)

    config_path = save_directory / "config.json"
    config = json.loads(config_path.read_text())
    module = REMOTE_CODE_FILE.removesuffix(".py")
    config["auto_map"] = {name: f"{module}.{class_name}" for name in auto_names}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return save_directory
