"""FSDP recovery: `PruningTrainer`'s training phases fully sharded, the pruning between them on the full model.

Under `torchrun` with `fsdp=True` (`FSDP_CONFIG`), the Trainer and accelerate train each phase with FSDP2
(`fully_shard`): every layer's parameters, gradients and optimizer state split across the processes, each layer
gathered for its forward and backward and freed after. FSDP2 shards in place: each parameter becomes a DTensor
holding this rank's slice, each sharded module's class an FSDP subclass. Scoring, surgery, timing and saving need
the real modules and full tensors, so every phase goes:

    before  `meta_twin`: a copy of the student's (and the teacher's) module tree with empty meta parameters and
            buffers, its ties kept; the teacher sharded like the student (`shard_like_student`)
    during  the Trainer's loop; the Trainer shards the student itself when it prepares it
    after   `gathered`: every rank gathers the full weights (a collective) into the twins, which replace the
            sharded models; the next step scores and prunes them as it would any model

accelerate 1.16 turns FSDP on only for accelerator devices: on CPU processes its state stays `MULTI_CPU`, the
plugin is dropped without a word and the Trainer trains DDP. torch's FSDP2 runs on CPU processes over gloo, and
accelerate's FSDP2 path does too once its state says FSDP, which `enable_on_cpu` sets as accelerate does on a GPU.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, fsdp2_prepare_model
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule

from ..errors import PruningError

FSDP_CONFIG: dict[str, Any] = {"version": 2, "reshard_after_forward": True, "state_dict_type": "FULL_STATE_DICT"}
"""The Trainer's `fsdp_config` (with `fsdp=True`): FSDP2, full_shard (parameters gathered per layer and freed after
its forward and backward), checkpoints with the full weights; each model's `_no_split_modules` (its decoder or
encoder layer) is one unit. A copy goes to each `TrainingArguments`, which edits the dict it is given."""

__all__ = [
    "FSDP_CONFIG",
    "enable_on_cpu",
    "gathered",
    "is_sharded",
    "meta_twin",
    "release_gathered",
    "shard_like_student",
]


def enable_on_cpu(accelerator: Accelerator, plugin_args: dict[str, Any]) -> bool:
    """On CPU processes, give accelerate's state the FSDP plugin (`plugin_args`: `TrainingArguments.fsdp_plugin_args`)
    that it drops there, so the Trainer shards instead of training DDP. Whether it did (False elsewhere: on a GPU
    accelerate sets it itself)."""
    state = accelerator.state
    if state.distributed_type != DistributedType.MULTI_CPU:
        return False
    plugin = FullyShardedDataParallelPlugin(**plugin_args)
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.fsdp_plugin = plugin
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return True


def is_sharded(model: nn.Module) -> bool:
    """Whether FSDP2 sharded `model` (in place)."""
    return isinstance(model, FSDPModule)


def meta_twin(model: nn.Module) -> nn.Module:
    """A copy of `model` (classes, config, the hfprune record, hooks) whose parameters and buffers are empty meta
    tensors: what its full weights go back into after sharding (`gathered`). Tied parameters stay tied."""
    memo: dict[int, Any] = {}
    for _, parameter in model.named_parameters(remove_duplicate=False):
        memo[id(parameter)] = nn.Parameter(
            torch.empty_like(parameter, device="meta"), requires_grad=parameter.requires_grad
        )
    for _, buffer in model.named_buffers(remove_duplicate=False):
        memo[id(buffer)] = torch.empty_like(buffer, device="meta")
    return copy.deepcopy(model, memo)


def shard_like_student(accelerator: Accelerator, teacher: nn.Module) -> nn.Module:
    """`teacher` sharded in place with the student's plugin (the same units and mixed precision; frozen weights stay
    in their dtype). `Accelerator.prepare` takes one model under FSDP2, so the teacher goes through the function it
    uses for that model."""
    return fsdp2_prepare_model(accelerator, teacher)


def release_gathered(model: nn.Module) -> None:
    """Free what a forward left gathered: units FSDP2 keeps unsharded after their forward (the root and the output
    head) wait for a backward that a teacher never runs."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def gathered(sharded: nn.Module, twin: nn.Module) -> nn.Module:
    """`twin` (`meta_twin` of the model before it was sharded) holding `sharded`'s full weights, on every rank:
    a collective every rank calls. Parameters keep their ties; buffers, which FSDP2 does not shard, are taken as
    they are."""
    if not is_sharded(sharded):
        raise PruningError(
            f"expected a model sharded by FSDP2, got {type(sharded).__name__}: the Trainer did not shard it"
        )
    full = get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True))
    buffers = dict(sharded.named_buffers(remove_duplicate=False))
    made: dict[int, nn.Parameter] = {}
    for prefix, module in twin.named_modules(remove_duplicate=False):
        path = f"{prefix}." if prefix else ""
        for name, parameter in list(module._parameters.items()):
            if parameter is not None:
                if id(parameter) not in made:
                    made[id(parameter)] = nn.Parameter(full[path + name], requires_grad=parameter.requires_grad)
                module._parameters[name] = made[id(parameter)]
        for name, buffer in list(module._buffers.items()):
            if buffer is not None:
                module._buffers[name] = buffers[path + name]
    return twin
