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
from ..errors import PruningError, first_line
from .per_layer_load import (
    check_per_layer_config,
    prepare_per_layer_config,
    saved_overrides,
)
from .v4 import convert_v4_config

try:  # transformers 5 configs are strict dataclasses: a config that fails their checks raises this (no ValueError)
    from huggingface_hub.errors import StrictDataclassError as _StrictDataclassError
except ImportError:  # pragma: no cover - an older huggingface_hub
    _StrictDataclassError = ValueError

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


def model_class_of(config: PretrainedConfig) -> type:
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


def load_config(pretrained_model_name_or_path: str | Path, **kwargs) -> PretrainedConfig:
    """`AutoConfig.from_pretrained`, with a config.json that transformers refuses (e.g. a hand-edited `hidden_size`
    that its heads do not divide) as one `PruningError` line: that the config and the weights disagree where the
    weights say so, else why the config is invalid. A missing folder or a failed Hub lookup stays an `OSError`."""
    try:
        return AutoConfig.from_pretrained(pretrained_model_name_or_path, **kwargs)
    except (_StrictDataclassError, ValueError, TypeError, KeyError) as error:
        if isinstance(error, PruningError):
            raise
        raise PruningError(_config_error(pretrained_model_name_or_path, kwargs, error)) from None


_WIDTH_FIELDS = ("hidden_size", "n_embd", "d_model", "dim")


def _config_error(path: str | Path, kwargs: dict, error: BaseException) -> str:
    cause = error
    while cause.__cause__ is not None:  # the validator's own message, not the wrapper's
        cause = cause.__cause__
    reason = first_line(cause)
    directory = Path(path).expanduser() / kwargs.get("subfolder", "")
    mismatch = _width_mismatch(directory, kwargs) if directory.is_dir() else None
    if mismatch:
        return f"config.json and the weights disagree: {mismatch} (transformers refuses the config: {reason})"
    return f"the config of {path} is invalid: {reason}"


def _width_mismatch(directory: Path, kwargs: dict) -> str | None:
    """'config.json says hidden_size 30, the weights' <embedding> is [99, 32]', or None where they agree or it
    cannot be told (no safetensors, no embedding found, a factorised embedding as ELECTRA's)."""
    try:
        raw = json.loads((directory / "config.json").read_text())
        field = next(name for name in _WIDTH_FIELDS if isinstance(raw.get(name), int))
    except (OSError, ValueError, StopIteration):
        return None
    if "embedding_size" in raw:
        return None
    try:
        files = safetensors_files(directory, kwargs)
    except PruningError:
        return None
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as weights:
                for key in weights.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
                    module = key.split(".")[-2] if "." in key else key
                    if "embed" not in module and module != "wte":
                        continue
                    shape = weights.get_slice(key).get_shape()
                    if len(shape) == 2 and shape[0] == raw.get("vocab_size"):
                        if shape[1] == raw[field]:
                            return None
                        return f"config.json says {field} {raw[field]}, the weights' {key} is {list(shape)}"
        except (SafetensorError, OSError):
            return None
    return None


