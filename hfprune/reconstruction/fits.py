"""The refits of an output projection from a block's `BlockStatistics`.

- `least_squares_fit`: every kept column (and the bias, where the layer has one) refitted,
  W~ = (Y'X~ + lambda W~0 D)(X~'X~ + lambda D)^-1 with D = I on the weight columns and 0 on the bias column.
- `scale_fit`: one scale per kept unit (a head's block of columns, or one FFN neuron's column), as Kwon et al.
  2022's mask tuning: the least-squares s of ||Y - b - sum_u s_u X_u W_u'||^2, whose normal equations need only
  G_uv = sum((X'X)_uv * (W'W)_uv) and rhs_u = sum(((X'Y - sum(X) b') * W')_u), folded into the columns.
- `bias_fit`: the bias alone, as FLAP (An et al. 2024) compensates removed channels: with W fixed, the
  least-squares b is mean(Y) - W mean(X), which adds to the bias the mean output of what was removed (and, with the
  "stream" target, the mean drift the layers before left). One number per output: few tokens suffice.

The first two are damped: lambda is `damping` times the mean of the normal matrix's diagonal (as SparseGPT damps
its Hessian). Damping towards the current weights rather than towards zero means a direction the calibration data
does not excite keeps its weights instead of being shrunk away, and damping 0 is the plain least-squares solution.
"""

from __future__ import annotations

import torch

from .statistics import BlockStatistics, ResidualStatistics, augmented


def least_squares_fit(
    stats: BlockStatistics, weight: torch.Tensor, bias: torch.Tensor | None, damping: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """New (weight, bias) in float64 minimising the block's output error over the calibration tokens."""
    columns = weight.shape[1]
    size = columns + (bias is not None)  # a layer without a bias leaves the ones column out
    normal, right = stats.xtx[:size, :size], stats.xty[:size]
    current = augmented(weight, bias)[:, :size].to(normal)
    ridge = torch.zeros(size, dtype=normal.dtype, device=normal.device)
    ridge[:columns] = damping * _mean_diagonal(normal[:columns, :columns])
    solution = _solve(normal + torch.diag(ridge), right + ridge[:, None] * current.T)
    new = solution.T
    return new[:, :columns], (new[:, columns] if bias is not None else None)


def scale_fit(
    stats: BlockStatistics, weight: torch.Tensor, bias: torch.Tensor | None, unit: int, damping: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """New (weight, bias) in float64: the weight's column blocks of width `unit` scaled, the bias as it is."""
    columns = weight.shape[1]
    units = columns // unit
    w = weight.detach().to(stats.xtx)
    xtx, xty = stats.xtx[:columns, :columns], stats.xty[:columns]
    if bias is not None:  # the target the units must explain is Y - b
        xty = xty - stats.xtx[:columns, columns:] * bias.detach().to(stats.xtx)[None, :]
    gram = (xtx * (w.T @ w)).reshape(units, unit, units, unit).sum(dim=(1, 3))
    right = (xty * w.T).sum(dim=1).reshape(units, unit).sum(dim=1)
    ridge = damping * _mean_diagonal(gram)
    scales = _solve(gram + ridge * torch.eye(units, dtype=gram.dtype, device=gram.device), right + ridge)
    new_bias = None if bias is None else bias.detach().to(stats.xtx)
    return w * scales.repeat_interleave(unit)[None, :], new_bias


def bias_fit(stats: ResidualStatistics, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """New (weight, bias) in float64: the weight as it is, the bias mean(Y - X W') over the calibration tokens
    (the projection must be able to carry a bias: see `reconstruction.biases`)."""
    return weight.detach().to(stats.residual_sum), stats.residual_sum / max(stats.tokens, 1)


def _mean_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    """The damping scale: the mean diagonal, or 1 where it is 0 (a unit that never fired)."""
    mean = matrix.diagonal().mean()
    return torch.where(mean > 0, mean, torch.ones_like(mean))


def _solve(matrix: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """`matrix^-1 right` for a symmetric positive semi-definite `matrix`; the pseudo-inverse if it is singular."""
    factor, info = torch.linalg.cholesky_ex(matrix)
    if int(info) == 0:
        return torch.cholesky_solve(right if right.dim() == 2 else right[:, None], factor).reshape(right.shape)
    return torch.linalg.pinv(matrix, hermitian=True) @ right


__all__ = ["bias_fit", "least_squares_fit", "scale_fit"]
