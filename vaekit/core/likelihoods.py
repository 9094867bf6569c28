"""Decoder likelihoods p(x|z).

Every ``log_prob`` sums over all data dimensions (pixels, mel bins x frames,
tokens) and returns one number per example, in nats. Averaging over
dimensions instead would re-weight the KL term: the classic bug, not shipped.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _sum_per_example(elementwise: Tensor, mask: Tensor | None) -> Tensor:
    if mask is not None:
        elementwise = elementwise * mask
    return elementwise.flatten(1).sum(1)


class Likelihood(nn.Module):
    """p(x | decoder output). ``params`` is what the decoder returns."""

    def log_prob(self, params: Tensor, x: Tensor, mask: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def mean(self, params: Tensor) -> Tensor:
        raise NotImplementedError

    def sample(self, params: Tensor) -> Tensor:
        raise NotImplementedError


class Bernoulli(Likelihood):
    """Bernoulli over binary (or binarised) data; the decoder returns logits."""

    def log_prob(self, params: Tensor, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return _sum_per_example(-F.binary_cross_entropy_with_logits(params, x, reduction="none"), mask)

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params)

    def sample(self, params: Tensor) -> Tensor:
        return torch.bernoulli(torch.sigmoid(params))


class _LocationScale(Likelihood):
    """Shared scale handling: one learned log-scale per channel, or a fixed one."""

    def __init__(self, channels: int = 1, scale: float | None = None) -> None:
        super().__init__()
        init = math.log(scale) if scale is not None else 0.0
        self.log_scale = nn.Parameter(torch.full((channels,), init), requires_grad=scale is None)

    def _log_scale(self, params: Tensor) -> Tensor:
        # Broadcast over (N, C, ...) with the channel axis at dim 1.
        return self.log_scale.view(1, -1, *([1] * (params.dim() - 2))).clamp(min=-7.0)

    def mean(self, params: Tensor) -> Tensor:
        return params


class Gaussian(_LocationScale):
    """Gaussian with the decoder output as the mean (continuous images, log-mels)."""

    def log_prob(self, params: Tensor, x: Tensor, mask: Tensor | None = None) -> Tensor:
        log_scale = self._log_scale(params)
        elementwise = -0.5 * math.log(2 * math.pi) - log_scale - 0.5 * ((x - params) / log_scale.exp()) ** 2
        return _sum_per_example(elementwise, mask)

    def sample(self, params: Tensor) -> Tensor:
        return params + self._log_scale(params).exp() * torch.randn_like(params)


class Laplace(_LocationScale):
    """Laplace with the decoder output as the location: robust to spectral outliers."""

    def log_prob(self, params: Tensor, x: Tensor, mask: Tensor | None = None) -> Tensor:
        log_scale = self._log_scale(params)
        elementwise = -math.log(2.0) - log_scale - (x - params).abs() / log_scale.exp()
        return _sum_per_example(elementwise, mask)

    def sample(self, params: Tensor) -> Tensor:
        return torch.distributions.Laplace(params, self._log_scale(params).exp()).sample()


class Categorical(Likelihood):
    """Categorical over a vocabulary; params are logits (N, T, V), x token ids (N, T)."""

    def log_prob(self, params: Tensor, x: Tensor, mask: Tensor | None = None) -> Tensor:
        logp = -F.cross_entropy(params.transpose(1, 2), x, reduction="none")
        return _sum_per_example(logp, mask)

    def mean(self, params: Tensor) -> Tensor:
        return params.softmax(-1)

    def sample(self, params: Tensor) -> Tensor:
        return torch.distributions.Categorical(logits=params).sample()
