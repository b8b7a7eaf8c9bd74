"""Output biases for bias compensation (`reconstruct(method="bias")`): a block's output projection must carry a
bias for the fit to write one.

BERT, RoBERTa and ELECTRA have them. Llama's projections have none, but its config can grant them
(`attention_bias` on q/k/v/o, `mlp_bias` on gate/up/down): `add_output_biases` turns both flags on and gives every
projection of the kept blocks a zero bias, so the model computes what it computed before, and a reload (hfprune's
or plain transformers', for stock shapes) builds the same modules. FLAP (An et al. 2024) adds the same biases to
LLaMA. Mistral, Qwen2 and Qwen3 (its MLP) hard-code bias-free output projections, so they are refused.
"""

from __future__ import annotations

import torch
from torch import nn

from ..engine.arch.base import ArchAdapter, resolve
from ..engine.record import PATCH_KEY, get_record, save_record
from ..errors import PruningError

BIAS_FLAGS: dict[str, tuple[str, ...]] = {"llama": ("attention_bias", "mlp_bias")}
"""model_type -> the config flags that give its attention and MLP projections biases."""


def _output_projections(model: nn.Module, adapter: ArchAdapter) -> list[nn.Linear]:
    """Every kept block's output projection (a removed block has none)."""
    projections = []
    for layer in adapter.get_layers(model):
        for path in (adapter.output, adapter.ffn_output):
            try:
                projection = resolve(layer, path)
            except AttributeError:
                continue
            if isinstance(projection, nn.Linear):
                projections.append(projection)
    return projections


def lacks_output_biases(model: nn.Module, adapter: ArchAdapter) -> bool:
    """Whether some kept block's output projection has no bias."""
    return any(projection.bias is None for projection in _output_projections(model, adapter))


def check_biases(model: nn.Module, adapter: ArchAdapter) -> None:
    """Refuse, in one line, a model whose output projections lack biases that its config cannot grant."""
    if not lacks_output_biases(model, adapter):
        return
    model_type = model.config.model_type
    if model_type not in BIAS_FLAGS:
        can = ", ".join(f"{name} ({' and '.join(flags)})" for name, flags in BIAS_FLAGS.items())
        raise PruningError(
            f"bias compensation needs output projections with a bias: {model_type}'s have none and its config cannot "
            f"add them (BERT-like models have them; {can} can add them); use method 'least_squares' or 'scales'"
        )


def add_output_biases(model: nn.Module, adapter: ArchAdapter) -> int:
    """Turn on the config's bias flags and give every bias-free linear projection of the kept attention and MLP
    blocks a zero bias (the model's outputs do not change), and rewrite a pruned model's record (`config.hfprune`)
    so that a reload builds them; returns how many were added."""
    flags = BIAS_FLAGS.get(model.config.model_type, ())
    if not flags or all(getattr(model.config, flag, False) for flag in flags):
        return 0
    added = 0
    for layer in adapter.get_layers(model):
        for block in {adapter.output.rpartition(".")[0], adapter.ffn_output.rpartition(".")[0]}:
            for module in layer.get_submodule(block).modules():
                if isinstance(module, nn.Linear) and module.bias is None:
                    weight = module.weight
                    module.bias = nn.Parameter(torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device))
                    added += 1
    for flag in flags:
        setattr(model.config, flag, True)
    if getattr(model.config, PATCH_KEY, None):  # a pruned model: its shape patch now has the biases' shapes too
        save_record(model, get_record(model))
    return added


__all__ = ["BIAS_FLAGS", "add_output_biases", "check_biases", "lacks_output_biases"]
