"""Importance scores for attention heads, FFN neurons, whole MLPs and layers. Scores never change the model.

Every score tensor is in ORIGINAL indices (`[num_layers, num_heads]`, `[num_layers, intermediate_size]` or
`[num_layers]` of the unpruned model), so scores of an already-pruned model line up with its record. Units
that no longer exist (pruned heads and neurons, dropped layers) score NaN rather than 0: a 0 would read as
"least important" and a ranking would pick the same unit again. For head, FFN and MLP scores higher means
more important (for ablation with a metric other than the loss, see `head_ablation_scores`); for the layer
scores see each function.

Batches are dicts of model keyword arguments (what a `DataLoader` over a tokenized dataset yields); they are
moved to the model's device. A dataloader is iterated once per pass, so it must be re-iterable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.pytorch_utils import Conv1D

from .arch import get_adapter
from .arch.base import resolve
from .constants import PER_LAYER_NORMALIZED_METHODS, SCORING_METHODS, choices
from .errors import PruningError
from .masks import apply_masks
from .record import get_record, gqa_group_size, kept_ffn, kv_groups

Batch = Mapping[str, Any]
LossFn = Callable[[Any, Batch], torch.Tensor]
GATE_KINDS = ("heads", "ffn", "mlp")


# ---- shared plumbing ---------------------------------------------------------------------------------
def _device(model: nn.Module) -> torch.device:
    return getattr(model, "device", None) or next(model.parameters()).device


def _gate_dtype(model: nn.Module) -> torch.dtype:
    """float32, or float64 for a float64 model: gradients of half-precision gates would be too coarse."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return torch.promote_types(dtype, torch.float32)


@contextmanager
def _scoring_mode(model: nn.Module, grad: bool = False) -> Iterator[None]:
    """Eval mode (no dropout) and frozen parameters; every module's mode and `requires_grad` restored after."""
    modes = [(module, module.training) for module in model.modules()]
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    model.eval()
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        with torch.set_grad_enabled(grad):
            yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        for module, training in modes:
            module.training = training


def _to_device(batch: Batch, device: torch.device) -> dict[str, Any]:
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}


def _batch_size(batch: Batch) -> int:
    return next(value.shape[0] for value in batch.values() if isinstance(value, torch.Tensor) and value.dim())


def _examples(batch: Batch) -> Iterator[dict[str, Any]]:
    """Split a batch into batches of one example (tensors sliced on dim 0, other values shared)."""
    size = _batch_size(batch)
    for index in range(size):
        yield {
            key: value[index : index + 1] if isinstance(value, torch.Tensor) and value.dim() else value
            for key, value in batch.items()
        }


def _is_causal_lm(model: nn.Module) -> bool:
    return type(model).__name__ in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def _loss(model: nn.Module, batch: Batch, loss_fn: LossFn | None) -> torch.Tensor:
    """`loss_fn(outputs, batch)`, else the model's own loss; a causal LM without `labels` predicts its input."""
    causal_lm = _is_causal_lm(model)
    no_cache = {"use_cache": False} if causal_lm else {}  # scoring never generates: no KV cache to build
    if loss_fn is not None:
        return loss_fn(model(**batch, **no_cache), batch)
    if "labels" not in batch and causal_lm:
        labels = batch["input_ids"]
        if batch.get("attention_mask") is not None:
            labels = labels.masked_fill(batch["attention_mask"] == 0, -100)
        batch = {**batch, "labels": labels}
    loss = model(**batch, **no_cache).loss
    if loss is None:
        raise PruningError("the model returned no loss: give the batches 'labels' or pass loss_fn")
    return loss


def _shape(record: dict, kind: str) -> tuple[int, ...]:
    """The original-index shape of one kind of score ("heads", "ffn" or "mlp")."""
    original = record["original"]
    return {
        "heads": (original["num_layers"], original["num_heads"]),
        "ffn": (original["num_layers"], original["intermediate_size"]),
        "mlp": (original["num_layers"],),
    }[kind]


def _present(record: dict, kind: str) -> torch.Tensor:
    """Boolean mask, in original indices, of the heads / neurons / MLPs that still exist."""
    present = torch.zeros(_shape(record, kind), dtype=torch.bool)
    for position, layer in enumerate(record["kept_layers"]):
        if kind == "heads":
            present[layer, record["kept_heads"][position]] = True
        elif kind == "ffn":
            present[layer, kept_ffn(record, position)] = True
        else:
            present[layer] = bool(kept_ffn(record, position))
    return present


