"""Forward-only (activation) importance for every granularity, and the width importance `hidden_importance`.

Minitron (Muralidharan et al., 2024, "Compact Language Models via Pruning and Knowledge Distillation") ranks
units by what they put out on calibration data, with no backward pass, so scoring costs about one forward pass:

- heads: the L2 norm of each head's context (its attention output, right before the output projection);
- KV groups: the L2 norm of the context of all query heads that share one key/value head;
- FFN neurons: |activation| (the input of the FFN output projection);
- hidden channels: |output| of every norm over the residual stream (and of the hidden-sized projections cut
  with it, see `hfprune.engine.hidden.channel_sites`), summed over those sites.

Each score is a mean over non-padding tokens (the batch's `attention_mask`). Scores are in ORIGINAL indices,
NaN for units already gone, higher = more important: they plug into `hfprune.planning.plan` like the gradient scores.

Plain |activation| of the norm outputs is a weak width score on a fine-tuned encoder (see
benchmarks/README.md), so `hidden_importance` defaults to gradient x activation (first-order Taylor) on the
same sites, which needs one backward pass per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from ..engine.arch import get_adapter
from ..engine.checks import model_for_masks
from ..engine.hidden import channel_sites
from ..engine.record import (
    check_record,
    gqa_group_size,
    kept_ffn,
    kept_hidden,
    kv_groups,
    original_hidden_size,
)
from ..errors import PruningError
from .common import (
    Batch,
    LossFn,
    batch_loss,
    batch_size_of,
    model_device,
    normalize_per_layer,
    scoring_mode,
    to_device,
)

ACTIVATION_KINDS = ("heads", "kv_groups", "ffn", "hidden")
HIDDEN_METHODS = ("gradient", "activation")


class _Sums:
    """Per-unit sums of a token statistic and the number of tokens they cover, for one score vector."""

    def __init__(self):
        self.total: torch.Tensor | None = None
        self.tokens = 0

    def add(self, values: torch.Tensor, weights: torch.Tensor, tokens: int) -> None:
        """`values` [..., units], `weights` [...] (1 for a real token, 0 for padding) summing to `tokens`."""
        values = values.float().reshape(-1, values.shape[-1])
        total = (weights.to(device=values.device, dtype=values.dtype).reshape(1, -1) @ values)[0].double()
        self.total = total if self.total is None else self.total + total
        self.tokens += tokens

    def mean(self) -> torch.Tensor | None:
        return None if self.total is None or not self.tokens else (self.total / self.tokens).cpu()


class _TokenMask:
    """The current batch's non-padding tokens, in the layout a hooked tensor has."""

    def __init__(self, time_major: bool):
        self.time_major = time_major
        self.mask: torch.Tensor | None = None  # [batch, tokens]
        self.count = 0  # real tokens in the batch, counted once (no device sync inside the hooks)

    def set(self, mask: torch.Tensor) -> None:
        self.mask, self.count = mask, int(mask.sum())

    def like(self, tensor: torch.Tensor, time_major: bool | None = None) -> tuple[torch.Tensor, int]:
        """Weights over the leading dims of `tensor` ([batch, tokens], [tokens, batch] or [batch]) and their sum."""
        time_major = self.time_major if time_major is None else time_major
        mask = self.mask
        if tensor.dim() >= 3 and mask is not None:
            mask = mask.T if time_major else mask
            if tuple(mask.shape) == tuple(tensor.shape[:2]):
                return mask, self.count
        shape = tensor.shape[: min(tensor.dim() - 1, 2)]
        return torch.ones(shape, device=tensor.device), shape.numel()


class ActivationWatch:
    """Hooks that add up the forward-only statistics of `activation_scores` while the model's modules run,
    however they are driven: whole forward passes, or one layer at a time over the calibration batches
    (`hfprune.streaming`). Call `batch(mask)` before each batch's modules run; `scores()` at the end."""

    def __init__(self, model: nn.Module, kinds: str | Iterable[str] = ACTIVATION_KINDS):
        kinds = (kinds,) if isinstance(kinds, str) else tuple(dict.fromkeys(kinds))
        unknown = [kind for kind in kinds if kind not in ACTIVATION_KINDS]
        if unknown or not kinds:
            raise PruningError(f"unknown activation kinds {unknown}; choose from {list(ACTIVATION_KINDS)}")
        self.model, self.kinds = model, kinds
        self.adapter, self.record = get_adapter(model), check_record(model)
        self.tokens = _TokenMask(self.adapter.time_major)
        self.sums: dict[tuple, _Sums] = {}
        self._hooks = ExitStack()

    def __enter__(self) -> ActivationWatch:
        adapter, record, kinds, tokens, sums = self.adapter, self.record, self.kinds, self.tokens, self.sums
        for position, layer in enumerate(adapter.get_layers(self.model)):
            heads = record["kept_heads"][position]
            if heads and adapter.has_attention(layer) and {"heads", "kv_groups"} & set(kinds):
                watch = _watch_heads(record, heads, tokens, sums, position, kinds)
                self._hooks.enter_context(_removing(adapter.register_head_mask(layer, watch)))
            if kept_ffn(record, position) and "ffn" in kinds:
                watch = _watch(tokens, sums.setdefault(("ffn", position), _Sums()), torch.abs)
                self._hooks.enter_context(_removing(adapter.register_ffn_mask(layer, watch)))
        if "hidden" in kinds:
            for number, (module, time_major) in enumerate(channel_sites(self.model)):
                watch = _watch(tokens, sums.setdefault(("hidden", number), _Sums()), torch.abs, time_major)
                self._hooks.enter_context(_removing(module.register_forward_hook(lambda m, a, out, w=watch: w(out))))
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.close()

    def batch(self, mask: torch.Tensor) -> None:
        """The next batch's real tokens ([batch, tokens], 1 for a real token)."""
        self.tokens.set(mask)

    def scores(self, normalize: bool = False) -> dict[str, torch.Tensor]:
        """`{kind: scores}` in original indices (see `activation_scores`)."""
        scores = {kind: _to_original(self.record, self.model.config, kind, self.sums) for kind in self.kinds}
        if normalize:
            scores.update({kind: normalize_per_layer(value) for kind, value in scores.items() if kind != "hidden"})
        return scores