def from_pretrained(pretrained_model_name_or_path: str | Path, *model_args, model_class: type | None = None, **kwargs):
    """Load a (possibly pruned) checkpoint saved with `save_pretrained`.

    The class comes from `config.architectures` unless `model_class` is given (e.g. `AutoModel` for the
    bare encoder). The pruned structure is rebuilt inside `__init__` before the normal `from_pretrained`
    loads the weights, so `dtype`, `device_map` and every other keyword work as usual. The structure is read
    from `config.hfprune`, from transformers' own `per_layer_config`, or from transformers 4's `pruned_heads`
    (a checkpoint pruned with v4's `prune_heads` loads with the outputs v4 gave; see `hfprune.export.convert`).

    A checkpoint that disagrees with itself is refused with a one-line `PruningError` instead of loading
    with random weights: a corrupt `config.hfprune` record (or one of a newer format, or made for another model
    type), a record or config whose shapes differ from the weights (a hand-edited `hidden_size` included), layers
    the weights do not hold, any other weight missing from a checkpoint of the very class it is loaded as (e.g. its
    `classifier.weight` or `lm_head.weight`; a bare encoder loaded with a task head still gets a new head), a
    `tie_word_embeddings` flipped by hand, a truncated safetensors file or a folder without weights.
    """
    config = kwargs.pop("config", None)
    if config is None:
        config_kwargs = {key: kwargs[key] for key in _CONFIG_KWARGS if key in kwargs}
        config = load_config(pretrained_model_name_or_path, **config_kwargs)
    config, heads_to_remove = convert_v4_config(config)  # transformers 4's pruned_heads -> config.hfprune
    if model_class is None:
        model_class = model_class_of(config)
    elif hasattr(model_class, "_model_mapping"):  # an Auto class: resolve it for this config
        model_class = _auto_model_class(model_class, config)
    # The checkpoint says it is this very class: every weight must come from it (none is a new head to train).
    own_class = model_class.__name__ in (getattr(config, "architectures", None) or [])
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
    check_loading_info(model, info, bool(record), reinit_mismatched, own_class)
    check_tied_weights(model, pretrained_model_name_or_path, kwargs)
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
    for file in safetensors_files(directory, kwargs):
        if not file.is_file():
            raise PruningError(f"{file} is missing (listed in {names[1]})")
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as error:
            raise PruningError(f"{file} is truncated or corrupt ({str(error).splitlines()[0]})") from None


def safetensors_files(directory: Path, kwargs: dict) -> list[Path]:
    """The safetensors files of a local checkpoint folder: the single file, or every shard its index lists."""
    single = directory / _with_variant(_WEIGHT_NAMES[0], kwargs.get("variant"))
    index = directory / _with_variant(_WEIGHT_NAMES[1], kwargs.get("variant"))
    if single.is_file():
        return [single]
    if not index.is_file():
        return []
    return [directory / shard for shard in sorted(set(weight_map(index).values()))]


def weight_map(index: Path) -> dict[str, str]:
    try:
        mapping = json.loads(index.read_text())["weight_map"]
        if not isinstance(mapping, dict):
            raise TypeError(f"weight_map is a {type(mapping).__name__}")
        return mapping
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise PruningError(f"{index} is not a valid safetensors index ({error})") from None


def _checkpoint_tensors(directory: Path, keys: list[str], kwargs: dict) -> dict[str, object] | None:
    """The tensors `keys` of a local safetensors checkpoint ({} for keys it lacks); None where there is no such file
    to read (a Hub id, .bin weights, GGUF)."""
    if not directory.is_dir() or kwargs.get("gguf_file") or kwargs.get("use_safetensors") is False:
        return None
    files = safetensors_files(directory, kwargs)
    if not files:
        return None
    found = {}
    for file in files:
        with safe_open(str(file), framework="pt") as weights:
            names = set(weights.keys())
            for key in keys:
                if key in names:
                    found[key] = weights.get_tensor(key)
    return found


def check_tied_weights(model: nn.Module, path: str | Path, kwargs: dict) -> None:
    """Refuse a checkpoint whose config ties the output embeddings to the input ones while its weights hold a
    separate, different output matrix (`tie_word_embeddings` flipped to true by hand): transformers loads both
    untied and says nothing, and the model then saves without its output matrix (a tied config drops it), so the
    next load replaces it by the input embeddings. (Flipped to false, the output matrix is missing:
    `check_loading_info`.)"""
    if not getattr(model.config, "tie_word_embeddings", False):
        return
    try:
        output, inputs = model.get_output_embeddings(), model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return
    if getattr(output, "weight", None) is None or getattr(inputs, "weight", None) is None:
        return  # no output embeddings (a classifier)
    names = {id(module): name for name, module in model.named_modules(remove_duplicate=False)}
    output_key, input_key = f"{names[id(output)]}.weight", f"{names[id(inputs)]}.weight"
    directory = Path(path).expanduser() / kwargs.get("subfolder", "")
    try:
        tensors = _checkpoint_tensors(directory, [output_key], kwargs)
        if not tensors:
            return  # the usual tied checkpoint: no separate output matrix
        tensors.update(_checkpoint_tensors(directory, [input_key], kwargs) or {})
    except (SafetensorError, OSError):
        return  # unreadable files are refused by check_weight_files
    saved_output, saved_input = tensors[output_key], tensors.get(input_key)
    if saved_input is None or saved_input.shape != saved_output.shape or not bool((saved_input == saved_output).all()):
        raise PruningError(
            f"config.json says tie_word_embeddings: true, but the checkpoint holds a separate {output_key} that differs "
            f"from {input_key}: set tie_word_embeddings to false in config.json"
        )


