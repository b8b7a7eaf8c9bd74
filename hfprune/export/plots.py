"""The heatmaps a model card shows: which heads survived, and how important each head was before pruning.

Kept apart from the card's text so that matplotlib, an optional heavy import, is loaded only inside the two
plotting functions, and so that a scoring job can draw its heatmap without rendering a card.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["kept_matrix", "plot_head_importance", "plot_surviving_heads"]


def kept_matrix(record: dict[str, Any]) -> torch.Tensor:
    """[original layers, original heads]: 1 kept, 0 pruned, -1 for a dropped layer."""
    original = record["original"]
    matrix = torch.full((original["num_layers"], original["num_heads"]), -1.0)
    for current, layer in enumerate(record["kept_layers"]):
        matrix[layer] = 0.0
        matrix[layer, record["kept_heads"][current]] = 1.0
    return matrix


def plot_surviving_heads(record: dict[str, Any], path: str | Path) -> None:
    """Heatmap of the original layers x heads: kept, pruned, or in a dropped layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    matrix = kept_matrix(record).numpy()
    layers, heads = matrix.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * heads + 2), max(2.5, 0.35 * layers + 1.5)))
    colors = ["#d9d9d9", "#f4a582", "#2166ac"]  # dropped layer, pruned head, kept head
    ax.imshow(matrix, cmap=ListedColormap(colors), vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
    ax.set_xlabel("head (original index)")
    ax.set_ylabel("layer (original index)")
    ax.set_xticks(range(heads))
    ax.set_yticks(range(layers))
    ax.set_xticks([x - 0.5 for x in range(1, heads)], minor=True)
    ax.set_yticks([y - 0.5 for y in range(1, layers)], minor=True)
    ax.grid(which="minor", color="white", linewidth=1)
    ax.tick_params(which="minor", length=0)
    kept = int((matrix == 1).sum())
    ax.set_title(f"surviving heads: {kept} of {layers * heads}")
    labels = ["kept head", "pruned head", "dropped layer"]
    ax.legend(handles=[Patch(color=c, label=l) for c, l in zip(colors[::-1], labels)],
              loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_head_importance(
    scores: torch.Tensor, record: dict[str, Any] | None, path: str | Path, title: str = "head importance before pruning"
) -> None:
    """Heatmap of `[num_layers, num_heads]` scores; with a `record`, the heads it no longer has are crossed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers, heads = scores.shape
    matrix = kept_matrix(record) if record is not None else torch.ones(layers, heads)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * heads + 2.5), max(2.5, 0.35 * layers + 1.5)))
    image = ax.imshow(scores.numpy(), cmap="viridis", aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="importance")
    removed = [(h, l) for l in range(layers) for h in range(heads) if l < matrix.shape[0] and matrix[l, h] != 1]
    if removed:
        ax.scatter(*zip(*removed), marker="x", color="white", s=30, linewidths=1.2, label="removed")
    ax.set_xlabel("head (original index)")
    ax.set_ylabel("layer (original index)")
    ax.set_xticks(range(heads))
    ax.set_yticks(range(layers))
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
