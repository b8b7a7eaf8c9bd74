"""Streamed surgery: apply a pruning plan to a checkpoint folder tensor by tensor, from its safetensors files to new
ones, without ever loading the model.

Nothing about how a family is cut lives here. The engine's own surgery runs on the checkpoint's model built on the
meta device, inside `tracing_slices`: it makes every check of the real call and writes the same config and record,
and it says, for each weight of the pruned model, which weight of the checkpoint it was cut from and by which
`index_select`s. Those cuts are then replayed on the stored tensors, one at a time, into output shards written one
at a time. What `save_pretrained` then does to a state dict (tied weights saved once, transformers' key
conversions reverted, the shard split and the index) is done by transformers' own functions on the meta model, so
the folder is the one `from_pretrained` + surgery + `save_pretrained` writes: same keys, shards, index and config,
every tensor bit for bit, in the dtype it is stored in.

Memory: one source tensor and one output shard (`max_shard_size`, as `save_pretrained`'s; its default keeps a
model of up to 50 GB in one shard: pass a smaller size to bound the memory).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers.core_model_loading import (
    revert_weight_conversion,
)
from transformers.modeling_utils import remove_tied_weights_from_state_dict
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from ..engine.apply_plan import apply_plan
from ..engine.transaction import Selection, SliceTrace, tracing_slices
from ..errors import PruningError, first_line
from ..io.output import check_output_dir, write_atomically
from ..io.skeleton import checkpoint_skeleton
from .checkpoint_files import StoredTensor, names_by_tensor, sources_by_name, stored_tensors

__all__ = ["DEFAULT_MAX_SHARD_SIZE", "prune_checkpoint"]

DEFAULT_MAX_SHARD_SIZE = "50GB"  # `save_pretrained`'s: the in-memory job writes the same shards
# What `tokenizer.save_pretrained` and `save_pretrained` write beside the weights, copied as they are
# (config.json and generation_config.json are written from the pruned model instead).
NON_WEIGHT_PATTERNS = (
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "chat_template.json",
)
@dataclass(frozen=True)
class _Cut:
    """One tensor of the output: the stored tensor it is cut from, and the `index_select`s that cut it."""

    source: StoredTensor
    selections: tuple[Selection, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        shape = list(self.source.shape)
        for dim, index in self.selections:
            shape[dim] = index.numel()
        return tuple(shape)


def prune_checkpoint(
    model_dir: str | Path,
    plan: Mapping[str, Any],
    output_dir: str | Path,
    *,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
) -> Path:
    """Write to `output_dir` the checkpoint in `model_dir` pruned by `plan`, one tensor at a time.

    `plan` is what `hfprune.planning.allocation.allocate_for_time` returns: `{"layers": [...], "heads": {layer:
    [...]}, "ffn": {layer: [...]}}` and optionally `"hidden": [...]`, in ORIGINAL indices (a checkpoint pruned before
    included), any key may be missing. The result equals `from_pretrained` + the engine's surgery + `save_pretrained`
    bit for bit; tokenizer files are copied. The plan and the checkpoint are checked (a one-line `PruningError`) and
    the whole output is planned before anything is written; the folder appears complete or not at all, and an
    existing `output_dir` is replaced only with `overwrite`. Returns `output_dir`.
    """
    model_dir = Path(model_dir).expanduser()
    check_output_dir(output_dir, overwrite, [model_dir])  # before any work; checked again when writing
    model, cuts, dtype = _dry_run(model_dir, plan)
    split = _shard_split(cuts, max_shard_size)
    _load_generation_config(model, model_dir)
    parameters = model.num_parameters()

    def write(folder: Path) -> None:
        _write_config(model, folder, dtype)
        _write_weights(folder, cuts, split, parameters)
        _copy_non_weight_files(model_dir, folder)

    write_atomically(output_dir, write, overwrite, inputs=[model_dir])
    return Path(output_dir).expanduser()


def _dry_run(model_dir: Path, plan: Mapping[str, Any]) -> tuple[nn.Module, dict[str, _Cut], torch.dtype]:
    """The pruned model on the meta device (config and record written), how to cut each tensor it saves from the
    checkpoint's, and the dtype `save_pretrained` would write into its config. Nothing is read but headers."""
    stored = stored_tensors(model_dir)
    model = checkpoint_skeleton(model_dir, check_weights=True)
    sources = sources_by_name(model, stored)
    origins = names_by_tensor(model)
    with tracing_slices() as trace:
        apply_plan(model, plan)
    state = _saved_state(model)
    cuts = {key: _cut_of(key, tensor, trace, origins, sources) for key, tensor in state.items()}
    dtype = _model_dtype(model, {id(tensor): cuts[key].source.dtype for key, tensor in state.items()})
    return model, cuts, dtype


def _shard_split(cuts: dict[str, _Cut], max_shard_size: int | str) -> Any:
    """The shards `save_pretrained` would write (huggingface_hub's split, on meta tensors of the output's shapes)."""
    shapes = {key: torch.empty(cut.shape, dtype=cut.source.dtype, device="meta") for key, cut in cuts.items()}
    try:
        return split_torch_state_dict_into_shards(
            shapes, filename_pattern=SAFE_WEIGHTS_NAME.replace(".safetensors", "{suffix}.safetensors"),
            max_shard_size=max_shard_size,
        )  # fmt: skip
    except ValueError as error:
        raise PruningError(f"max_shard_size {max_shard_size!r}: {first_line(error)}") from None


