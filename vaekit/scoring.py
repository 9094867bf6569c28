"""Anomaly scores from a VAE's likelihood, with the corrections the literature found necessary.

A likelihood alone rates simple inputs as likely: a model of digits gives an all-black image or a
constant-ish digit a high likelihood, so "low likelihood = anomaly" fails on them (Nalisnick et al. 2019).

- ``none``: the negative ELBO (or IW NLL), in nats. Right when anomalies are no simpler than the data.
- ``typicality``: the distance of the score from its typical value on in-distribution validation data
  (a per-example form of Nalisnick et al.'s typicality test): flags inputs that are *too* likely as well.
- ``complexity``: the score in bits minus the bits a lossless compressor needs for the input (Serrà et al.
  2020, "input complexity"): a likelihood ratio against a generic model of the modality.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:  # the CLI's parser reads CORRECTIONS, and must not import torch for it
    from torch import Tensor

Correction = Literal["none", "typicality", "complexity"]
CORRECTIONS: tuple[str, ...] = get_args(Correction)


def anomaly_score(
    score: Tensor, correction: Correction, typical: float | None = None, complexity_bits: Tensor | None = None
) -> Tensor:
    """Higher is more anomalous. ``score`` is the negative ELBO or IW NLL per example, in nats."""
    if correction == "none":
        return score
    if correction == "typicality":
        if typical is None:
            raise ValueError("the typicality correction needs the typical score of in-distribution data")
        return (score - typical).abs()
    if correction == "complexity":
        if complexity_bits is None:
            raise ValueError("the complexity correction needs each input's compressed size")
        return score / math.log(2) - complexity_bits
    raise ValueError(f"unknown correction {correction!r}; choose one of {CORRECTIONS}")


def auroc(scores: Tensor, is_anomaly: Tensor) -> float | None:
    """Area under the ROC curve of ``scores`` at finding the anomalies; None without both kinds present."""
    from torchmetrics.functional.classification import binary_auroc

    if not 0 < int(is_anomaly.sum()) < len(is_anomaly):
        return None
    # Min-max scaling keeps the ranking (all AUROC sees) and stops torchmetrics applying a sigmoid.
    scaled = (scores - scores.min()) / (scores.max() - scores.min()).clamp(min=1e-12)
    return float(binary_auroc(scaled.double(), is_anomaly.long()))