def activation_scores(
    model: nn.Module,
    dataloader: Iterable[Batch],
    kinds: str | Iterable[str] = ACTIVATION_KINDS,
    normalize: bool = False,
) -> dict[str, torch.Tensor]:
    """Forward-only importance of every kind asked for, all from one forward pass per batch (no backward).

    Returns `{kind: scores}` in original indices: "heads" `[num_layers, num_heads]`, "kv_groups"
    `[num_layers, num_kv_heads]`, "ffn" `[num_layers, intermediate_size]`, "hidden" `[hidden_size]`; NaN for
    units already gone. `normalize` divides each layer's row of the per-layer kinds by its L2 norm (as
    `head_importance` does) before ranking them globally; "hidden" is never normalised.
    """
    model = model_for_masks(model)
    device = model_device(model)
    batches = 0
    with ActivationWatch(model, kinds) as watch, scoring_mode(model):
        for batch in dataloader:
            batch = to_device(batch, device)
            mask = batch.get("attention_mask")
            watch.batch(torch.ones_like(batch["input_ids"]) if mask is None else mask)
            model(**batch, **_no_cache(model))
            batches += 1
    if not batches:
        raise PruningError("the dataloader gave no batches to score")
    return watch.scores(normalize)


def _watch(tokens: _TokenMask, sums: _Sums, statistic: Callable, time_major: bool | None = None):
    """An observer for a mask hook: adds `statistic(tensor)` per unit over real tokens; returns None (no change)."""

    def observe(tensor: torch.Tensor):
        tensor = tensor[0] if isinstance(tensor, tuple) else tensor
        sums.add(statistic(tensor.detach()), *tokens.like(tensor, time_major))

    return observe


