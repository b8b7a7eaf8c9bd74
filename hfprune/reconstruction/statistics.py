"""What one block's refit needs from the calibration tokens: second moments of its output projection's inputs X
and of the target Y, accumulated in float64 so that nothing but these small matrices is kept in memory.

X gets an appended ones column (X~ = [X, 1]), so one set of moments serves the bias refit, the errors and the
layers without a bias alike: `xtx` is X~'X~ (its last row and column hold the sums of X and the token count),
`xty` is X~'Y (its last row holds the sums of Y) and `yty` the trace of Y'Y.

Bias compensation needs far less: with the weights fixed, only the residual R = Y - X W' matters, so
`ResidualStatistics` keeps its sum and squared norm (one matmul per batch, like the forward itself, instead of the
(in + 1)^2 products per token of X~'X~).
"""

from __future__ import annotations

import torch


class BlockStatistics:
    """X~'X~, X~'Y and tr(Y'Y) over the calibration tokens of one block (padding masked out)."""

    def __init__(self, in_features: int, out_features: int, device: torch.device):
        self.xtx = torch.zeros(in_features + 1, in_features + 1, dtype=torch.float64, device=device)
        self.xty = torch.zeros(in_features + 1, out_features, dtype=torch.float64, device=device)
        self.yty = torch.zeros((), dtype=torch.float64, device=device)

    @property
    def tokens(self) -> int:
        return int(self.xtx[-1, -1])

    def add(self, inputs: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> None:
        """Add one batch: `inputs` [..., in], `target` [..., out], `mask` [...] (1 = a real token) or None."""
        x, y = _real_tokens(inputs, target, mask, self.xtx.device)
        x = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)
        self.xtx += x.T @ x
        self.xty += x.T @ y
        self.yty += (y * y).sum()

    def relative_error(self, weight: torch.Tensor, bias: torch.Tensor | None) -> float:
        """||Y - X W' - b||^2 / ||Y||^2 for a projection `weight` [out, in] and `bias` [out] (None: no bias)."""
        w = augmented(weight, bias).to(self.xtx)
        squared = self.yty - 2 * (w * self.xty.T).sum() + (w @ self.xtx * w).sum()
        return float(squared.clamp_min(0) / self.yty.clamp_min(torch.finfo(torch.float64).tiny))


class ResidualStatistics:
    """Sum and squared norm of R = Y - X W' over the calibration tokens for one fixed `weight` [out, in]: all that
    the bias fit and its errors need (||Y - X W' - b||^2 = ||R||^2 - 2 b'sum(R) + n ||b||^2)."""

    def __init__(self, weight: torch.Tensor, device: torch.device):
        self.weight = weight.detach().to(device, torch.float64)
        self.residual_sum = torch.zeros(weight.shape[0], dtype=torch.float64, device=device)
        self.residual_squares = torch.zeros((), dtype=torch.float64, device=device)
        self.yty = torch.zeros((), dtype=torch.float64, device=device)
        self.tokens = 0

    def add(self, inputs: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> None:
        """Add one batch, as `BlockStatistics.add`."""
        x, y = _real_tokens(inputs, target, mask, self.weight.device)
        residual = y - x @ self.weight.T
        self.residual_sum += residual.sum(0)
        self.residual_squares += (residual * residual).sum()
        self.yty += (y * y).sum()
        self.tokens += x.shape[0]

    def relative_error(self, weight: torch.Tensor, bias: torch.Tensor | None) -> float:
        """||Y - X W' - b||^2 / ||Y||^2; `weight` must be the one the statistics were taken with."""
        if weight.shape != self.weight.shape or not torch.equal(weight.detach().to(self.weight), self.weight):
            raise ValueError("residual statistics hold for the weight they were taken with only")
        b = torch.zeros_like(self.residual_sum) if bias is None else bias.detach().to(self.residual_sum)
        squared = self.residual_squares - 2 * (b * self.residual_sum).sum() + self.tokens * (b * b).sum()
        return float(squared.clamp_min(0) / self.yty.clamp_min(torch.finfo(torch.float64).tiny))


def _real_tokens(
    inputs: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """`inputs` and `target` as float64 rows of tokens on `device`, padding (mask 0) left out."""
    x = inputs.reshape(-1, inputs.shape[-1]).to(device, torch.float64)
    y = target.reshape(-1, target.shape[-1]).to(device, torch.float64)
    if mask is None:
        return x, y
    keep = mask.reshape(-1).to(device).bool()
    return x[keep], y[keep]


def augmented(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """[W, b] in float64: the projection acting on X~ = [X, 1] (b = 0 for a layer without a bias)."""
    weight = weight.detach().to(torch.float64)
    column = weight.new_zeros(weight.shape[0], 1) if bias is None else bias.detach().to(torch.float64)[:, None]
    return torch.cat([weight, column], dim=1)


__all__ = ["BlockStatistics", "ResidualStatistics", "augmented"]