def _missing_as_nan(scores: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    return scores.masked_fill(~present.to(scores.device), float("nan"))


def normalize_per_layer(scores: torch.Tensor) -> torch.Tensor:
    """Divide each layer's row by its L2 norm (NaN entries ignored), as Michel et al. (2019) do before ranking
    heads globally: raw gradient magnitudes differ a lot between layers."""
    norms = scores.nan_to_num(0.0).norm(dim=-1, keepdim=True)
    return scores / norms.clamp_min(torch.finfo(scores.dtype).tiny)


# ---- gradients of gates ------------------------------------------------------------------------------
@contextmanager
def _mlp_gates(model: nn.Module, gate: torch.Tensor | None) -> Iterator[None]:
    """Scale each layer's whole MLP output (bias included) by `gate[original layer]`."""
    if gate is None:
        yield
        return
    adapter, record = get_adapter(model), get_record(model)
    handles = []
    for position, layer in enumerate(adapter.get_layers(model)):
        if not kept_ffn(record, position):
            continue  # the MLP is gone (or is only a bias): nothing to gate
        index = record["kept_layers"][position]

        def hook(module, args, output, index=index):
            return output * gate[index].to(device=output.device, dtype=output.dtype)

        handles.append(layer.get_submodule(adapter.ffn_output).register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def importance_scores(
    model: nn.Module,
    dataloader: Iterable[Batch],
    kinds: Iterable[str] = ("heads",),
    normalize: bool = True,
    loss_fn: LossFn | None = None,
    per_example: bool = False,
) -> dict[str, torch.Tensor]:
    """Gradient importance of every gate kind asked for, all from the same forward and backward passes.

    A gate of ones (requiring grad) multiplies each head's context ("heads"), each FFN neuron ("ffn") or the
    whole MLP output of a layer ("mlp"); the score is E |d loss / d gate| over the data (Michel et al., 2019;
    Prasanna et al., 2020 for MLPs). As in Michel et al.'s code, the absolute value is taken per batch, on
    the gradient of the batch loss (one forward + one backward per batch), and batches are weighted by their
    size; `per_example=True` takes it per example instead (one pass per example). `normalize` divides each layer's row of "heads"
    and "ffn" by its L2 norm; "mlp" (one value per layer) is never normalised.

    Args:
        loss_fn: `loss_fn(outputs, batch) -> scalar`; default: the model's loss from the batch's `labels`
            (a causal LM without labels is scored on its own input ids).
    Returns:
        `{kind: scores}` in original indices, NaN where the unit no longer exists.
    """
    kinds = (kinds,) if isinstance(kinds, str) else tuple(dict.fromkeys(kinds))
    unknown = [kind for kind in kinds if kind not in GATE_KINDS]
    if unknown or not kinds:
        raise PruningError(f"unknown gate kinds {unknown}; choose from {list(GATE_KINDS)}")
    record, device, dtype = get_record(model), _device(model), _gate_dtype(model)
    gates = {kind: torch.ones(_shape(record, kind), device=device, dtype=dtype, requires_grad=True) for kind in kinds}
    totals = {kind: torch.zeros_like(gate) for kind, gate in gates.items()}
    examples = 0
    with (
        _scoring_mode(model, grad=True),
        apply_masks(model, head_mask=gates.get("heads"), ffn_mask=gates.get("ffn")),
        _mlp_gates(model, gates.get("mlp")),
    ):
        for batch in dataloader:
            batch = _to_device(batch, device)
            for part in _examples(batch) if per_example else (batch,):
                # autograd.grad, not backward(): nothing is ever accumulated into a parameter's .grad
                loss = _loss(model, part, loss_fn)
                grads = torch.autograd.grad(loss, list(gates.values()), allow_unused=True)
                size = _batch_size(part)
                for kind, grad in zip(gates, grads):
                    if grad is not None:
                        totals[kind] += grad.abs() * size
                examples += size
    if examples == 0:
        raise PruningError("the dataloader gave no batches to score")
    scores = {kind: _missing_as_nan(total / examples, _present(record, kind)) for kind, total in totals.items()}
    if normalize:
        scores.update({kind: normalize_per_layer(scores[kind]) for kind in scores if kind != "mlp"})
    return scores


def head_importance(
    model: nn.Module, dataloader: Iterable[Batch], normalize: bool = True, loss_fn: LossFn | None = None
) -> torch.Tensor:
    """`[num_layers, num_heads]` head importance of Michel et al. (2019), "Are Sixteen Heads Really Better
    than One?": mean |d loss / d head gate|, per-layer L2-normalised by default. NaN for heads already gone."""
    return importance_scores(model, dataloader, ("heads",), normalize, loss_fn)["heads"]


def ffn_importance(
    model: nn.Module, dataloader: Iterable[Batch], normalize: bool = True, loss_fn: LossFn | None = None
) -> torch.Tensor:
    """`[num_layers, intermediate_size]` importance of single FFN neurons, the same gradient criterion with
    one gate per neuron (input of the FFN output projection). NaN for neurons already gone."""
    return importance_scores(model, dataloader, ("ffn",), normalize, loss_fn)["ffn"]


def mlp_importance(model: nn.Module, dataloader: Iterable[Batch], loss_fn: LossFn | None = None) -> torch.Tensor:
    """`[num_layers]` importance of whole MLPs (Prasanna et al., 2020, "When BERT Plays the Lottery"): one
    gate on each layer's MLP output. Not normalised (per layer it would always be 1). NaN where it is gone."""
    return importance_scores(model, dataloader, ("mlp",), False, loss_fn)["mlp"]


def taylor_head_scores(
    model: nn.Module, dataloader: Iterable[Batch], normalize: bool = False, loss_fn: LossFn | None = None
) -> torch.Tensor:
    """First-order Taylor head scores (Molchanov et al., 2017): mean over examples of |sum over tokens of
    activation · d loss_x / d activation|, the activation being the head's context vector.

    At gate 1, |gate · d loss / d gate| equals that sum, so this is `head_importance` with two differences
    only: the absolute value is taken per example (one backward pass per example) rather than per batch,
    and rows are not normalised by default.
    """
    return importance_scores(model, dataloader, ("heads",), normalize, loss_fn, per_example=True)["heads"]


# ---- ablation ----------------------------------------------------------------------------------------
def _mean_loss(model: nn.Module, dataloader: Iterable[Batch]) -> float:
    """The model's loss averaged over examples (batches weighted by size)."""
    device, total, examples = _device(model), 0.0, 0
    for batch in dataloader:
        batch = _to_device(batch, device)
        size = _batch_size(batch)
        total += _loss(model, batch, None).item() * size
        examples += size
    if examples == 0:
        raise PruningError("the dataloader gave no batches to score")
    return total / examples


def layer_ablation_scores(model: nn.Module, dataloader: Iterable[Batch]) -> torch.Tensor:
    """`[num_layers]`: how much the mean loss rises when each kept layer is skipped (one pass per layer), NaN
    for dropped layers.

    The loss change of removing a whole layer, measured rather than estimated: a first-order gate on a layer's
    output sees only the slope at the full model and badly underrates layers whose removal is a large step (on
    MiniLM-L6, dropping the 3 of 6 layers such a gate chose cost 6 points after recovery). In loss units, like
    the gate scores of heads and neurons, which `hfprune.allocation` ranks it with (after calibration).
    """
    from .masks import skip_layers

    record = get_record(model)
    scores = torch.full((record["original"]["num_layers"],), float("nan"))
    with _scoring_mode(model):
        base = _mean_loss(model, dataloader)
        for layer in record["kept_layers"]:
            with skip_layers(model, [layer]):
                scores[layer] = _mean_loss(model, dataloader) - base
    return scores


def head_ablation_scores(
    model: nn.Module,
    dataloader: Iterable[Batch],
    metric: str | Callable[[nn.Module, Iterable[Batch]], float] = "loss",
) -> torch.Tensor:
    """`metric(model with head h masked) - metric(model)` for every head alone (Michel et al., 2019).

    One evaluation pass per existing head. With `metric="loss"` (the model's mean loss) a larger value means
    a more important head; with a higher-is-better callable `metric(model, dataloader)` (accuracy...) a more
    negative value does, so negate it before ranking with `hfprune.plan`. NaN for heads already gone.
    """
    if metric != "loss" and not callable(metric):
        raise PruningError(f"metric must be 'loss' or a callable metric(model, dataloader), got {metric!r}")
    evaluate = _mean_loss if metric == "loss" else metric
    record = get_record(model)
    present = _present(record, "heads")
    scores = torch.full(present.shape, float("nan"), dtype=torch.float64)
    with _scoring_mode(model):
        base = evaluate(model, dataloader)
        for layer, head in present.nonzero().tolist():
            mask = torch.ones(present.shape, device=_device(model))
            mask[layer, head] = 0
            with apply_masks(model, head_mask=mask):
                scores[layer, head] = evaluate(model, dataloader) - base
    return scores


# ---- data-free baselines -----------------------------------------------------------------------------
def _head_rows(projection, heads_on_output: bool) -> torch.Tensor:
    """The projection's weight as a matrix whose rows are head units, heads one after another."""
    if isinstance(projection, nn.Parameter) and projection.dim() == 3:  # XLNet: [d_model, heads, d_head]
        return projection.permute(1, 2, 0).flatten(0, 1)
    if isinstance(projection, Conv1D):  # weight [in, out]
        return projection.weight.T if heads_on_output else projection.weight
    if isinstance(projection, nn.Linear):  # weight [out, in]
        return projection.weight if heads_on_output else projection.weight.T
    raise PruningError(f"magnitude scores cannot read heads from a {type(projection).__name__}")


def _squared_norms(rows: torch.Tensor, units: int) -> torch.Tensor:
    return rows.detach().double().reshape(units, -1).pow(2).sum(dim=1)


def magnitude_head_scores(model: nn.Module) -> torch.Tensor:
    """`[num_layers, num_heads]` L2 norm of each head's slices of the q, k, v and output weights (no data).

    Under grouped-query attention the k/v slices are those of the head's KV group, shared by its heads.
    Biases are left out. NaN for heads already gone.
    """
    adapter, record = get_adapter(model), get_record(model)
    original, group_size = record["original"], gqa_group_size(record)
    scores = torch.full((original["num_layers"], original["num_heads"]), float("nan"), dtype=torch.float64)
    for position, layer in enumerate(adapter.get_layers(model)):
        heads = record["kept_heads"][position]
        if not heads:
            continue
        groups = kv_groups(record, heads)
        paths = (adapter.query, adapter.key, adapter.value)
        if len(set(paths)) == 1:  # GPT-2: q, k and v side by side in one fused projection
            q, k, v = _head_rows(resolve(layer, adapter.query), True).chunk(3)
        else:
            q, k, v = (_head_rows(resolve(layer, path), True) for path in paths)
        o = _head_rows(resolve(layer, adapter.output), False)
        kv = _squared_norms(k, len(groups)) + _squared_norms(v, len(groups))
        own_group = torch.tensor([groups.index(head // group_size) for head in heads])
        total = _squared_norms(q, len(heads)) + _squared_norms(o, len(heads)) + kv[own_group.to(kv.device)]
        scores[record["kept_layers"][position], heads] = total.sqrt().cpu()
    return scores


def magnitude_ffn_scores(model: nn.Module) -> torch.Tensor:
    """`[num_layers, intermediate_size]` L2 norm of each FFN neuron's input rows and output column (no data).

    The weight-only baseline for FFN pruning; NaN for neurons already gone.
    """
    adapter, record = get_adapter(model), get_record(model)
    original = record["original"]
    scores = torch.full((original["num_layers"], original["intermediate_size"]), float("nan"), dtype=torch.float64)
    for position, layer in enumerate(adapter.get_layers(model)):
        neurons = kept_ffn(record, position)
        if not neurons:
            continue
        total = _squared_norms(_head_rows(layer.get_submodule(adapter.ffn_output), False), len(neurons))
        for path in adapter.ffn_inputs:
            total = total + _squared_norms(_head_rows(layer.get_submodule(path), True), len(neurons))
        scores[record["kept_layers"][position], neurons] = total.sqrt().cpu()
    return scores


def random_head_scores(model: nn.Module, seed: int = 0) -> torch.Tensor:
    """`[num_layers, num_heads]` uniform random scores (the random-pruning baseline); NaN for heads gone."""
    present = _present(get_record(model), "heads")
    generator = torch.Generator().manual_seed(seed)
    return _missing_as_nan(torch.rand(present.shape, generator=generator, dtype=torch.float64), present)


def random_ffn_scores(model: nn.Module, seed: int = 0) -> torch.Tensor:
    """`[num_layers, intermediate_size]` uniform random scores (the random-pruning baseline for FFN neurons);
    NaN for neurons gone."""
    present = magnitude_ffn_scores(model)  # only its NaN pattern is used: which neurons still exist
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(present.shape, generator=generator, dtype=torch.float64)
    return noise.masked_fill(present.isnan(), float("nan"))


# ---- the method registry -----------------------------------------------------------------------------
# method -> the unit kinds it can score
_METHOD_KINDS: dict[str, tuple[str, ...]] = {
    "importance": GATE_KINDS,
    "taylor": GATE_KINDS,
    "ablation": ("heads",),
    "activation": ("heads", "ffn"),
    "magnitude": ("heads", "ffn"),
    "random": ("heads", "ffn"),
}
_DATA_FREE = {
    "magnitude": {"heads": magnitude_head_scores, "ffn": magnitude_ffn_scores},
    "random": {"heads": random_head_scores, "ffn": random_ffn_scores},
}


def score_units(
    model: nn.Module,
    method: str,
    kinds: str | Iterable[str] = ("heads",),
    dataloader: Iterable[Batch] | None = None,
    seed: int = 0,
    *,
    normalize: bool | None = None,
    loss_fn: LossFn | None = None,
    metric: str | Callable[[nn.Module, Iterable[Batch]], float] = "loss",
) -> dict[str, torch.Tensor]:
    """`{kind: scores}` of `kinds` ("heads", "ffn", "mlp") by one of `hfprune.constants.SCORING_METHODS`.

    The one dispatcher from a method name to the functions above, used by `PruningTrainer`,
    `pipeline.score_heads` and `hfprune score`:

    - "importance" / "taylor": `importance_scores` (per batch / per example), all kinds from the same passes;
      `normalize` defaults to True for "importance" (Michel et al.) and False for "taylor"; `loss_fn` as there.
    - "ablation": `head_ablation_scores(model, dataloader, metric)`, heads only.
    - "activation": `hfprune.activations.activation_scores`, forward passes only (Minitron): attention-output
      norms per head, activation magnitudes per FFN neuron; `normalize` defaults to True, as for "importance".
    - "magnitude": `magnitude_head_scores` / `magnitude_ffn_scores`; "random": `random_head_scores` /
      `random_ffn_scores` with `seed`. Both read no data (`dataloader` is not used).
    """
    if method not in SCORING_METHODS:
        raise PruningError(f"unknown scoring method {method!r}; choose {choices(SCORING_METHODS)}")
    kinds = (kinds,) if isinstance(kinds, str) else tuple(dict.fromkeys(kinds))
    supported = _METHOD_KINDS[method]
    unknown = [kind for kind in kinds if kind not in supported]
    if unknown or not kinds:
        raise PruningError(f"{method!r} cannot score the unit kinds {unknown}; choose from {list(supported)}")
    if method in _DATA_FREE:
        functions = _DATA_FREE[method]
        if method == "random":
            return {kind: functions[kind](model, seed=seed) for kind in kinds}
        return {kind: functions[kind](model) for kind in kinds}
    if dataloader is None:
        raise PruningError(f"{method!r} scores need data: pass a dataloader")
    if method == "ablation":
        return {"heads": head_ablation_scores(model, dataloader, metric)}
    if normalize is None:
        normalize = method in PER_LAYER_NORMALIZED_METHODS
    if method == "activation":
        from .activations import activation_scores  # it builds on this module's helpers

        return activation_scores(model, dataloader, kinds, normalize)
    return importance_scores(model, dataloader, kinds, normalize, loss_fn, per_example=method == "taylor")


# ---- layer similarity --------------------------------------------------------------------------------
def _token_mask(batch: Batch, last_token: bool) -> torch.Tensor:
    """[batch, tokens] bool: the non-padding tokens, or only each example's last one."""
    mask = batch.get("attention_mask")
    mask = torch.ones_like(batch["input_ids"], dtype=torch.bool) if mask is None else mask.bool()
    if not last_token:
        return mask
    last = mask.shape[1] - 1 - mask.flip(1).int().argmax(dim=1)
    return F.one_hot(last, mask.shape[1]).bool()


def _mean_block_similarity(
    model: nn.Module,
    dataloader: Iterable[Batch],
    span: int,
    transform: Callable[[torch.Tensor], torch.Tensor],
    last_token: bool,
) -> torch.Tensor:
    """`[num_layers]`: mean over tokens of `transform(cos(input of layer l, output of layer l + span - 1))`.

    Indexed by the original index of the first layer of each block of `span` consecutive current layers;
    NaN where no such block starts.
    """
    adapter, record, device = get_adapter(model), get_record(model), _device(model)
    layers = adapter.get_layers(model)
    if not 1 <= span <= len(layers):
        raise PruningError(f"n must be in [1, {len(layers)}] (the model's layers), got {span}")
    time_major = adapter.time_major
    inputs, outputs = [None] * len(layers), [None] * len(layers)

    def capture(position: int):
        def hook(module, args, kwargs, output):
            hidden_in = args[0] if args else kwargs["hidden_states"]
            hidden_out = output[0] if isinstance(output, tuple) else output
            if time_major:
                hidden_in, hidden_out = hidden_in.transpose(0, 1), hidden_out.transpose(0, 1)
            inputs[position], outputs[position] = hidden_in, hidden_out

        return hook

    handles = [layer.register_forward_hook(capture(i), with_kwargs=True) for i, layer in enumerate(layers)]
    starts = len(layers) - span + 1
    sums, tokens = torch.zeros(starts, dtype=torch.float64), 0
    try:
        with _scoring_mode(model):
            for batch in dataloader:
                batch = _to_device(batch, device)
                model(**batch)
                mask = _token_mask(batch, last_token)
                for start in range(starts):
                    first, last = inputs[start], outputs[start + span - 1]
                    dtype = torch.promote_types(first.dtype, torch.float32)
                    cosine = F.cosine_similarity(first.to(dtype), last.to(dtype), dim=-1)
                    sums[start] += transform(cosine)[mask.to(cosine.device)].double().sum().cpu()
                tokens += int(mask.sum())
    finally:
        for handle in handles:
            handle.remove()
    if tokens == 0:
        raise PruningError("the dataloader gave no (non-padding) tokens to score")
    scores = torch.full((record["original"]["num_layers"],), float("nan"), dtype=torch.float64)
    scores[record["kept_layers"][:starts]] = sums / tokens
    return scores


def layer_cosine_scores(model: nn.Module, dataloader: Iterable[Batch]) -> torch.Tensor:
    """`[num_layers]` cosine similarity between each layer's input and output hidden states, averaged over
    all non-padding tokens (Sajjad et al., 2020, contribution-based dropping): high = contributes little."""
    return _mean_block_similarity(model, dataloader, 1, lambda cosine: cosine, last_token=False)


def block_influence(model: nn.Module, dataloader: Iterable[Batch]) -> torch.Tensor:
    """`[num_layers]` Block Influence of ShortGPT (Men et al., 2024): 1 - mean cosine(input, output);
    low = the layer changes its input little and is the first to remove."""
    return 1 - layer_cosine_scores(model, dataloader)


def angular_distance(
    model: nn.Module, dataloader: Iterable[Batch], n: int = 1, last_token: bool = True
) -> torch.Tensor:
    """`[num_layers]` angular distance arccos(cos)/pi between the input of layer l and the output of layer
    l + n - 1 (Gromov et al., 2024, "The Unreasonable Ineffectiveness of the Deeper Layers"); the block of
    n layers with the smallest distance is the one to drop.

    As in the paper, only each example's last non-padding token is used (`last_token=False`: all tokens),
    and the per-token distances are averaged. Entry l is NaN where fewer than n layers start at l.
    """
    return _mean_block_similarity(
        model, dataloader, n, lambda cosine: torch.arccos(cosine.clamp(-1.0, 1.0)) / math.pi, last_token
    )


__all__ = [
    "GATE_KINDS",
    "angular_distance",
    "block_influence",
    "ffn_importance",
    "head_ablation_scores",
    "head_importance",
    "importance_scores",
    "layer_ablation_scores",
    "layer_cosine_scores",
    "magnitude_ffn_scores",
    "magnitude_head_scores",
    "mlp_importance",
    "normalize_per_layer",
    "random_ffn_scores",
    "random_head_scores",
    "score_units",
    "taylor_head_scores",
]