# ---- the pruned model --------------------------------------------------------------------------------------------
def _saved_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """`{saved key: meta tensor}` as `save_pretrained` saves `model`: keys it ignores on save dropped, tied weights
    saved once (under the name transformers keeps), its load-time renames reverted, in its order."""
    state = model.state_dict(keep_vars=True)
    for key in model._keys_to_ignore_on_save or ():
        state.pop(key, None)
    kept = remove_tied_weights_from_state_dict(dict(state), model)
    state = {key: state[key] for key in kept}  # it clones tensors that only seem to share memory (empty ones)
    tensors = {id(tensor) for tensor in state.values()}
    saved = revert_weight_conversion(model, state)
    changed = sorted(key for key, tensor in saved.items() if id(tensor) not in tensors)
    if changed:
        raise PruningError(f"cannot stream this model: saving converts its weight {changed[0]}, not only renames it")
    return saved


def _cut_of(
    key: str,
    tensor: torch.Tensor,
    trace: SliceTrace,
    origins: dict[int, tuple[torch.Tensor, list[str]]],
    sources: dict[str, StoredTensor],
) -> _Cut:
    """Where output tensor `key` comes from: the stored tensor of its origin and the selections surgery made."""
    made = trace.of(tensor)
    if made.origin is None:
        raise PruningError(
            f"cannot stream {key}: surgery computed new values for it (not a selection of a stored weight); prune "
            "this model in memory"
        )
    origin = origins.get(id(made.origin))
    if origin is None or origin[0] is not made.origin:
        raise PruningError(f"cannot stream {key}: surgery made it without a weight of the checkpoint to cut it from")
    source = next((sources[name] for name in origin[1] if name in sources), None)
    if source is None:
        raise PruningError(
            f"cannot stream {key}: the checkpoint holds no weight for it ({', '.join(origin[1])}), so loading it "
            "would initialise it at random"
        )
    cut = _Cut(source, made.selections)
    if cut.shape != tuple(tensor.shape):
        raise PruningError(
            f"cannot stream {key}: replaying the cut on the stored {source.key} {list(source.shape)} gives "
            f"{list(cut.shape)}, the pruned model has {list(tensor.shape)}"
        )
    return cut


def _model_dtype(model: nn.Module, stored: dict[int, torch.dtype]) -> torch.dtype:
    """`model.dtype` of the loaded model, which `save_pretrained` writes into the config: the dtype of its first
    floating-point parameter, as stored (`stored`: by parameter id; streamed tensors keep their stored dtype)."""
    floating = (stored.get(id(parameter)) for parameter in model.parameters() if parameter.is_floating_point())
    return next((dtype for dtype in floating if dtype is not None), torch.get_default_dtype())


def _load_generation_config(model: nn.Module, model_dir: Path) -> None:
    """The generation config `from_pretrained` gives the model (its file, or one made from config.json)."""
    if not model.can_generate():
        return
    model.adjust_generation_fn(
        generation_config=None, from_auto_class=False, from_pipeline=False, pretrained_model_name_or_path=str(model_dir),
        cache_dir=None, force_download=False, proxies=None, local_files_only=True, token=None, revision=None,
        subfolder="", trust_remote_code=False,
    )  # fmt: skip


# ---- writing -----------------------------------------------------------------------------------------------------
def _write_config(model: nn.Module, folder: Path, dtype: torch.dtype) -> None:
    """config.json (and generation_config.json) as `save_pretrained` writes them."""
    model.config.dtype = str(dtype).split(".")[1]
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(folder)
    if model.can_generate():
        model.generation_config.save_pretrained(folder)


def _write_weights(folder: Path, cuts: dict[str, _Cut], split: Any, parameters: int) -> None:
    """The shards `split` plans, one in memory at a time, and the index when there are several."""
    metadata = {"format": "pt"}
    for shard, keys in split.filename_to_tensors.items():
        tensors = {key: _replay(cuts[key]) for key in keys}
        save_file(tensors, str(folder / shard), metadata=metadata)
        del tensors
    if split.is_sharded:
        index = {"metadata": {"total_parameters": parameters, **split.metadata}, "weight_map": split.tensor_to_filename}
        (folder / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _replay(cut: _Cut) -> torch.Tensor:
    """The output tensor: the stored one, read alone, cut by the recorded selections. Its file is mapped only
    while it is read: pages of a mapping count as the process's memory until it is closed."""
    with safe_open(str(cut.source.file), framework="pt") as weights:
        tensor = weights.get_tensor(cut.source.key)
    for dim, index in cut.selections:
        tensor = tensor.index_select(dim, index)
    return tensor.contiguous()


def _non_weight_files(model_dir: Path) -> Iterator[Path]:
    seen: set[Path] = set()
    for pattern in NON_WEIGHT_PATTERNS:
        for path in sorted(model_dir.glob(pattern)):
            if path.is_file() and path not in seen:
                seen.add(path)
                yield path


def _copy_non_weight_files(model_dir: Path, folder: Path) -> None:
    """The tokenizer's files, byte for byte (the in-memory job saves the tokenizer it loaded from them)."""
    for path in _non_weight_files(model_dir):
        shutil.copyfile(path, folder / path.name)
