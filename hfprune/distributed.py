"""What a `torchrun` / `accelerate launch` run needs so that every process prunes the same units, and one writes.

Each rank scores its own shard of the scoring data; the scores are averaged across ranks, and the plans that
come out of them are compared before any surgery, since a mismatch would make DDP hang or silently diverge.

A job (`hfprune.jobs.prune_job.PruneJob`) joins the launcher's process group before any work
(`join_launched_processes`), checks its input on every rank and raises the same error everywhere (`agree`), and runs
what writes or times on rank 0 only, the others waiting for its outcome (`on_main_process`): a value, or the error
to raise. Nothing here hangs on one rank's failure: every collective is reached by every rank.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from .errors import PruningError

__all__ = [
    "agree",
    "average_over_processes",
    "check_same_plan",
    "checked",
    "is_distributed",
    "is_main_process",
    "join_launched_processes",
    "on_main_process",
    "process_count",
    "process_rank",
]

T = TypeVar("T")


def is_distributed() -> bool:
    """Whether this process is one of several in an initialised torch.distributed group."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def process_count() -> int:
    """How many processes run the job: the initialised group's size, else the launcher's `WORLD_SIZE` (1 alone)."""
    if is_distributed():
        return torch.distributed.get_world_size()
    return max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))


def process_rank() -> int:
    """This process's rank: the initialised group's, else the launcher's `RANK` (0 alone)."""
    if is_distributed():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0") or 0)


def is_main_process() -> bool:
    """Whether this process writes, times and reports (rank 0, or the only process)."""
    return process_rank() == 0


def join_launched_processes(cpu: bool) -> None:
    """Under `torchrun` / `accelerate launch` (`WORLD_SIZE` > 1), join the launcher's process group now, through
    accelerate's `PartialState` (gloo with `cpu`, else the GPU's backend), the very state the Trainer uses later.

    A job joins before any work, so that a bad input found on one rank can be raised on all of them (`agree`)
    instead of leaving the others waiting in a collective. Alone (or already joined) this does nothing.
    """
    if is_distributed() or process_count() <= 1:
        return
    from accelerate import PartialState

    PartialState(cpu=cpu)


def _shareable(error: BaseException) -> BaseException:
    """`error`, or a `PruningError` with its first line where it cannot travel to the other processes."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # noqa: BLE001 - whatever stops it from pickling
        return PruningError(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)
    return error


def agree(error: BaseException | None) -> None:
    """Raise on every process when any of them failed: its own `error`, else the first other rank's.

    Every rank calls it with what its checks raised (None: they passed); alone, it raises `error` if any.
    """
    if not is_distributed() or torch.distributed.get_world_size() == 1:
        if error is not None:
            raise error
        return
    errors: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(errors, None if error is None else _shareable(error))
    if error is not None:
        raise error
    for other in errors:
        if other is not None:
            raise other


def checked(function: Callable[[], Any]) -> BaseException | None:
    """What `function()` raised (an `Exception`), or None: the argument `agree` takes."""
    try:
        function()
    except Exception as error:  # noqa: BLE001 - handed to `agree`, which raises it on every rank
        return error
    return None


def on_main_process(function: Callable[[], T]) -> T:
    """`function()` run on rank 0 only; every rank gets its value, or raises the error it raised.

    The other ranks wait (in a broadcast) until rank 0 is done, so it also orders rank 0's writes before whatever
    the others do next. Alone, it is `function()`.
    """
    if not is_distributed() or torch.distributed.get_world_size() == 1:
        return function()
    payload: list[Any] = [None]
    error: BaseException | None = None
    if torch.distributed.get_rank() == 0:
        try:
            payload[0] = (True, function())
        except Exception as raised:  # noqa: BLE001 - raised below on every rank
            error = raised
            payload[0] = (False, _shareable(raised))
    torch.distributed.broadcast_object_list(payload, src=0)
    ok, value = payload[0]
    if error is not None:
        raise error  # rank 0: the original, with its traceback
    if not ok:
        raise value
    return value


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
