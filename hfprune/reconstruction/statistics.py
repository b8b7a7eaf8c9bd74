"""What one block's refit needs from the calibration tokens: second moments of its output projection's inputs X
and of the target Y, accumulated in float64 so that nothing but these small matrices is kept in memory.

X gets an appended ones column (X~ = [X, 1]), so one set of moments serves the bias refit, the errors and the
layers without a bias alike: `xtx` is X~'X~ (its last row and column hold the sums of X and the token count),
`xty` is X~'Y (its last row holds the sums of Y) and `yty` the trace of Y'Y.
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
        x = inputs.reshape(-1, inputs.shape[-1]).to(self.xtx.device, torch.float64)
        y = target.reshape(-1, target.shape[-1]).to(self.xtx.device, torch.float64)
        if mask is not None:
            keep = mask.reshape(-1).to(self.xtx.device).bool()
            x, y = x[keep], y[keep]
        x = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)
        self.xtx += x.T @ x
        self.xty += x.T @ y
        self.yty += (y * y).sum()

    def relative_error(self, weight: torch.Tensor, bias: torch.Tensor | None) -> float:
        """||Y - X W' - b||^2 / ||Y||^2 for a projection `weight` [out, in] and `bias` [out] (None: no bias)."""
        w = augmented(weight, bias).to(self.xtx)
        squared = self.yty - 2 * (w * self.xty.T).sum() + (w @ self.xtx * w).sum()
        return float(squared.clamp_min(0) / self.yty.clamp_min(torch.finfo(torch.float64).tiny))


def augmented(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """[W, b] in float64: the projection acting on X~ = [X, 1] (b = 0 for a layer without a bias)."""
    weight = weight.detach().to(torch.float64)
    column = weight.new_zeros(weight.shape[0], 1) if bias is None else bias.detach().to(torch.float64)[:, None]
    return torch.cat([weight, column], dim=1)


__all__ = ["BlockStatistics", "augmented"]
