"""`stream_reconstruct`: `hfprune.reconstruct` for checkpoints on disk, one pruned and one dense layer in memory.

The pruned checkpoint (what `prune_checkpoint` wrote) and the dense one it came from are opened layer by layer
(`StreamedCheckpoint`). The calibration batches run through both side by side; before each pruned layer runs, its
attention and MLP output projections are refitted to the dense model's residual stream after the same original
layer (reconstruction's "stream" target, `refit_block`: the same fit as in memory), the dense stream having run
through the layers the pruned model dropped. Each refitted projection goes to a scratch file; at the end every
shard of the pruned checkpoint that holds one is written again with it, one shard at a time, so the folder stays
an ordinary checkpoint of the same shapes.

Memory: one pruned and one dense layer, the outer weights twice, and the calibration batches' hidden states of
both models (one layer's worth, in memory while a layer is refitted).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..engine.layer_inputs import LayerInput, layer_output
from ..errors import PruningError
from ..progress import Progress
from ..reconstruction.biases import lacks_output_biases
from ..reconstruction.sequential import (
    DEFAULT_DAMPING,
    ReconstructionReport,
    check_reconstructable,
    has_block,
    refit_block,
    warn_if_few_tokens,
)
from .layers import DEFAULT_MAX_MEMORY, HiddenStates, StreamedCheckpoint


def stream_reconstruct(
    pruned_dir: str | Path,
    dense_dir: str | Path,
    dataloader: Iterable[Mapping[str, Any]],
    *,
    method: str = "least_squares",
    damping: float = DEFAULT_DAMPING,
    max_batches: int | None = None,
    device: str | torch.device = "cpu",
    max_memory: int = DEFAULT_MAX_MEMORY,
    progress: Progress | None = None,
) -> ReconstructionReport:
    """Refit the kept units of the checkpoint in `pruned_dir` (rewritten in place) so that each block matches the
    dense checkpoint in `dense_dir` on `dataloader` (training data only), as `hfprune.reconstruct(pruned, dense,
    dataloader, method=method, target="stream")` does in memory; returns its report."""
    start = time.perf_counter()
    data = list(dataloader)[:max_batches]
    with StreamedCheckpoint(pruned_dir, device=device, max_memory=max_memory) as pruned, \
            StreamedCheckpoint(dense_dir, device=device, max_memory=max_memory) as dense:  # fmt: skip
        adapter = check_reconstructable(pruned.model, dense.model, method, damping, "stream")
        if method == "bias" and lacks_output_biases(pruned.model, adapter):
            raise PruningError("streamed bias compensation needs a checkpoint whose output projections have biases; it "
                               "cannot add them yet: reconstruct in memory (hfprune.reconstruct), or use another method")  # fmt: skip
        report = ReconstructionReport(method=method, damping=damping, target="stream")
        batches, hidden = pruned.first_inputs(data)
        dense_hidden = _copy(hidden, dense.hidden_states())  # the same embeddings: the same first inputs
        report.tokens = sum(batch.with_hidden(hidden[number]).tokens for number, batch in enumerate(batches))
        warn_if_few_tokens(pruned.model, adapter, report.tokens)
        dense_position = {original: position for position, original in enumerate(dense.record["kept_layers"])}
        dense_next, refitted = 0, {}
        kept_layers = pruned.record["kept_layers"]
        for position, original in enumerate(kept_layers):
            while dense_next < dense_position[original]:  # through the layers the pruned model dropped
                dense_hidden = _advance(dense, dense_next, batches, dense_hidden)
                dense_next += 1
            with pruned.layer(position) as layer, dense.layer(dense_next) as dense_layer, torch.no_grad():
                cached = _inputs(batches, hidden)
                dense_cached = _inputs(batches, dense_hidden)
                for block in ("attention", "mlp"):
                    if has_block(adapter, layer, block):
                        fit = refit_block(pruned.model, adapter, layer, dense_layer, block, cached, dense_cached, original, method, damping)
                        report.blocks.append(fit)
                        path = adapter.output if block == "attention" else adapter.ffn_output
                        refitted.update(_projection_tensors(pruned, position, path, layer))
                hidden = _outputs(pruned, layer, cached, hidden)
                dense_hidden = _outputs(dense, dense_layer, dense_cached, dense_hidden)
            dense_next += 1
            if progress is not None:
                progress("reconstruct", position + 1, len(kept_layers))
        hidden.clear()
        dense_hidden.clear()
        _rewrite_shards(pruned, refitted)
    report.seconds = time.perf_counter() - start
    return report


def _inputs(batches: list[LayerInput], hidden: HiddenStates) -> list[LayerInput]:
    return [batch.with_hidden(hidden[number]) for number, batch in enumerate(batches)]


def _copy(source: HiddenStates, target: HiddenStates) -> HiddenStates:
    for tensor in source:
        target.append(tensor)
    return target


def _outputs(checkpoint: StreamedCheckpoint, layer, cached: list[LayerInput], previous: HiddenStates) -> HiddenStates:
    """Every batch's output of `layer` (already loaded), in a new store; the previous one is cleared."""
    outputs = checkpoint.hidden_states()
    for entry in cached:
        outputs.append(layer_output(layer, entry))
    previous.clear()
    return outputs


def _advance(checkpoint: StreamedCheckpoint, position: int, batches: list[LayerInput], hidden: HiddenStates) -> HiddenStates:
    with checkpoint.layer(position) as layer, torch.no_grad():
        return _outputs(checkpoint, layer, _inputs(batches, hidden), hidden)


def _projection_tensors(checkpoint: StreamedCheckpoint, position: int, path: str, layer) -> dict[str, tuple[Path, Path]]:
    """`{stored key: (its shard, a scratch file holding the refitted tensor)}` for one refitted projection."""
    found = {}
    projection = layer.get_submodule(path)
    for name, parameter in projection.named_parameters():
        source = checkpoint.source_of(f"{checkpoint.layer_prefix(position)}{path}.{name}")
        handle, scratch = tempfile.mkstemp(suffix=".safetensors", dir=checkpoint.scratch)
        os.close(handle)
        save_file({"tensor": parameter.detach().to(source.dtype).cpu().contiguous()}, scratch)
        found[source.key] = (source.file, Path(scratch))
    return found


def _rewrite_shards(checkpoint: StreamedCheckpoint, refitted: dict[str, tuple[Path, Path]]) -> None:
    """Write every shard that holds a refitted tensor again, with it (one shard in memory at a time; each shard is
    replaced by a rename, so a shard on disk is always whole)."""
    for shard in sorted({shard for shard, _ in refitted.values()}):
        with safe_open(str(shard), framework="pt") as weights:
            metadata = weights.metadata()
        tensors = load_file(shard)
        for key, (holder, scratch) in refitted.items():
            if holder == shard:
                tensors[key] = load_file(scratch)["tensor"]
        staging = shard.with_name(f".{shard.name}.tmp-{os.getpid()}")
        save_file(tensors, staging, metadata=metadata)
        del tensors
        staging.replace(shard)


__all__ = ["stream_reconstruct"]
