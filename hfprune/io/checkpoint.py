"""Where a job's model comes from: a local folder, a Hub id or a GGUF file, checked before any weights load.

Everything that would make a job fail late, or worse succeed with a meaningless result, is refused here
with one `PipelineInputError` line: a missing folder, a folder without weights or with a truncated
safetensors file, a folder without tokenizer files (transformers 5 silently builds an empty 5-token
tokenizer there, and every word then reads as [UNK]), a model type hfprune has no adapter for, and
perplexity asked of an encoder that was never a left-to-right language model. `load_model_for_task` then
loads it with the head a task needs, and says whether that head was trained.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..engine.arch import get_adapter
from ..errors import PipelineInputError, PruningError, first_line
from .loading import check_weight_files, from_pretrained, load_config

if TYPE_CHECKING:
    from torch import nn

    from ..tasks.task_data import TaskData

__all__ = ["ModelSource", "load_model_for_task", "load_tokenizer", "resolve_model"]

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model")


@dataclass
class ModelSource:
    """A resolved model: the name or folder to load from, the GGUF file inside it (if any), and its config."""

    name_or_path: str
    config: Any
    gguf_file: str | None = None
    is_local: bool = False
    load_kwargs: dict[str, Any] = field(default_factory=dict)  # what from_pretrained needs besides the path

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """What `from_pretrained` needs for the weights: a GGUF checkpoint is dequantized, and kept in fp32."""
        if not self.gguf_file:
            return dict(self.load_kwargs)
        import torch

        return {**self.load_kwargs, "dtype": torch.float32}

    @property
    def display_name(self) -> str:
        """How to name the model to a stranger: a Hub id as it is, a local folder by its name only."""
        return Path(self.name_or_path).name if self.is_local else self.name_or_path


def _split_gguf(name_or_path: str, gguf_file: str | None) -> tuple[str, str | None]:
    """`dir/model.gguf` means `dir` with `gguf_file="model.gguf"`, as transformers loads it."""
    path = Path(name_or_path).expanduser()
    if gguf_file is None and path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise PipelineInputError(f"GGUF file {name_or_path} does not exist")
        return str(path.parent), path.name
    return name_or_path, gguf_file


def _check_local_folder(path: Path, gguf_file: str | None, need_tokenizer: bool) -> None:
    if not path.is_dir():
        raise PipelineInputError(f"{path} is not a model directory")
    if gguf_file is not None:
        if not (path / gguf_file).is_file():
            raise PipelineInputError(f"GGUF file {path / gguf_file} does not exist")
        return  # config, weights and tokenizer all live in the GGUF file
    if not (path / "config.json").is_file():
        gguf = sorted(p.name for p in path.glob("*.gguf"))
        hint = f"; for a GGUF checkpoint pass --gguf-file {gguf[0]}" if gguf else ""
        raise PipelineInputError(f"{path} is not a model directory (no config.json){hint}")
    check_weight_files(path, {})  # the weights exist and are complete (safetensors headers only)
    if need_tokenizer and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise PipelineInputError(
            f"{path} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); save the tokenizer there "
            "(tokenizer.save_pretrained) or every word would read as [UNK]"
        )


def resolve_model(
    name_or_path: str | os.PathLike,
    *,
    gguf_file: str | None = None,
    need_tokenizer: bool = True,
    causal_lm: bool = False,
) -> ModelSource:
    """Check that `name_or_path` can be loaded and pruned, and read its config (no weights are loaded).

    `causal_lm=True` also requires a left-to-right decoder (GPT-2, the Llama family), for perplexity.
    """
    name_or_path, gguf_file = _split_gguf(str(name_or_path), gguf_file)
    path = Path(name_or_path).expanduser()
    # A Hub id is "name" or "org/name"; anything else that does not exist locally is a mistyped path.
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local and not path.exists():
        raise PipelineInputError(f"model path {name_or_path} does not exist")
    is_local = path.exists()
    if is_local:
        _check_local_folder(path, gguf_file, need_tokenizer)
        name_or_path = str(path)
    load_kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        config = load_config(name_or_path, **load_kwargs)  # a config transformers refuses: one PruningError line
    except PruningError as error:
        raise PipelineInputError(f"cannot load model {name_or_path!r}: {first_line(error)}") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        where = "could not be read" if is_local else "is not a local model directory, and the Hub lookup failed"
        raise PipelineInputError(f"cannot load model {name_or_path!r}: it {where} ({first_line(error)})") from None
    try:
        adapter = get_adapter(config)
    except PruningError as error:
        raise PipelineInputError(first_line(error)) from None
    if causal_lm and not adapter.causal_lm:
        raise PipelineInputError(
            f"{name_or_path} is a {config.model_type} encoder, not a left-to-right language model: its perplexity "
            "means nothing; use a GLUE or custom task, or a decoder (GPT-2, Llama family) for task 'lm'"
        )
    return ModelSource(name_or_path, config, gguf_file, is_local, load_kwargs)


def config_has_head(config: Any, data: TaskData) -> bool:
    """Whether the checkpoint's config declares a trained classifier for this task (no weights are read)."""
    if data.is_lm:
        return True
    architectures = getattr(config, "architectures", None) or []
    return any(name.endswith("ForSequenceClassification") for name in architectures) and config.num_labels == data.spec.num_labels


