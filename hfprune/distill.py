"""The distillation term `PruningTrainer` adds to the task loss when `distillation_alpha > 0`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def distillation_loss(
    teacher: nn.Module, inputs: Mapping[str, Any], student_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over examples (or real tokens).

    The teacher runs on the same batch without its labels and without gradients; for token-level logits
    (causal LMs), padding positions of `attention_mask` are left out of the mean.
    """
    teacher_inputs = {key: value for key, value in inputs.items() if key not in ("labels", "num_items_in_batch")}
    with torch.no_grad():
        teacher_logits = teacher(**teacher_inputs).logits
    teacher_log_probs = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    kl = (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(dim=-1)
    mask = inputs.get("attention_mask")
    if kl.dim() == 2 and mask is not None and mask.shape == kl.shape:
        kl = (kl * mask).sum() / mask.sum().clamp(min=1)
    else:
        kl = kl.mean()
    return temperature**2 * kl


__all__ = ["distillation_loss"]
