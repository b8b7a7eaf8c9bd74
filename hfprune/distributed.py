"""What `PruningTrainer` needs so that every process of a `torchrun` / `accelerate launch` run prunes the same units.

Each rank scores its own shard of the scoring data; the scores are averaged across ranks, and the plans that
come out of them are compared before any surgery, since a mismatch would make DDP hang or silently diverge.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from .errors import PruningError

__all__ = ["average_over_processes", "check_same_plan", "is_distributed"]


def is_distributed() -> bool:
    """Whether this process is one of several in an initialised torch.distributed group."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def average_over_processes(tensor: torch.Tensor, weight: int, device: torch.device) -> torch.Tensor:
    """The `weight`-weighted mean of `tensor` over all processes (the tensor itself when not distributed)."""
    if not is_distributed() or torch.distributed.get_world_size() == 1:
        return tensor
    dtype = tensor.dtype
    packed = torch.cat([tensor.double().flatten() * weight, torch.tensor([float(weight)], dtype=torch.float64)])
    packed = packed.to(device)
    torch.distributed.all_reduce(packed)
    packed = packed.cpu()
    return (packed[:-1] / packed[-1]).reshape(tensor.shape).to(dtype)


def check_same_plan(plan: Any) -> None:
    """Raise rather than let DDP hang or silently diverge if the ranks planned different surgeries."""
    if not is_distributed() or torch.distributed.get_world_size() == 1:
        return
    plans: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(plans, json.dumps(plan, sort_keys=True))
    if len(set(plans)) > 1:
        raise PruningError("the processes planned different pruning steps; scores must be identical on every rank")
