"""The scorers behind the method table: `hfprune.constants.METHODS` says what each scoring method scores, whether
it needs data and how it is normalised; this module registers the function that computes it (`register_scorer`,
as PEFT's `register_peft_method` fills its mappings) and dispatches to it (`score_units`), for `PruningTrainer`,
`prune_for_task` and `hfprune score` alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from .._validation import check_setting
from ..constants import METHODS, SCORING_METHODS, choices
from ..errors import PruningError
from .activations import activation_scores
from .common import Batch, LossFn
from .loss import head_ablation_scores, importance_scores
from .weights import magnitude_ffn_scores, magnitude_head_scores, random_ffn_scores, random_head_scores


@dataclass(frozen=True)
class ScoreRequest:
    """What a scorer is asked: the unit kinds, the data (None for data-free methods) and the options."""

    kinds: tuple[str, ...]
    dataloader: Iterable[Batch] | None
    normalize: bool
    seed: int = 0
    loss_fn: LossFn | None = None
    metric: str | Callable[[nn.Module, Iterable[Batch]], float] = "loss"


Scorer = Callable[[nn.Module, ScoreRequest], dict[str, torch.Tensor]]
SCORERS: dict[str, Scorer] = {}
"""method name -> the function that scores it; one for every entry of `hfprune.constants.METHODS`."""


def register_scorer(name: str) -> Callable[[Scorer], Scorer]:
    """Register the scorer of the method `name`, which must be in `hfprune.constants.METHODS`."""
    if name not in METHODS:
        raise PruningError(f"{name!r} is not in hfprune.constants.METHODS; add what it scores there first")

    def register(scorer: Scorer) -> Scorer:
        SCORERS[name] = scorer
        return scorer

    return register


@register_scorer("importance")
def _importance(model: nn.Module, request: ScoreRequest) -> dict[str, torch.Tensor]:
    return importance_scores(model, request.dataloader, request.kinds, request.normalize, request.loss_fn)


@register_scorer("taylor")
def _taylor(model: nn.Module, request: ScoreRequest) -> dict[str, torch.Tensor]:
    return importance_scores(
        model, request.dataloader, request.kinds, request.normalize, request.loss_fn, per_example=True
    )


@register_scorer("fisher")
def _fisher(model: nn.Module, request: ScoreRequest) -> dict[str, torch.Tensor]:
    return importance_scores(
        model, request.dataloader, request.kinds, request.normalize, request.loss_fn, per_example=True, squared=True
    )


@register_scorer("ablation")
def _ablation(model: nn.Module, request: ScoreRequest) -> dict[str, torch.Tensor]:
    return {"heads": head_ablation_scores(model, request.dataloader, request.metric)}


@register_scorer("activation")
def _activation(model: nn.Module, request: ScoreRequest) -> dict[str, torch.Tensor]:
    return activation_scores(model, request.dataloader, request.kinds, request.normalize)


@register_scorer("magnitude")
def _magnitude(model: nn.Module, request: ScoreRequest) -> dict[str, torch.Tensor]:
    functions = {"heads": magnitude_head_scores, "ffn": magnitude_ffn_scores}
    return {kind: functions[kind](model) for kind in request.kinds}


@register_scorer("random")
def _random(model: nn.Module, request: ScoreRequest) -> dict[str, torch.Tensor]:
    functions = {"heads": random_head_scores, "ffn": random_ffn_scores}
    return {kind: functions[kind](model, seed=request.seed) for kind in request.kinds}


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

    - "importance" / "taylor": `importance_scores` (per batch / per example), all kinds from the same passes;
      `loss_fn` as there. "fisher": the same per example, squared: the diagonal empirical Fisher information of the
      gates (Kwon et al. 2022).
    - "ablation": `head_ablation_scores(model, dataloader, metric)`, heads only.
    - "activation": `hfprune.scoring.activations.activation_scores`, forward passes only (Minitron): attention-output
      norms per head, activation magnitudes per FFN neuron.
    - "magnitude": `magnitude_head_scores` / `magnitude_ffn_scores`; "random": `random_head_scores` /
      `random_ffn_scores` with `seed`. Both read no data (`dataloader` is not used).

    `normalize` defaults to the method's entry in the table (True for "importance", as Michel et al., and
    "activation"; False for the others).
    """
    if method not in SCORING_METHODS:
        raise PruningError(f"unknown scoring method {method!r}; choose {choices(SCORING_METHODS)}")
    check_setting("seed", seed, plain=False)
    info = METHODS[method]
    kinds = (kinds,) if isinstance(kinds, str) else tuple(dict.fromkeys(kinds))
    unknown = [kind for kind in kinds if kind not in info.kinds]
    if unknown or not kinds:
        raise PruningError(f"{method!r} cannot score the unit kinds {unknown}; choose from {list(info.kinds)}")
    if info.needs_data and dataloader is None:
        raise PruningError(f"{method!r} scores need data: pass a dataloader")
    normalize = info.per_layer_normalized if normalize is None else normalize
    request = ScoreRequest(kinds, dataloader if info.needs_data else None, normalize, seed, loss_fn, metric)
    return SCORERS[method](model, request)