def _watch_heads(record: dict, heads: list[int], tokens: _TokenMask, sums: dict, position: int, kinds: tuple):
    """Per-head (and per KV group) L2 norm of the context that enters the attention output projection."""
    groups = kv_groups(record, heads)
    group_size = gqa_group_size(record)
    member = torch.tensor([groups.index(head // group_size) for head in heads])

    def observe(context: torch.Tensor):
        weights, count = tokens.like(context)
        # [..., heads * head_dim] (XLNet: [tokens, batch, heads, head_dim]) -> per-head norms [..., heads]
        norms = torch.linalg.vector_norm(context.detach().float().reshape(*weights.shape, len(heads), -1), dim=-1)
        if "heads" in kinds:
            sums.setdefault(("heads", position), _Sums()).add(norms, weights, count)
        if "kv_groups" in kinds:
            if len(groups) == len(heads):  # one query head per KV head
                per_group = norms
            else:
                per_group = norms.new_zeros(*norms.shape[:-1], len(groups))
                per_group = per_group.index_add_(-1, member.to(norms.device), norms.pow(2)).sqrt()
            sums.setdefault(("kv_groups", position), _Sums()).add(per_group, weights, count)

    return observe


@contextmanager
def _removing(handle):
    try:
        yield handle
    finally:
        handle.remove()


def _no_cache(model: nn.Module) -> dict:
    return {"use_cache": False} if get_adapter(model).causal_lm and hasattr(model.config, "use_cache") else {}


def _to_original(record: dict, config, kind: str, sums: dict) -> torch.Tensor:
    """Scatter the current units' means into a NaN tensor of original indices."""
    original = record["original"]
    if kind == "hidden":
        scores = torch.full((original_hidden_size(record, config),), float("nan"), dtype=torch.float64)
        means = [site.mean() for key, site in sums.items() if key[0] == "hidden"]
        means = [mean for mean in means if mean is not None]
        if means:
            scores[kept_hidden(record, config)] = torch.stack(means).sum(0)
        return scores
    width = {"heads": original["num_heads"], "kv_groups": original["num_kv_heads"], "ffn": original["intermediate_size"]}
    scores = torch.full((original["num_layers"], width[kind]), float("nan"), dtype=torch.float64)
    for position, layer in enumerate(record["kept_layers"]):
        site = sums.get((kind, position))
        mean = None if site is None else site.mean()
        if mean is None:
            continue
        heads = record["kept_heads"][position]
        units = {"heads": heads, "kv_groups": kv_groups(record, heads), "ffn": kept_ffn(record, position)}[kind]
        scores[layer, units] = mean
    return scores


def activation_head_scores(model: nn.Module, dataloader: Iterable[Batch], normalize: bool = False) -> torch.Tensor:
    """`[num_layers, num_heads]`: mean L2 norm of each head's attention output (Minitron), forward only."""
    return activation_scores(model, dataloader, ("heads",), normalize)["heads"]


def activation_kv_group_scores(model: nn.Module, dataloader: Iterable[Batch], normalize: bool = False) -> torch.Tensor:
    """`[num_layers, num_kv_heads]`: mean L2 norm of the attention output of each KV group's query heads."""
    return activation_scores(model, dataloader, ("kv_groups",), normalize)["kv_groups"]


def activation_ffn_scores(model: nn.Module, dataloader: Iterable[Batch], normalize: bool = False) -> torch.Tensor:
    """`[num_layers, intermediate_size]`: mean |activation| of each FFN neuron (Minitron), forward only."""
    return activation_scores(model, dataloader, ("ffn",), normalize)["ffn"]


# ---- width ------------------------------------------------------------------------------------------------
def hidden_importance(
    model: nn.Module,
    dataloader: Iterable[Batch],
    method: str = "gradient",
    loss_fn: LossFn | None = None,
) -> torch.Tensor:
    """`[hidden_size]` importance of each residual-stream channel (original indices, NaN where gone).

    `method="gradient"` (default): first-order Taylor, E over examples of |sum over tokens of a * dL/da|, `a`
    the output of each channel site (the norms over the residual stream and the hidden-sized projections
    `prune_hidden` cuts with them), summed over sites; one forward and one backward pass per batch, the
    per-example sums read from per-example gates (an example's gradient is that of the batch loss times the
    batch size: for a loss averaged over examples, its own loss; for a causal LM's token-averaged loss, its own
    weighted by its share of the batch's tokens). `method="activation"`: Minitron's forward-only mean
    |norm output| over tokens, summed over the same sites. `loss_fn(outputs, batch)` as in `head_importance`.
    """
    if method not in HIDDEN_METHODS:
        raise PruningError(f"unknown hidden_importance method {method!r}; choose from {list(HIDDEN_METHODS)}")
    if method == "activation":
        return activation_scores(model, dataloader, ("hidden",))["hidden"]
    model = model_for_masks(model)
    record, device = check_record(model), model_device(model)
    sites = channel_sites(model)
    totals = [None] * len(sites)
    gates: list[torch.Tensor | None] = [None] * len(sites)

    def gate_hook(number: int, time_major: bool):
        def hook(module, args, output):
            batch = output.shape[1] if time_major and output.dim() >= 3 else output.shape[0]
            shape = [1] * output.dim()
            shape[1 if time_major and output.dim() >= 3 else 0], shape[-1] = batch, output.shape[-1]
            gate = torch.ones(shape, device=output.device, dtype=torch.promote_types(output.dtype, torch.float32))
            gates[number] = gate.requires_grad_()
            return output * gate.to(output.dtype)

        return hook

    examples = 0
    with ExitStack() as hooks, scoring_mode(model, grad=True):
        for number, (module, time_major) in enumerate(sites):
            hooks.enter_context(_removing(module.register_forward_hook(gate_hook(number, time_major))))
        for batch in dataloader:
            batch = to_device(batch, device)
            gates[:] = [None] * len(sites)
            loss = batch_loss(model, batch, loss_fn)
            used = [number for number, gate in enumerate(gates) if gate is not None]
            grads = torch.autograd.grad(loss, [gates[number] for number in used], allow_unused=True)
            size = batch_size_of(batch)
            for number, grad in zip(used, grads):
                if grad is None:
                    continue
                # dL/dgate[example, c] = (1/size) sum over tokens a * dL_example/da (the loss is a batch mean)
                per_example = (grad.reshape(-1, grad.shape[-1]) * size).abs().sum(0).double()
                totals[number] = per_example if totals[number] is None else totals[number] + per_example
            examples += size
    if examples == 0:
        raise PruningError("the dataloader gave no batches to score")
    scores = torch.full((original_hidden_size(record, model.config),), float("nan"), dtype=torch.float64)
    present = [total for total in totals if total is not None]
    if present:
        scores[kept_hidden(record, model.config)] = (torch.stack(present).sum(0) / examples).cpu()
    return scores


__all__ = [
    "ACTIVATION_KINDS",
    "ActivationWatch",
    "activation_ffn_scores",
    "activation_head_scores",
    "activation_kv_group_scores",
    "activation_scores",
    "hidden_importance",
]
