"""Gradient importance (Michel et al. 2019; Taylor, Molchanov et al. 2019) of heads, FFN neurons and MLPs from
mask gates, and measured ablation of heads and layers: how much the loss depends on each unit.

Scores are in original indices, NaN for units already gone (see `hfprune.scoring.common`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..engine.arch import get_adapter
from ..engine.masks import apply_masks, skip_layers
from ..engine.record import get_record, kept_ffn
from ..errors import PruningError
from .common import (
    GATE_KINDS,
    Batch,
    LossFn,
    batch_loss,
    batch_size_of,
    examples_of,
    gate_dtype,
    mean_loss,
    missing_as_nan,
    model_device,
    normalize_per_layer,
    present_units,
    scoring_mode,
    to_device,
    unit_shape,
)


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
    squared: bool = False,
) -> dict[str, torch.Tensor]:
    """Gradient importance of every gate kind asked for, all from the same forward and backward passes.

    A gate of ones (requiring grad) multiplies each head's context ("heads"), each FFN neuron ("ffn") or the
    whole MLP output of a layer ("mlp"); the score is E |d loss / d gate| over the data (Michel et al., 2019;
    Prasanna et al., 2020 for MLPs). As in Michel et al.'s code, the absolute value is taken per batch, on
    the gradient of the batch loss (one forward + one backward per batch), and batches are weighted by their
    size; `per_example=True` takes it per example instead (one pass per example). `squared=True` (with
    `per_example`) gives E (d loss / d gate)^2, the diagonal of the gates' empirical Fisher information: Kwon et
    al. (2022) estimate the loss increase of removing a set of units as half the sum of their Fisher scores.
    `normalize` divides each layer's row of "heads" and "ffn" by its L2 norm; "mlp" (one value per layer) is never
    normalised.

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
    record, device, dtype = get_record(model), model_device(model), gate_dtype(model)
    present = {kind: present_units(record, kind) for kind in kinds}
    # a kind with no unit left (every head removed) gets no gate: the loss could not depend on it, and with
    # nothing else gated it would have no gradient at all. Its scores are all NaN, like any unit that is gone.
    gated = [kind for kind in kinds if present[kind].any()]
    if not gated:
        return {kind: torch.full(unit_shape(record, kind), float("nan"), device=device, dtype=dtype) for kind in kinds}
    gates = {kind: torch.ones(unit_shape(record, kind), device=device, dtype=dtype, requires_grad=True) for kind in gated}
    totals = {kind: torch.zeros(unit_shape(record, kind), device=device, dtype=dtype) for kind in kinds}
    examples = 0
    with (
        scoring_mode(model, grad=True),
        apply_masks(model, head_mask=gates.get("heads"), ffn_mask=gates.get("ffn")),
        _mlp_gates(model, gates.get("mlp")),
    ):
        for batch in dataloader:
            batch = to_device(batch, device)
            for part in examples_of(batch) if per_example else (batch,):
                # autograd.grad, not backward(): nothing is ever accumulated into a parameter's .grad
                loss = batch_loss(model, part, loss_fn)
                grads = torch.autograd.grad(loss, list(gates.values()), allow_unused=True)
                size = batch_size_of(part)
                for kind, grad in zip(gates, grads):
                    if grad is not None:
                        totals[kind] += (grad.square() if squared else grad.abs()) * size
                examples += size
    if examples == 0:
        raise PruningError("the dataloader gave no batches to score")
    scores = {kind: missing_as_nan(total / examples, present[kind]) for kind, total in totals.items()}
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


def layer_ablation_scores(model: nn.Module, dataloader: Iterable[Batch]) -> torch.Tensor:
    """`[num_layers]`: how much the mean loss rises when each kept layer is skipped (one pass per layer), NaN
    for dropped layers.

    The loss change of removing a whole layer, measured rather than estimated: a first-order gate on a layer's
    output sees only the slope at the full model and badly underrates layers whose removal is a large step (on
    MiniLM-L6, dropping the 3 of 6 layers such a gate chose cost 6 points after recovery). In loss units, like
    the gate scores of heads and neurons, which `hfprune.planning.allocation` ranks it with (after calibration).
    """
    record = get_record(model)
    scores = torch.full((record["original"]["num_layers"],), float("nan"))
    with scoring_mode(model):
        base = mean_loss(model, dataloader)
        for layer in record["kept_layers"]:
            with skip_layers(model, [layer]):
                scores[layer] = mean_loss(model, dataloader) - base
    return scores


def head_ablation_scores(
    model: nn.Module,
    dataloader: Iterable[Batch],
    metric: str | Callable[[nn.Module, Iterable[Batch]], float] = "loss",
) -> torch.Tensor:
    """`metric(model with head h masked) - metric(model)` for every head alone (Michel et al., 2019).

    One evaluation pass per existing head. With `metric="loss"` (the model's mean loss) a larger value means
    a more important head; with a higher-is-better callable `metric(model, dataloader)` (accuracy...) a more
    negative value does, so negate it before ranking with `hfprune.planning.plan`. NaN for heads already gone.
    """
    if metric != "loss" and not callable(metric):
        raise PruningError(f"metric must be 'loss' or a callable metric(model, dataloader), got {metric!r}")
    evaluate = mean_loss if metric == "loss" else metric
    record = get_record(model)
    present = present_units(record, "heads")
    scores = torch.full(present.shape, float("nan"), dtype=torch.float64)
    with scoring_mode(model):
        base = evaluate(model, dataloader)
        for layer, head in present.nonzero().tolist():
            mask = torch.ones(present.shape, device=model_device(model))
            mask[layer, head] = 0
            with apply_masks(model, head_mask=mask):
                scores[layer, head] = evaluate(model, dataloader) - base
    return scores

