"""Pictures of the latent space."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from vaekit.core.io import atomic_path


def project_2d(means: Tensor, method: str = "pca", seed: int = 0) -> tuple[Tensor, str]:
    """2-D coordinates of the posterior means and the axis name: the means themselves when 2-D, else their
    first two principal components, a t-SNE (scikit-learn) or a UMAP (umap-learn) embedding.

    PCA keeps distances but shows only the two directions of largest variance; t-SNE and UMAP keep
    neighbourhoods, which is what a plot coloured by class is read for."""
    means = means.float()
    if means.shape[1] <= 2:
        return (means if means.shape[1] == 2 else torch.cat([means, torch.zeros_like(means)], 1)), "z"
    if method == "pca":
        centred = means - means.mean(0)
        _, _, v = torch.pca_lowrank(centred, q=2, center=False)
        return centred @ v[:, :2], "PC"
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(30.0, max(2.0, (len(means) - 1) / 3))
        points = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(means.numpy())
        return torch.from_numpy(points).float(), "t-SNE "
    if method == "umap":
        try:
            import umap
        except ImportError as err:
            raise ValueError("--projection umap needs umap-learn: pip install 'vaekit[umap]'") from err
        neighbours = min(15, max(2, len(means) - 1))
        points = umap.UMAP(n_neighbors=neighbours, random_state=seed).fit_transform(means.numpy())
        return torch.from_numpy(points).float(), "UMAP "
    raise ValueError(f"unknown projection {method!r}; choose pca, tsne or umap")


def latent_scatter(points: Tensor, axis: str, labels: Tensor, path: str | Path, label_names: list[str]) -> Path:
    """Scatter of the projected posterior means (``project_2d``), coloured by label when labels are known."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    ax.set_title(f"posterior means ({len(points)} examples)")
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
    return path
