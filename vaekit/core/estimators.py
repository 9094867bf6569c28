"""Importance-weighted likelihood, active units and mutual information."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from vaekit.core.distributions import LOG_2PI, DiagonalGaussian, Prior


def iw_nll(
    posterior: DiagonalGaussian,
    prior: Prior,
    log_likelihood: Callable[[Tensor, int], Tensor],
    num_samples: int,
    max_rows: int = 1024,
) -> Tensor:
    """Importance-weighted estimate of -log p(x) per example (Burda et al. 2016).

    ``log_likelihood(z, copies)`` receives ``z`` of shape (copies * B, D), ordered copy-major, and
    returns log p(x|z) of shape (copies * B,). Samples are drawn in chunks of at most ``max_rows``
    decoder rows so memory stays bounded for any K; the running log-sum-exp keeps it stable.
    """
    batch, latent_dim = posterior.mean.shape
    chunk = max(1, min(num_samples, max_rows // max(batch, 1)))
    running = torch.full((batch,), -math.inf, device=posterior.mean.device, dtype=posterior.mean.dtype)
    done = 0
    while done < num_samples:
        copies = min(chunk, num_samples - done)
        z = posterior.rsample((copies,))  # (copies, B, D)
        log_px = log_likelihood(z.reshape(copies * batch, latent_dim), copies).view(copies, batch)
        log_w = log_px + prior.log_prob(z) - posterior.log_prob(z)
        running = torch.logaddexp(running, torch.logsumexp(log_w, dim=0))
        done += copies
    return -(running - math.log(num_samples))


def active_units(means: Tensor, threshold: float = 0.01) -> Tensor:
    """Number of dimensions whose posterior mean varies across data: Var_x E_q[z|x] > threshold."""
    return (means.var(0, unbiased=True) > threshold).sum()


def mutual_information(mean: Tensor, logvar: Tensor, chunk: int = 256) -> Tensor:
    """I_q(x; z) under the aggregate posterior (He et al. 2019), estimated over the rows given.

    MI = E_x[-H(q(z|x))] - E_{x, z~q(z|x)}[log q(z)], with q(z) the mixture of all rows' posteriors.
    """
    num, dim = mean.shape
    neg_entropy = (-0.5 * dim * LOG_2PI - 0.5 * (1 + logvar).sum(-1)).mean()
    z = DiagonalGaussian(mean, logvar).rsample()
    var = logvar.exp()
    log_qz = []
    for start in range(0, num, chunk):
        dev = z[start : start + chunk, None, :] - mean[None]  # (c, N, D)
        log_density = -0.5 * (dev**2 / var[None]).sum(-1) - 0.5 * (dim * LOG_2PI + logvar.sum(-1))[None]
        log_qz.append(torch.logsumexp(log_density, dim=1) - math.log(num))
    return neg_entropy - torch.cat(log_qz).mean()


class PosteriorDiagnostics(Metric):
    """Collects posterior parameters and the per-dimension KL to the model's prior (``Bottleneck``) over an
    epoch, across all DDP ranks, for collapse diagnostics."""

    full_state_update = False

    def __init__(self, max_examples: int = 10000) -> None:
        super().__init__()
        self.max_examples = max_examples
        self.add_state("mean", default=[], dist_reduce_fx="cat")
        self.add_state("logvar", default=[], dist_reduce_fx="cat")
        self.add_state("kl_per_dim", default=[], dist_reduce_fx="cat")

    def update(self, posterior: DiagonalGaussian, kl_per_dim: Tensor) -> None:
        self.mean.append(posterior.mean.detach().float())
        self.logvar.append(posterior.logvar.detach().float())
        self.kl_per_dim.append(kl_per_dim.detach().float())

    def compute(self) -> dict[str, Tensor]:
        mean, logvar = dim_zero_cat(self.mean), dim_zero_cat(self.logvar)
        kl_per_dim = dim_zero_cat(self.kl_per_dim).mean(0)
        # MI is quadratic in the rows: estimate it on a fixed-size prefix.
        sub = slice(0, self.max_examples)
        return {
            "active_units": active_units(mean).float(),
            "mutual_info": mutual_information(mean[sub], logvar[sub]),
            "kl_per_dim": kl_per_dim,
        }