def load_tokenizer(source: ModelSource) -> Any:
    """The model's tokenizer, refused when it is the empty stand-in transformers builds from nothing."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source.name_or_path, **source.load_kwargs)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise PipelineInputError(f"cannot load a tokenizer from {source.name_or_path!r} ({first_line(error)})") from None
    vocab_size = getattr(source.config, "vocab_size", None) or 0
    if len(tokenizer) < min(100, vocab_size // 2):
        raise PipelineInputError(
            f"the tokenizer of {source.name_or_path} has {len(tokenizer)} tokens for a model with {vocab_size}; "
            "its tokenizer files are missing or broken"
        )
    return tokenizer


def load_model(source: ModelSource) -> tuple[nn.Module, Any]:
    """`(model, tokenizer)` for jobs without a task; `tokenizer` is None for a checkpoint that has none (it is
    still a checkpoint: the card then says how to load it)."""
    model = from_pretrained(source.name_or_path, config=copy.deepcopy(source.config), **source.model_kwargs)
    try:
        return model, load_tokenizer(source)
    except PipelineInputError:
        return model, None


def load_model_for_task(
    model_name_or_path: str | ModelSource, data: TaskData, *, gguf_file: str | None = None, **kwargs
) -> tuple[nn.Module, Any, bool]:
    """Load `(model, tokenizer, has_trained_head)` for a task, pruned checkpoints included.

    A sequence-classification model gets `num_labels` and the task's label names; when the checkpoint has
    no classifier for them (a bare encoder such as `bert-base-uncased`, or another label count) a new head
    is initialised and `has_trained_head` is False: fine-tune before trusting any score or metric.
    `gguf_file` names a GGUF checkpoint inside the folder (`from_pretrained(dir, gguf_file=...)`).
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification


    source = model_name_or_path
    if not isinstance(source, ModelSource):
        source = resolve_model(source, gguf_file=gguf_file, causal_lm=data.is_lm)
    config = copy.deepcopy(source.config)
    tokenizer = load_tokenizer(source)
    kwargs = {**source.model_kwargs, **kwargs}
    if data.is_lm:
        model = from_pretrained(source.name_or_path, config=config, model_class=AutoModelForCausalLM, **kwargs)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return model, tokenizer, True

    spec = data.spec
    architectures = getattr(config, "architectures", None) or []
    had_head = any(name.endswith("ForSequenceClassification") for name in architectures)
    same_labels = had_head and config.num_labels == spec.num_labels
    if not same_labels:
        config.num_labels = spec.num_labels
    generic = all(str(label).startswith("LABEL_") for label in (config.id2label or {}).values())
    if spec.label_names and (not same_labels or generic):
        config.id2label = dict(enumerate(spec.label_names))
        config.label2id = {name: i for i, name in enumerate(spec.label_names)}
    if spec.is_regression:
        config.problem_type = "regression"
    model, info = from_pretrained(
        source.name_or_path,
        config=config,
        model_class=AutoModelForSequenceClassification,
        output_loading_info=True,
        ignore_mismatched_sizes=True,
        **kwargs,
    )
    new_weights = list(info.get("missing_keys", ())) + list(info.get("mismatched_keys", ()))
    return model, tokenizer, same_labels and not new_weights