def _layer_prefix(model: nn.Module) -> str | None:
    """The state-dict prefix of the model's layer list (`bert.encoder.layer`), None for an unsupported family."""
    try:
        layers = get_adapter(model).get_layers(model)
    except (PruningError, AttributeError):
        return None
    return next((name for name, module in model.named_modules() if module is layers), None)


def _base_prefix(model: nn.Module) -> str:
    """The state-dict prefix of the base model inside a model with a head (`bert`), '' for a bare base model."""
    base = getattr(model, "base_model", model)
    return next((name for name, module in model.named_modules() if module is base), "")


def check_loading_info(model: nn.Module, info: dict, recorded: bool, reinit_mismatched: bool, own_class: bool = False) -> None:
    """Refuse a load in which weights of the model would be randomly initialised: the config's layers always; any
    other weight (a head) when the checkpoint is of the loaded class itself (`own_class`: its config names it), so
    that none of it is a new head to train; and a size mismatch in the base model even with `reinit_mismatched`."""
    prefix = _layer_prefix(model)
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.") if prefix is not None else None
    base = _base_prefix(model)

    def in_layers(key: str) -> bool:
        return pattern is not None and pattern.match(key) is not None

    def in_base(key: str) -> bool:
        return not base or key.startswith(f"{base}.")

    missing = sorted(key for key in info.get("missing_keys", ()) if in_layers(key))
    if missing:
        layers = sorted({int(pattern.match(key).group(1)) for key in missing})
        count = len(get_adapter(model).get_layers(model))
        raise PruningError(
            f"the checkpoint has no weights for {len(missing)} parameters of layer(s) {layers} (e.g. {missing[0]}): "
            f"the config says {count} layers, and they would load randomly initialised"
        )
    # layers first, then the rest of the base model (embeddings, norms), then the head
    order = lambda item: (not in_layers(item[0]), not in_base(item[0]), item[0])
    for key, saved, expected in sorted(info.get("mismatched_keys", ()), key=order):
        if in_base(key) or not reinit_mismatched:
            source = "config.hfprune or the config" if in_layers(key) else "the config"
            raise PruningError(
                f"{source} disagrees with the weights: {key} is {list(saved)} in the checkpoint but "
                f"{list(expected)} in the model"
                + ("" if in_base(key) else "; pass ignore_mismatched_sizes=True to initialise it anew")
            )
    missing = sorted(info.get("missing_keys", ()))
    if own_class and missing:
        raise PruningError(
            f"the checkpoint has no weights for {len(missing)} parameter(s) of {type(model).__name__} (e.g. {missing[0]}), "
            f"which its config.json names, so they would load randomly initialised"
            + (_untied_hint(model, missing) or "; the checkpoint is incomplete: save it again from the whole model")
        )
    unexpected = sorted(key for key in info.get("unexpected_keys", ()) if in_layers(key))
    if recorded and unexpected:
        raise PruningError(
            f"config.hfprune disagrees with the weights: the checkpoint has {len(unexpected)} layer weights the "
            f"recorded structure has no place for (e.g. {unexpected[0]})"
        )


def _untied_hint(model: nn.Module, missing: list[str]) -> str:
    """For a missing output matrix of a model whose config unties it: tie_word_embeddings was likely flipped."""
    try:
        output = model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return ""
    names = {id(module): name for name, module in model.named_modules(remove_duplicate=False)}
    if output is None or f"{names.get(id(output))}.weight" not in missing:
        return ""
    return (
        f"; config.json says tie_word_embeddings: false, but the checkpoint has no {names[id(output)]}.weight of its own: "
        "set tie_word_embeddings to true in config.json"
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
