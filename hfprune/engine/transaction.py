"""All-or-nothing surgery: a call that fails half-way puts back every module, parameter and config field.

Keeping the old weights around would double the memory of a large model during surgery. Instead a
sliced parameter keeps only the part that was cut off (kept + cut = the original size), and a failed call
rebuilds the original tensor bit for bit from the two. Module attributes, submodules and the config are
restored from shallow snapshots (surgery replaces objects, it never edits tensors or lists in place).

`tracing_slices` turns surgery into a dry run on a model on the meta device: every Parameter that surgery makes
remembers the parameter it was cut from and the `index_select`s that cut it, so that the same cut can be replayed
on the weights of a checkpoint on disk, one tensor at a time (`hfprune.streaming.surgery`).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
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

Selection = tuple[int, torch.Tensor]  # (dim, positions kept along it, on the CPU): one `index_select`


@dataclass(frozen=True)
class Trace:
    """Where a Parameter came from: `origin` (the parameter as it was before surgery) cut by `selections`, in
    order. `origin` None: the values are not a selection of one parameter (`replace_parameter` with new values)."""

    origin: torch.Tensor | None
    selections: tuple[Selection, ...] = ()


class SliceTrace:
    """The `Trace` of every Parameter surgery made inside one `tracing_slices` block."""

    def __init__(self) -> None:
        self._made: dict[int, tuple[torch.Tensor, Trace]] = {}  # id -> (the parameter, kept alive; its trace)

    def of(self, tensor: torch.Tensor) -> Trace:
        """How `tensor` was made; one that surgery did not make is its own origin."""
        made = self._made.get(id(tensor))
        return made[1] if made is not None and made[0] is tensor else Trace(tensor)

    def record(self, new: torch.Tensor, old: torch.Tensor | None, selection: Selection | None = None) -> None:
        """`new` is `old` (`None`: no parameter's values), further cut by `selection` if given."""
        trace = self.of(old) if old is not None else Trace(None)
        if trace.origin is not None and selection is not None:
            trace = Trace(trace.origin, (*trace.selections, selection))
        self._made[id(new)] = (new, trace)


_TRACE: ContextVar[SliceTrace | None] = ContextVar("hfprune_slice_trace", default=None)


@contextmanager
def tracing_slices() -> Iterator[SliceTrace]:
    """Record how surgery inside the block cuts each parameter, and allow it on the meta device.

    Run on a model built on the meta device, surgery then costs no memory and still makes every check, config
    field and shape of the real call; the returned `SliceTrace` says how to cut each weight of the result from a
    weight of the model before. Outside the block surgery behaves as always (meta weights are refused there: a
    model offloaded to meta has no values to cut).
    """
    trace = SliceTrace()
    token = _TRACE.set(trace)
    try:
        yield trace
    finally:
        _TRACE.reset(token)


def is_tracing() -> bool:
    """Whether surgery runs inside `tracing_slices` (a dry run; meta weights allowed)."""
    return _TRACE.get() is not None


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
    new = nn.Parameter(value.contiguous(), requires_grad=old.requires_grad)
    trace = _TRACE.get()
    if trace is not None:
        trace.record(new, None)  # new values: not a selection that can be replayed
    setattr(module, name, new)


def copied_parameter(parameter: nn.Parameter) -> nn.Parameter:
    """A new Parameter holding a copy of `parameter` (what a stand-in keeps of a removed block: its bias)."""
    copy = nn.Parameter(parameter.detach().clone(), requires_grad=parameter.requires_grad)
    trace = _TRACE.get()
    if trace is not None:
        trace.record(copy, parameter)
    return copy


def slice_parameter(module: nn.Module, name: str, index: torch.Tensor, dim: int) -> None:
    """Keep only the entries `index` (unique positions) of `module.<name>` along `dim`.

    Inside `all_or_nothing` the cut-off entries are kept until the block ends, instead of the whole old tensor.
    """
    old = getattr(module, name)
    # positions are kept on the parameter's device, on the CPU for a meta one (a dry run still checks them)
    index = index.to(device="cpu" if old.is_meta else old.device, dtype=torch.long)
    kept = old.detach().index_select(dim, index.to(old.device))
    journal = _ACTIVE.get()
    if journal is not None:
        remaining = torch.ones(old.shape[dim], dtype=torch.bool, device=index.device)
        remaining[index] = False
        if int(remaining.sum()) != old.shape[dim] - index.numel():
            raise ValueError(f"slice_parameter needs unique positions, got {index.tolist()}")
        removed = remaining.nonzero().squeeze(1)
        cut = old.detach().index_select(dim, removed.to(old.device))
        journal.entries.append(
            _Slice(module, name, weakref.ref(old), old.shape, dim, index, removed, cut, old.requires_grad)
        )
    new = nn.Parameter(kept, requires_grad=old.requires_grad)
    trace = _TRACE.get()
    if trace is not None:
        trace.record(new, old, (dim, index.cpu().clone()))
    setattr(module, name, new)
