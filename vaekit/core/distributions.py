"""Posterior and prior distributions over the latent space.

The posterior is an object (as in diffusers' ``DiagonalGaussianDistribution``)
so every modality gets sampling, KL and densities from one place.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)


class DiagonalGaussian:
    """N(mean, diag(exp(logvar))) over the last dimension; batch dims in front."""

    def __init__(self, mean: Tensor, logvar: Tensor) -> None:
        if mean.shape != logvar.shape:
            raise ValueError(f"mean {tuple(mean.shape)} and logvar {tuple(logvar.shape)} differ in shape")
        self.mean = mean
        # Clamped so that a wild encoder output cannot produce inf/NaN in exp().
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """Reparameterised sample of shape ``sample_shape + mean.shape``."""
        eps = torch.randn(tuple(sample_shape) + self.mean.shape, dtype=self.mean.dtype, device=self.mean.device)
        return self.mean + self.std * eps

    def mode(self) -> Tensor:
        return self.mean

    def log_prob(self, z: Tensor) -> Tensor:
        """log q(z), summed over the latent dimension; z may carry extra leading sample dims."""
        return (-0.5 * (LOG_2PI + self.logvar + (z - self.mean) ** 2 / self.logvar.exp())).sum(-1)

    def kl_per_dim(self) -> Tensor:
        """Analytic KL(q || N(0, I)) per latent dimension, shape ``mean.shape``."""
        return 0.5 * (self.mean**2 + self.logvar.exp() - 1.0 - self.logvar)

    def kl(self) -> Tensor:
        """Analytic KL(q || N(0, I)) summed over the latent dimension."""
        return self.kl_per_dim().sum(-1)

    def entropy(self) -> Tensor:
        return (0.5 * (LOG_2PI + 1.0 + self.logvar)).sum(-1)


class Prior(torch.nn.Module):
    """Interface for p(z). ``kl_per_dim`` returns None when no closed form exists."""

    def log_prob(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def sample(self, num: int, latent_dim: int, temperature: float = 1.0) -> Tensor:
        raise NotImplementedError

    def kl_per_dim(self, posterior: DiagonalGaussian) -> Tensor | None:
        return None


class StandardNormalPrior(Prior):
    """p(z) = N(0, I), the prior of the classic VAE; KL is analytic."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)  # carries device and dtype

    def log_prob(self, z: Tensor) -> Tensor:
        return (-0.5 * (LOG_2PI + z**2)).sum(-1)

    def sample(self, num: int, latent_dim: int, temperature: float = 1.0) -> Tensor:
        return temperature * torch.randn(num, latent_dim, device=self._anchor.device, dtype=self._anchor.dtype)

    def kl_per_dim(self, posterior: DiagonalGaussian) -> Tensor:
        return posterior.kl_per_dim()


PRIORS: dict[str, type[Prior]] = {"standard_normal": StandardNormalPrior}
