"""Pictures of the latent space."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from vaekit.core.io import atomic_path


def project_2d(means: Tensor) -> tuple[Tensor, str]:
    """The means themselves when 2-D, else their first two principal components."""
    if means.shape[1] <= 2:
        return means if means.shape[1] == 2 else torch.cat([means, torch.zeros_like(means)], 1), "z"
    centred = means - means.mean(0)
    _, _, v = torch.pca_lowrank(centred, q=2, center=False)
    return centred @ v[:, :2], "PC"


def latent_scatter(means: Tensor, labels: Tensor, path: str | Path, label_names: list[str]) -> Path:
    """Scatter of the (projected) posterior means, coloured by label when labels are known."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, axis = project_2d(means.float())
    fig, ax = plt.subplots(figsize=(6, 6), dpi=120)
    known = labels >= 0
    if known.any():
        for value in labels[known].unique().tolist():
            chosen = labels == value
            name = label_names[value] if value < len(label_names) else str(value)
            ax.scatter(points[chosen, 0], points[chosen, 1], s=4, alpha=0.6, label=name)
        ax.legend(markerscale=3, fontsize=7, loc="best")
    if (~known).any():
        ax.scatter(points[~known, 0], points[~known, 1], s=4, alpha=0.6, c="grey")
    ax.set_xlabel(f"{axis}1")
    ax.set_ylabel(f"{axis}2")
    ax.set_title(f"posterior means ({len(means)} examples)")
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
    return path
