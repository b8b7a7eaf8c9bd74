"""Reload pruned checkpoints: with hfprune, with stock transformers, or with `trust_remote_code`."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import transformers
from torch import nn
from transformers import AutoConfig, PretrainedConfig

from . import structure
from .errors import PruningError
from .structure import PATCH_KEY, restructured_class

_CONFIG_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "subfolder", "trust_remote_code")
_AUTO_CLASSES = (
    "AutoModelForSequenceClassification",
    "AutoModelForCausalLM",
    "AutoModelForMaskedLM",
    "AutoModelForTokenClassification",
    "AutoModelForQuestionAnswering",
    "AutoModelForMultipleChoice",
    "AutoModel",
)
REMOTE_CODE_FILE = "modeling_hfprune.py"


def _model_class(config: PretrainedConfig) -> type:
    architectures = getattr(config, "architectures", None) or []
    for name in architectures:
        model_class = getattr(transformers, name, None)
        if model_class is not None:
            return model_class
    return transformers.AutoModel._model_mapping[type(config)]


def from_pretrained(pretrained_model_name_or_path: str | Path, *model_args, model_class: type | None = None, **kwargs):
    """Load a (possibly pruned) checkpoint saved with `save_pretrained`.

    The class comes from `config.architectures` unless `model_class` is given (e.g. `AutoModel` for the
    bare encoder). The pruned structure is rebuilt inside `__init__` before the normal `from_pretrained`
    loads the weights, so `dtype`, `device_map` and every other keyword work as usual.
    """
    config = kwargs.pop("config", None)
    if config is None:
        config_kwargs = {key: kwargs[key] for key in _CONFIG_KWARGS if key in kwargs}
        config = AutoConfig.from_pretrained(pretrained_model_name_or_path, **config_kwargs)
    if model_class is None:
        model_class = _model_class(config)
    elif hasattr(model_class, "_model_mapping"):  # an Auto class: resolve it for this config
        model_class = model_class._model_mapping[type(config)]
    if (getattr(config, PATCH_KEY, None) or {}).get("patch"):
        model_class = restructured_class(model_class)
    return model_class.from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)


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
    `hfprune.structure` and one class) and an `auto_map` in config.json pointing at it.
    """
    if not hasattr(model, "save_pretrained"):
        raise PruningError(f"expected a transformers PreTrainedModel, got {type(model).__name__}")
    save_directory = Path(save_directory)
    stock_class = type(model)
    while getattr(stock_class, "_hfprune_restructured", False):
        stock_class = stock_class.__base__
    auto_names = _auto_class_names(stock_class, model.config)
    if not auto_names:
        raise PruningError(f"{stock_class.__name__} has no Auto class in transformers; it cannot be exported")

    model.save_pretrained(save_directory, **save_kwargs)
    class_name = f"Pruned{stock_class.__name__}"
    source = inspect.getsource(structure)
    source += (
        f"\n\nfrom transformers import {stock_class.__name__}\n\n\n"
        f"class {class_name}(restructured_class({stock_class.__name__})):\n"
        f'    """{stock_class.__name__} with the pruned structure recorded in `config.hfprune`."""\n'
    )
    (save_directory / REMOTE_CODE_FILE).write_text(source)

    config_path = save_directory / "config.json"
    config = json.loads(config_path.read_text())
    module = REMOTE_CODE_FILE.removesuffix(".py")
    config["auto_map"] = {name: f"{module}.{class_name}" for name in auto_names}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return save_directory
