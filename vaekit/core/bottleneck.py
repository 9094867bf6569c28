"""The latent bottleneck: the posterior the encoder parameterises, the prior, the KL between them and its
per-dimension diagnostics, in one object that the unimodal and the joint model share.

The KL of the loss is analytic where the prior allows (N(0, I)) and a one-sample Monte Carlo estimate
otherwise. The per-dimension diagnostics (the KL curves, the TensorBoard histogram, the collapse warning)
follow the same prior: analytic per dimension for N(0, I); for a mixture prior, whose dimensions are not
independent, the Monte Carlo KL of each dimension's posterior to the prior's marginal on that dimension,
named ``*_mc`` wherever it is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vaekit.core.distributions import DiagonalGaussian, Prior


@dataclass(frozen=True)
class Bottleneck:
    """The model's prior, with the KL and diagnostics every objective and evaluation uses."""

    prior: Prior

    @property
    def analytic(self) -> bool:
        """Whether the KL (and its per-dimension split) has a closed form under this prior."""
        return self.prior.analytic_kl

    @property
    def diagnostic_name(self) -> str:
        """How the per-dimension KL is named in logs: ``kl_per_dim``, or ``kl_per_dim_mc`` when estimated."""
        return "kl_per_dim" if self.analytic else "kl_per_dim_mc"

    def posterior(self, mean: Tensor, logvar: Tensor) -> DiagonalGaussian:
        """q(z|x) in float32 even under mixed precision: the KL and the IW weights are sums of many terms."""
        return DiagonalGaussian(mean.float(), logvar.float())

    def kl_per_dim(self, posterior: DiagonalGaussian, z: Tensor) -> Tensor:
        """KL(q || p) per latent dimension for the loss: analytic where the prior allows, else the one-sample
        Monte Carlo estimate at ``z``, spread evenly over the dimensions (its sum is the KL; free bits see it)."""
        if self.analytic:
            return self.prior.analytic_kl_per_dim(posterior)
        kl_mc = posterior.log_prob(z) - self.prior.log_prob(z)
        return (kl_mc / z.shape[-1]).unsqueeze(-1).expand_as(z)

    def diagnostic_kl_per_dim(self, posterior: DiagonalGaussian) -> Tensor:
        """Per-dimension KL for diagnostics: analytic, or KL(q(z_d|x) || p(z_d)) at one posterior sample."""
        if self.analytic:
            return self.prior.analytic_kl_per_dim(posterior)
        with torch.no_grad():
            z = posterior.rsample()
            return posterior.log_prob_per_dim(z) - self.prior.marginal_log_prob(z)
