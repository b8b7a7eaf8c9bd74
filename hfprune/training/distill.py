"""The distillation terms `PruningTrainer` adds to the task loss.

- On the logits (`distillation_alpha > 0`): the tempered KL from the teacher's predictions.
- On every layer (`distillation_layer_weight > 0`, CoFi's layer-wise distillation, Xia et al. 2022): each kept
  layer's output is pulled towards the teacher's output of the same ORIGINAL layer, on the residual channels the
  student kept. A pruned model knows which original layer and channels it keeps (its record), so the matching is
  exact and needs no learned projection.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.arch import get_adapter
from ..engine.record import get_record, kept_hidden, original_sizes
from ..errors import PruningError


def teacher_inputs(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The batch as the teacher sees it: without labels, so it computes no loss of its own."""
    return {key: value for key, value in inputs.items() if key not in ("labels", "num_items_in_batch")}


def logit_distillation_loss(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, attention_mask: torch.Tensor | None, temperature: float
) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over examples (or real tokens).

    For token-level logits (causal LMs), padding positions of `attention_mask` are left out of the mean.
    """
    teacher_log_probs = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    kl = (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(dim=-1)
    if kl.dim() == 2 and attention_mask is not None and attention_mask.shape == kl.shape:
        kl = (kl * attention_mask).sum() / attention_mask.sum().clamp(min=1)
    else:
        kl = kl.mean()
    return temperature**2 * kl


@contextmanager
def layer_outputs(model: nn.Module):
    """Collect, during the forwards inside the block, the hidden states each layer of `model` returns.

    Yields a dict {current layer position: output hidden states}; a layer run again (e.g. by a second forward)
    overwrites its entry.
    """
    captured: dict[int, torch.Tensor] = {}

    def hook_for(position: int):
        def hook(module, args, output):
            captured[position] = output[0] if isinstance(output, (tuple, list)) else output

        return hook

    layers = get_adapter(model).get_layers(model)
    handles = [layer.register_forward_hook(hook_for(position)) for position, layer in enumerate(layers)]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def layer_pairs(student: nn.Module, teacher: nn.Module) -> tuple[list[tuple[int, int]], torch.Tensor | None]:
    """Which teacher layer each student layer is distilled from, and the teacher channels the student kept.

    Returns [(student position, teacher position)] for every student layer whose original layer the teacher still
    has, and the positions in the teacher's residual stream of the student's channels (None: the same channels).
    """
    student_record, teacher_record = get_record(student), get_record(teacher)
    if original_sizes(student_record, student) != original_sizes(teacher_record, teacher):
        raise PruningError(
            "distillation_layer_weight matches layers by their original index: the teacher must have the student's "
            "original shape (the model before pruning, or a pruned copy of it)"
        )
    teacher_position = {layer: position for position, layer in enumerate(teacher_record["kept_layers"])}
    pairs = [
        (position, teacher_position[layer])
        for position, layer in enumerate(student_record["kept_layers"])
        if layer in teacher_position
    ]
    student_channels = kept_hidden(student_record, student.config)
    teacher_channels = kept_hidden(teacher_record, teacher.config)
    if student_channels == teacher_channels:
        return pairs, None
    channel_position = {channel: position for position, channel in enumerate(teacher_channels)}
    missing = [channel for channel in student_channels if channel not in channel_position]
    if missing:
        raise PruningError(
            f"distillation_layer_weight: the student keeps {len(missing)} hidden channels the teacher no longer has"
        )
    return pairs, torch.tensor([channel_position[channel] for channel in student_channels])


def layer_distillation_loss(
    student_states: Mapping[int, torch.Tensor],
    teacher_states: Mapping[int, torch.Tensor],
    pairs: list[tuple[int, int]],
    channels: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
) -> torch.Tensor:
    """Mean over the layer pairs of ||student - teacher||^2 / ||teacher||^2 over the real tokens.

    Relative to the teacher's own size, so the term has the same scale in a BERT (normalised layer outputs) and in
    a decoder (whose residual stream grows with depth).
    """
    losses = []
    for student_position, teacher_position in pairs:
        student = student_states[student_position].float()
        target = teacher_states[teacher_position].float()
        if channels is not None:
            target = target.index_select(-1, channels.to(target.device))
        error = (student - target).pow(2).sum(dim=-1)
        scale = target.pow(2).sum(dim=-1)
        if attention_mask is not None and attention_mask.shape == error.shape:
            error, scale = error * attention_mask, scale * attention_mask
        losses.append(error.sum() / scale.sum().clamp(min=1e-12))
    if not losses:
        reference = next(iter(student_states.values()), None)
        return torch.zeros((), device=reference.device if reference is not None else None)
    return torch.stack(losses).mean()


__all__ = [
    "layer_distillation_loss",
    "layer_outputs",
    "layer_pairs",
    "logit_distillation_loss",
    "teacher_inputs",
]
