"""A checkpoint folder opened layer by layer: its model with every weight on the meta device, the outer weights
(embeddings, final norm, head) read once, and each layer's weights read from the safetensors files only while
that layer runs, then dropped again. The calibration batches flow through the layers one layer at a time, as
SparseGPT and llm-compressor's sequential pipeline run them; their hidden states between two layers stay in
memory up to a budget and go to disk beyond it (`HiddenStates`).

So the memory a pass needs is one layer's weights, the outer weights and the hidden states of the calibration
batches, whatever the number of layers. Everything runs through the model's own modules (the same code as a
whole forward pass), so what is computed on the way matches the in-memory model to float rounding.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from ..engine.arch import get_adapter
from ..engine.layer_inputs import LayerInput, first_layer_inputs, layer_output
from ..engine.record import get_record
from ..errors import PruningError
from ..io.skeleton import checkpoint_skeleton
from ..progress import Progress
from .checkpoint_files import StoredTensor, names_by_tensor, sources_by_name, stored_tensors

DEFAULT_MAX_MEMORY = 2**30
"""Bytes of hidden states kept in memory between two layers (per copy); the rest is written to disk."""


class HiddenStates:
    """The calibration batches' hidden states between two layers: in memory up to `max_bytes`, then on disk
    (one file a batch in `directory`), read back one batch at a time."""

    def __init__(self, directory: Path, max_bytes: int = DEFAULT_MAX_MEMORY):
        self.directory, self.max_bytes = directory, max_bytes
        self._items: list[torch.Tensor | Path] = []
        self.bytes_in_memory = 0

    def append(self, hidden: torch.Tensor) -> None:
        size = hidden.numel() * hidden.element_size()
        if self.bytes_in_memory + size <= self.max_bytes:
            self._items.append(hidden)
            self.bytes_in_memory += size
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{len(self._items)}.pt"
        torch.save(hidden.cpu(), path)
        self._items.append(path)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, number: int) -> torch.Tensor:
        item = self._items[number]
        return torch.load(item, weights_only=True) if isinstance(item, Path) else item

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self[number] for number in range(len(self)))

    def clear(self) -> None:
        self._items.clear()
        self.bytes_in_memory = 0
        shutil.rmtree(self.directory, ignore_errors=True)


class StreamedCheckpoint:
    """A local safetensors checkpoint (pruned by hfprune or not) whose layers are read one at a time.

    `model` has the checkpoint's structure with its layer weights on the meta device; buffers (rotary
    frequencies, position ids) are built as `from_pretrained` builds them, in the weights' dtype: `dtype` (as
    `from_pretrained(..., dtype=)` casts floating-point weights on load), else the stored one. Use as a context
    manager, or call `close()`: it owns the scratch folder of spilled hidden states.
    """

    def __init__(
        self,
        checkpoint_dir: str | Path,
        *,
        device: str | torch.device = "cpu",
        max_memory: int = DEFAULT_MAX_MEMORY,
        dtype: torch.dtype | None = None,
    ):
        self.directory = Path(checkpoint_dir)
        stored = stored_tensors(self.directory)
        stored_dtype = next((tensor.dtype for tensor in stored.values() if tensor.dtype.is_floating_point), torch.float32)
        self.dtype = dtype or stored_dtype
        self.model = checkpoint_skeleton(self.directory, check_weights=True, buffers=True, dtype=self.dtype).eval()
        self.adapter, self.record = get_adapter(self.model), get_record(self.model)
        layers = self.layers
        self._layers_prefix = next(name for name, module in self.model.named_modules() if module is layers) + "."
        self.device, self.max_memory = torch.device(device), max_memory
        self._sources = sources_by_name(self.model, stored)
        self._tied = {name: names for _, names in names_by_tensor(self.model).values() for name in names}
        self.scratch = Path(tempfile.mkdtemp(prefix="hfprune-stream-"))
        self._generation = 0
        _move_buffers(self.model, self.device)
        self._load(self.model, self._outer_names())

    def __enter__(self) -> StreamedCheckpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)

    @property
    def layers(self) -> nn.ModuleList:
        return self.adapter.get_layers(self.model)

    def layer_prefix(self, position: int) -> str:
        """The state-dict prefix of the layer at `position` (`model.layers.3.`)."""
        return f"{self._layers_prefix}{position}."

    def _outer_names(self) -> list[str]:
        """Every parameter name outside the layers (tied ones under each of their names)."""
        names = self.model.named_parameters(remove_duplicate=False)
        return [name for name, _ in names if not name.startswith(self._layers_prefix)]

    def _load(self, root: nn.Module, names: list[str], prefix: str = "") -> None:
        """Read the parameters `names` of `root` (names relative to it; `prefix` makes them the model's) from the
        checkpoint onto `self.device`; the holders of one tied parameter get one tensor, stored under any of them."""
        read: dict[str, nn.Parameter] = {}
        with contextlib.ExitStack() as stack:
            handles: dict[Path, Any] = {}
            for name in names:
                source = self.source_of(prefix + name)
                if source.key not in read:
                    if source.file not in handles:
                        handles[source.file] = stack.enter_context(safe_open(str(source.file), framework="pt"))
                    read[source.key] = nn.Parameter(self._cast(handles[source.file].get_tensor(source.key)), requires_grad=False)
                _set_parameter(root, name, read[source.key])

    def read(self, name: str) -> torch.Tensor:
        """The model's parameter `name` read on its own, as `layer` would read it, and kept nowhere here: for a
        small tensor needed before its layer runs."""
        source = self.source_of(name)
        with safe_open(str(source.file), framework="pt") as handle:
            return self._cast(handle.get_tensor(source.key))

    def _cast(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device, self.dtype) if tensor.is_floating_point() else tensor.to(self.device)

    def source_of(self, name: str) -> StoredTensor:
        """The stored tensor of the model's parameter `name` (a tied one under whichever name it is stored)."""
        source = next((self._sources[alias] for alias in self._tied.get(name, [name]) if alias in self._sources), None)
        if source is None:
            raise PruningError(f"{self.directory} has no weight for {name}")
        return source

    @contextlib.contextmanager
    def layer(self, position: int) -> Iterator[nn.Module]:
        """The layer at `position` with its weights read in; back on the meta device afterwards."""
        layer = self.layers[position]
        names = [name for name, _ in layer.named_parameters(remove_duplicate=False)]
        self._load(layer, names, self.layer_prefix(position))
        try:
            yield layer
        finally:
            for name, parameter in list(layer.named_parameters(remove_duplicate=False)):
                _set_parameter(layer, name, nn.Parameter(torch.empty_like(parameter, device="meta"), requires_grad=False))

    def hidden_states(self) -> HiddenStates:
        """An empty store for one copy of the calibration batches' hidden states."""
        self._generation += 1
        return HiddenStates(self.scratch / str(self._generation), self.max_memory)

    def first_inputs(self, dataloader: Iterable[Mapping[str, Any]], max_batches: int | None = None) -> tuple[list[LayerInput], HiddenStates]:
        """The calibration batches as the first layer receives them: their other inputs (masks, positions), and
        their hidden states in a `HiddenStates` store (the batches keep an empty stand-in)."""
        with torch.no_grad():
            entries = first_layer_inputs(self.model, dataloader, max_batches, device=self.device)
        hidden = self.hidden_states()
        batches = []
        for entry in entries:
            hidden.append(entry.hidden)
            batches.append(entry.with_hidden(torch.empty(0)))
        return batches, hidden

    def run_layers(self, batches: list[LayerInput], hidden: HiddenStates, progress: Progress | None = None) -> HiddenStates:
        """Run every layer over every batch, layer after layer; returns the last layer's outputs (each layer's
        inputs, `hidden` included, are dropped once it has run). `progress("layers", layers done, layers)`."""
        with torch.no_grad():
            for position in range(len(self.layers)):
                with self.layer(position) as layer:
                    outputs = self.hidden_states()
                    for number, batch in enumerate(batches):
                        outputs.append(layer_output(layer, batch.with_hidden(hidden[number])))
                hidden.clear()
                hidden = outputs
                if progress is not None:
                    progress("layers", position + 1, len(self.layers))
        return hidden

    def finish(self, hidden: HiddenStates, dataloader: Iterable[Mapping[str, Any]], max_batches: int | None = None) -> Iterator[Any]:
        """The model's outputs (logits, loss with labels) for each batch of `dataloader`, given the last layer's
        hidden states: the model runs once more with its layers replaced by one that hands those back, so the
        final norm, the head and the loss are the model's own."""
        layers = self.layers
        replay = _Replay(layers[-1])
        self.adapter.set_layers(self.model, nn.ModuleList([replay]))
        try:
            with torch.no_grad():
                for number, batch in enumerate(dataloader):
                    if max_batches is not None and number >= max_batches:
                        break
                    replay.output = hidden[number]
                    inputs = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items() if k != "idx"}
                    yield self.model(**inputs, **({"use_cache": False} if hasattr(self.model.config, "use_cache") else {}))
        finally:
            self.adapter.set_layers(self.model, layers)


class _Replay(nn.Module):
    """Stands in for the whole layer stack: returns the hidden states set on it, whatever it is given."""

    def __init__(self, last_layer: nn.Module):
        super().__init__()
        self.output: torch.Tensor | None = None
        # what a model's loop may read from a layer (its attention type for the mask it passes)
        self.attention_type = getattr(last_layer, "attention_type", None)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.output


def _move_buffers(model: nn.Module, device: torch.device) -> None:
    for module in model.modules():
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.device != device:
                module._buffers[name] = buffer.to(device)


def _set_parameter(root: nn.Module, name: str, parameter: nn.Parameter) -> None:
    module_path, _, leaf = name.rpartition(".")
    module = root.get_submodule(module_path) if module_path else root
    module._parameters[leaf] = parameter


__all__ = ["DEFAULT_MAX_MEMORY", "HiddenStates", "StreamedCheckpoint"]
