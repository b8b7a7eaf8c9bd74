"""What a checkpoint folder holds, read from its safetensors headers only: every stored tensor (`stored_tensors`),
and which weight of the model each one is (`sources_by_name`, with the key renames `from_pretrained` applies). The
streamed modules read weights through these, one tensor at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..errors import PruningError, first_line
from ..io.loading import safetensors_files
from ..io.renames import loaded_names

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip


@dataclass(frozen=True)
class StoredTensor:
    """One tensor of the checkpoint, from its safetensors header."""

    file: Path
    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype


def stored_tensors(model_dir: Path) -> dict[str, StoredTensor]:
    """Every tensor of the checkpoint's safetensors files, from their headers (no weight is read)."""
    if not model_dir.is_dir():
        raise PruningError(f"{model_dir} is not a checkpoint folder (streamed surgery reads a local folder)")
    files = safetensors_files(model_dir, {})
    if not files:
        raise PruningError(
            f"{model_dir} holds no safetensors weights; streamed surgery reads model.safetensors (or its shards): "
            "convert the checkpoint with save_pretrained first"
        )
    stored: dict[str, StoredTensor] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as weights:
                for key in weights.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
                    header = weights.get_slice(key)
                    stored[key] = StoredTensor(file, key, tuple(header.get_shape()), _dtype_of(header.get_dtype(), key))
        except (SafetensorError, OSError) as error:
            raise PruningError(f"{file} is truncated or corrupt ({first_line(error)})") from None
    return stored


def _dtype_of(name: str, key: str) -> torch.dtype:
    if name not in DTYPES:
        raise PruningError(f"cannot stream {key}: its safetensors dtype {name} is not one hfprune copies")
    return DTYPES[name]


def sources_by_name(model: nn.Module, stored: dict[str, StoredTensor]) -> dict[str, StoredTensor]:
    """`{state-dict name in the model: stored tensor}`, with the key renames `from_pretrained` applies (legacy
    names, a base-model prefix added or dropped: `hfprune.io.renames.loaded_names`). Stored keys of no weight of the
    model are left out (the skeleton's weight check has refused any the model needs).

    The renames that matched are kept on the model as `from_pretrained` keeps them, so that saving reverts them as
    `save_pretrained` would. A checkpoint whose weights are converted on load (fused, split or stacked: not a plain
    rename) is refused: its tensors are not the model's.
    """
    sources: dict[str, StoredTensor] = {}
    for key, (name, converted) in loaded_names(model, stored).items():
        if converted is not None:
            raise PruningError(
                f"cannot stream {stored[key].file.parent}: its weight {key} is converted on load ({converted}), "
                "not only renamed; prune it in memory (hfprune.from_pretrained, then surgery)"
            )
        sources.setdefault(name, stored[key])
    return sources


def names_by_tensor(model: nn.Module) -> dict[int, tuple[torch.Tensor, list[str]]]:
    """`{id: (tensor, its state-dict names)}` of every parameter and buffer before surgery (a tied weight has
    several names, of which the checkpoint holds one)."""
    names: dict[int, tuple[torch.Tensor, list[str]]] = {}
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    for name, tensor in named:
        names.setdefault(id(tensor), (tensor, []))[1].append(name)
    return names


__all__ = ["DTYPES", "StoredTensor", "names_by_tensor", "sources_by_name", "stored_tensors"]
