"""Posterior and prior distributions over the latent space.

The posterior is an object (as in diffusers' ``DiagonalGaussianDistribution``)
so every modality gets sampling, KL and densities from one place.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

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

    def log_prob_per_dim(self, z: Tensor) -> Tensor:
        """log q(z_d) of each latent dimension; z may carry extra leading sample dims."""
        return -0.5 * (LOG_2PI + self.logvar + (z - self.mean) ** 2 / self.logvar.exp())

    def log_prob(self, z: Tensor) -> Tensor:
        """log q(z), summed over the latent dimension; z may carry extra leading sample dims."""
        return self.log_prob_per_dim(z).sum(-1)

    def kl_to_standard_normal_per_dim(self) -> Tensor:
        """Analytic KL(q || N(0, I)) per latent dimension, shape ``mean.shape`` (a model's own prior may differ:
        its KL is ``Bottleneck.kl_per_dim``)."""
        return 0.5 * (self.mean**2 + self.logvar.exp() - 1.0 - self.logvar)

    def kl_to_standard_normal(self) -> Tensor:
        """Analytic KL(q || N(0, I)) summed over the latent dimension."""
        return self.kl_to_standard_normal_per_dim().sum(-1)

    def entropy(self) -> Tensor:
        return (0.5 * (LOG_2PI + 1.0 + self.logvar)).sum(-1)


class Prior(torch.nn.Module):
    """Interface for p(z). A prior with ``analytic_kl`` gives the KL per dimension in closed form; every prior
    gives the log-density of z and of each dimension's marginal (for per-dimension diagnostics)."""

    analytic_kl: ClassVar[bool] = False

    def log_prob(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def marginal_log_prob(self, z: Tensor) -> Tensor:
        """log p(z_d) of each dimension's marginal, shape ``z.shape``."""
        raise NotImplementedError

    def sample(self, num: int, latent_dim: int, temperature: float = 1.0) -> Tensor:
        raise NotImplementedError

    def analytic_kl_per_dim(self, posterior: DiagonalGaussian) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no closed-form KL")


class StandardNormalPrior(Prior):
    """p(z) = N(0, I), the prior of the classic VAE; KL is analytic."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)  # carries device and dtype

    analytic_kl = True

    def marginal_log_prob(self, z: Tensor) -> Tensor:
        return -0.5 * (LOG_2PI + z**2)

    def log_prob(self, z: Tensor) -> Tensor:
        return self.marginal_log_prob(z).sum(-1)

    def sample(self, num: int, latent_dim: int, temperature: float = 1.0) -> Tensor:
        return temperature * torch.randn(num, latent_dim, device=self._anchor.device, dtype=self._anchor.dtype)

    def analytic_kl_per_dim(self, posterior: DiagonalGaussian) -> Tensor:
        return posterior.kl_to_standard_normal_per_dim()


def _component_log_probs_per_dim(z: Tensor, means: Tensor, logvars: Tensor) -> Tensor:
    """log N(z_d; mean_kd, exp(logvar_kd)) for every component k and dimension d: (..., D) -> (..., K, D)."""
    z = z.unsqueeze(-2)
    return -0.5 * (LOG_2PI + logvars + (z - means) ** 2 / logvars.exp())


def _component_log_probs(z: Tensor, means: Tensor, logvars: Tensor) -> Tensor:
    """log N(z; mean_k, diag exp(logvar_k)) for every component k: (..., D) -> (..., K)."""
    return _component_log_probs_per_dim(z, means, logvars).sum(-1)


def _mixture_marginals(z: Tensor, log_weights: Tensor, means: Tensor, logvars: Tensor) -> Tensor:
    """log of each dimension's marginal of a diagonal Gaussian mixture: (..., D) -> (..., D)."""
    per_dim = _component_log_probs_per_dim(z, means, logvars)  # (..., K, D)
    return torch.logsumexp(log_weights.unsqueeze(-1) + per_dim, dim=-2)


class MixtureOfGaussiansPrior(Prior):
    """p(z) = sum_k pi_k N(mu_k, diag sigma_k^2) with learned weights, means and scales.

    A prior that can put its mass where the aggregate posterior is, closing the "prior hole" a single
    Gaussian leaves. The KL has no closed form: the core then uses a one-sample Monte Carlo estimate (unbiased),
    and the importance-weighted bound uses ``log_prob`` as it is.
    """

    def __init__(self, latent_dim: int, components: int = 10) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.means = torch.nn.Parameter(torch.randn(components, latent_dim, generator=generator))
        self.logvars = torch.nn.Parameter(torch.zeros(components, latent_dim))
        self.logits = torch.nn.Parameter(torch.zeros(components))

    def log_prob(self, z: Tensor) -> Tensor:
        weights = torch.log_softmax(self.logits, dim=0)
        return torch.logsumexp(weights + _component_log_probs(z, self.means, self.logvars), dim=-1)

    def marginal_log_prob(self, z: Tensor) -> Tensor:
        return _mixture_marginals(z, torch.log_softmax(self.logits, dim=0), self.means, self.logvars)

    def sample(self, num: int, latent_dim: int, temperature: float = 1.0) -> Tensor:
        component = torch.multinomial(torch.softmax(self.logits.detach(), 0), num, replacement=True)
        noise = torch.randn(num, latent_dim, device=self.means.device, dtype=self.means.dtype)
        return (self.means[component] + temperature * (0.5 * self.logvars[component]).exp() * noise).detach()


class VampPrior(Prior):
    """The VampPrior (Tomczak & Welling 2018): p(z) = 1/K sum_k q(z | u_k), the encoder's posterior at K
    learned pseudo-inputs u_k in the encoder's input space, so the prior is the aggregate posterior of a
    small learned data set. ``encode`` is the model's encoder network (input -> mean, log-variance); it is
    not registered here, so its weights are saved once, with the encoder.
    """

    def __init__(self, encode: Any, example: Tensor, components: int = 50) -> None:
        super().__init__()
        self.encode = encode
        generator = torch.Generator().manual_seed(0)
        noise = torch.randn(components, *example.shape[1:], generator=generator, device="cpu")
        # On the example's device: the meta device too, where vaekit first sizes a saved model (no data to copy).
        self.pseudo_inputs = torch.nn.Parameter(example[:1].detach().float() + 0.1 * noise.to(example.device))

    def components(self) -> tuple[Tensor, Tensor]:
        mean, logvar = self.encode(self.pseudo_inputs)
        return mean.float(), logvar.float().clamp(-30.0, 20.0)

    def log_prob(self, z: Tensor) -> Tensor:
        means, logvars = self.components()
        return torch.logsumexp(_component_log_probs(z, means, logvars), dim=-1) - math.log(len(means))

    def marginal_log_prob(self, z: Tensor) -> Tensor:
        means, logvars = self.components()
        return _mixture_marginals(z, torch.full((len(means),), -math.log(len(means)), device=z.device), means, logvars)

    def sample(self, num: int, latent_dim: int, temperature: float = 1.0) -> Tensor:
        with torch.no_grad():
            means, logvars = self.components()
            component = torch.randint(len(means), (num,), device=means.device)
            return means[component] + temperature * (0.5 * logvars[component]).exp() * torch.randn_like(
                means[component]
            )
