"""The one method table: from a scoring method's name to the unit kinds it scores and the scorer that does it
(`score_units`), used by `PruningTrainer`, `prune_for_task` and `hfprune score`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..constants import PER_LAYER_NORMALIZED_METHODS, SCORING_METHODS, choices
from ..errors import PruningError
from .common import GATE_KINDS, Batch, LossFn
from .loss import head_ablation_scores, importance_scores
from .weights import (
    magnitude_ffn_scores,
    magnitude_head_scores,
    random_ffn_scores,
    random_head_scores,
)

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
    - "activation": `hfprune.scoring.activations.activation_scores`, forward passes only (Minitron): attention-output
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
        from .activations import (
            activation_scores,  # it builds on this module's helpers
        )

        return activation_scores(model, dataloader, kinds, normalize)
    return importance_scores(model, dataloader, kinds, normalize, loss_fn, per_example=method == "taylor")
