"""All-or-nothing surgery: a call that fails half-way puts back every module, parameter and config field.

Keeping the old weights around would double the memory of a large model during surgery. Instead a
sliced parameter keeps only the part that was cut off (kept + cut = the original size), and a failed call
rebuilds the original tensor bit for bit from the two. Module attributes, submodules and the config are
restored from shallow snapshots (surgery replaces objects, it never edits tensors or lists in place).
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class _Slice:
    """How to rebuild `module.<name>` as it was before one slice: the cut-off part and where it goes."""

    module: nn.Module
    name: str
    original: weakref.ref  # the Parameter before the slice; still alive only if someone else holds it
    shape: torch.Size
    dim: int
    kept: torch.Tensor
    removed: torch.Tensor
    cut: torch.Tensor
    requires_grad: bool


@dataclass
class _Replacement:
    module: nn.Module
    name: str
    old: torch.Tensor | None


class _Journal:
    def __init__(self, model: nn.Module):
        self.entries: list[_Slice | _Replacement] = []
        self.modules = [
            (module, dict(vars(module)), dict(module._modules), dict(module._buffers)) for module in model.modules()
        ]
        self.config = getattr(model, "config", None)
        self.config_state = dict(vars(self.config)) if self.config is not None else None

    def rollback(self) -> None:
        for entry in reversed(self.entries):
            entry.module._parameters[entry.name] = _previous(entry)
        for module, state, modules, buffers in self.modules:
            vars(module).clear()
            vars(module).update(state)
            module._modules.clear()
            module._modules.update(modules)
            module._buffers.clear()
            module._buffers.update(buffers)
        if self.config is not None:
            vars(self.config).clear()
            vars(self.config).update(self.config_state)


def _previous(entry: _Slice | _Replacement):
    if isinstance(entry, _Replacement):
        return entry.old
    original = entry.original()
    if original is not None:
        return original  # never written to: surgery builds new tensors
    current = entry.module._parameters[entry.name].detach()
    full = current.new_empty(entry.shape)
    full.index_copy_(entry.dim, entry.kept.to(current.device), current)
    full.index_copy_(entry.dim, entry.removed.to(current.device), entry.cut)
    return nn.Parameter(full, requires_grad=entry.requires_grad)


_ACTIVE: ContextVar[_Journal | None] = ContextVar("hfprune_journal", default=None)


@contextmanager
def all_or_nothing(model: nn.Module):
    """Undo every change surgery makes to `model` inside the block if the block raises (also on Ctrl-C)."""
    if _ACTIVE.get() is not None:  # nested: the outer block undoes everything
        yield
        return
    journal = _Journal(model)
    token = _ACTIVE.set(journal)
    try:
        yield
    except BaseException:
        journal.rollback()
        raise
    finally:
        _ACTIVE.reset(token)


def replace_parameter(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Swap a parameter for a new tensor, keeping `requires_grad`; undone if the surrounding call fails."""
    old = getattr(module, name)
    journal = _ACTIVE.get()
    if journal is not None:
        journal.entries.append(_Replacement(module, name, old))
    setattr(module, name, nn.Parameter(value.contiguous(), requires_grad=old.requires_grad))


def slice_parameter(module: nn.Module, name: str, index: torch.Tensor, dim: int) -> None:
    """Keep only the entries `index` (unique positions) of `module.<name>` along `dim`.

    Inside `all_or_nothing` the cut-off entries are kept until the block ends, instead of the whole old tensor.
    """
    old = getattr(module, name)
    index = index.to(device=old.device, dtype=torch.long)
    kept = old.detach().index_select(dim, index)
    journal = _ACTIVE.get()
    if journal is not None:
        remaining = torch.ones(old.shape[dim], dtype=torch.bool, device=old.device)
        remaining[index] = False
        if int(remaining.sum()) != old.shape[dim] - index.numel():
            raise ValueError(f"slice_parameter needs unique positions, got {index.tolist()}")
        removed = remaining.nonzero().squeeze(1)
        cut = old.detach().index_select(dim, removed)
        journal.entries.append(
            _Slice(module, name, weakref.ref(old), old.shape, dim, index, removed, cut, old.requires_grad)
        )
    setattr(module, name, nn.Parameter(kept, requires_grad=old.requires_grad))
