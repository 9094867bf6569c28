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

    @classmethod
    def for_data(cls, channels: int, scale: float | None = None, mixtures: int = 1) -> Likelihood:
        """The likelihood for data of ``channels`` channels (mel bins...), from the options plugins offer:
        a fixed ``scale`` (location-scale families), ``mixtures`` (the discretised logistic)."""
        return cls()

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

    @classmethod
    def for_data(cls, channels: int, scale: float | None = None, mixtures: int = 1) -> Likelihood:
        return cls(channels, scale)

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


class DiscretizedLogistic(Likelihood):
    """8-bit intensities as a mixture of discretised logistics (Salimans et al. 2017, PixelCNN++; NVAE).

    Each intensity k/255 owns the bin [k/255 - 1/510, k/255 + 1/510] (on [-1, 1]: width 2/255), the end
    bins taking the tails, so the probabilities of the 256 values sum to one and the NLL is in bits per
    dimension comparable across papers, with no binarisation. Per channel the decoder gives ``mixtures``
    logit weights, means and log-scales, stacked as (B, channels * params_per_channel, H, W).
    """

    @classmethod
    def for_data(cls, channels: int, scale: float | None = None, mixtures: int = 1) -> Likelihood:
        return cls(channels, mixtures)

    def __init__(self, channels: int, mixtures: int = 1) -> None:
        super().__init__()
        self.channels, self.mixtures = channels, mixtures

    @property
    def params_per_channel(self) -> int:
        return 3 * self.mixtures if self.mixtures > 1 else 2

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(weights, means, log-scales), each (B, channels, mixtures, ...)."""
        batch, _, *spatial = params.shape
        grouped = params.reshape(batch, self.channels, self.params_per_channel, *spatial)
        if self.mixtures == 1:
            means, log_scales = grouped.split(1, dim=2)
            weights = torch.zeros_like(means)
        else:
            weights, means, log_scales = grouped.split(self.mixtures, dim=2)
        return weights, means, log_scales.clamp(min=-7.0)

    def log_prob(self, params: Tensor, x: Tensor, mask: Tensor | None = None) -> Tensor:
        weights, means, log_scales = self._split(params)
        centred = (2 * x - 1).unsqueeze(2)  # [0, 1] -> [-1, 1]
        inverse_scale = torch.exp(-log_scales)
        plus = inverse_scale * (centred - means + 1 / 255)
        minus = inverse_scale * (centred - means - 1 / 255)
        log_cdf_plus = plus - F.softplus(plus)  # log sigmoid: the mass below the bin's top (the lowest bin)
        log_survival_minus = -F.softplus(minus)  # log (1 - sigmoid): the mass above its bottom (the highest)
        mass = torch.sigmoid(plus) - torch.sigmoid(minus)
        middle = inverse_scale * (centred - means)
        log_density_mid = middle - log_scales - 2 * F.softplus(middle)  # for bins too narrow to subtract CDFs
        inner = torch.where(mass > 1e-5, torch.log(mass.clamp(min=1e-12)), log_density_mid - math.log(127.5))
        per_component = torch.where(
            centred < -0.999, log_cdf_plus, torch.where(centred > 0.999, log_survival_minus, inner)
        )
        elementwise = torch.logsumexp(per_component + torch.log_softmax(weights, dim=2), dim=2)
        return _sum_per_example(elementwise, mask)

    def mean(self, params: Tensor) -> Tensor:
        weights, means, _ = self._split(params)
        return ((torch.softmax(weights, dim=2) * means).sum(2).clamp(-1, 1) + 1) / 2

    def sample(self, params: Tensor) -> Tensor:
        weights, means, log_scales = self._split(params)
        choice = torch.distributions.Categorical(logits=weights.movedim(2, -1)).sample().unsqueeze(2)
        mean, log_scale = means.gather(2, choice).squeeze(2), log_scales.gather(2, choice).squeeze(2)
        u = torch.rand_like(mean).clamp(1e-5, 1 - 1e-5)
        value = mean + log_scale.exp() * (torch.log(u) - torch.log1p(-u))
        return torch.round((value.clamp(-1, 1) + 1) / 2 * 255) / 255


# The likelihoods plugins offer by name (``--model.likelihood``): one class and one entry each.
LIKELIHOODS: dict[str, type[Likelihood]] = {
    "bernoulli": Bernoulli,
    "gaussian": Gaussian,
    "laplace": Laplace,
    "discretized_logistic": DiscretizedLogistic,
    "categorical": Categorical,
}
