"""Training objectives, chosen by name (``--model.objective.name``): each one class and one table entry,
used alike by the unimodal and the joint model.

An objective turns a posterior, the bottleneck (prior and KL) and the data's log-likelihood into
per-example terms (``terms``), which the joint model averages over its subsets, and then into the
batch loss (``loss``). Every model is still validated, checkpointed and evaluated by the ELBO and the
importance-weighted NLL, whatever it trains on, so runs compare on one scale.

- ``elbo``: the evidence lower bound, with the β schedule and free bits.
- ``iwae``: the importance-weighted bound with ``samples`` = K (Burda et al. 2016); K = 1 is the ELBO
  with a one-sample KL. β weights log p(z) - log q(z|x) inside each weight (a warm-up still works).
- ``btcvae``: β-TCVAE (Chen et al. 2018): the KL split into index-code mutual information, total
  correlation and dimension-wise KL by minibatch-weighted sampling, the total correlation weighted by
  ``tc_weight``; the bound reported is the ELBO.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor

from vaekit.core.bottleneck import Bottleneck
from vaekit.core.distributions import LOG_2PI, DiagonalGaussian
from vaekit.core.schedules import free_bits_kl

# log p(x|z) for ``copies`` samples per example, z (copies * B, D) copy-major -> (copies * B,): the contract of the
# importance-weighted estimator too (``vaekit.core.estimators.iw_nll``).
LogLikelihood = Callable[[Tensor, int], Tensor]


@dataclass(frozen=True)
class ObjectiveConfig:
    """Which objective trains the model, and its settings; saved with the model as plain data."""

    name: Literal["elbo", "iwae", "btcvae"] = "elbo"
    samples: int = 5  # iwae: importance samples per example
    tc_weight: float = 6.0  # btcvae: weight of the total correlation


@dataclass
class ELBOTerms:
    """Per-example terms of one pass, in nats; ``loss`` is the batch objective (set by ``Objective.loss``).

    ``rec`` and ``kl_per_dim`` come from one posterior sample under every objective (for logging and the
    diagnostics); ``bound`` is the objective's own per-example bound where it is not the ELBO (IWAE), and
    ``extras`` its named per-example terms (β-TCVAE's ``mi``, ``tc``, ``dwkl``).
    """

    rec: Tensor
    kl: Tensor
    kl_per_dim: Tensor
    posterior: DiagonalGaussian
    loss: Tensor | None = None
    bound: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)

    @property
    def elbo(self) -> Tensor:
        return -(self.rec + self.kl)


def mix_terms(terms: list[ELBOTerms], shares: Tensor, posterior: DiagonalGaussian) -> ELBOTerms:
    """Each example's average of several passes' terms, with weights ``shares`` (passes, B): how the joint
    model averages its subsets' bounds."""

    def mix(values: list[Tensor]) -> Tensor:
        stacked = torch.stack(values)
        return (stacked * shares.view(*shares.shape, *([1] * (stacked.dim() - 2)))).sum(0)

    kl_per_dim = mix([t.kl_per_dim for t in terms])
    return ELBOTerms(
        rec=mix([t.rec for t in terms]),
        kl=kl_per_dim.sum(-1),
        kl_per_dim=kl_per_dim,
        posterior=posterior,
        bound=None if terms[0].bound is None else mix([t.bound for t in terms]),
        extras={key: mix([t.extras[key] for t in terms]) for key in terms[0].extras},
    )


class Objective:
    """The interface: ``terms`` per example, then ``loss`` for the batch."""

    name: ClassVar[str]

    def __init__(
        self, config: ObjectiveConfig | None = None, free_bits: float = 0.0, prior: str = "standard_normal"
    ) -> None:
        self.config = config or ObjectiveConfig(name=self.name)

    def attach_data(self, size: int | None) -> None:
        """Told the training split's size when fitting (None when it is unknown, a stream)."""

    def terms(
        self, posterior: DiagonalGaussian, bottleneck: Bottleneck, log_likelihood: LogLikelihood, beta: float
    ) -> ELBOTerms:
        raise NotImplementedError

    def loss(self, terms: ELBOTerms, beta: float, free_bits: float) -> Tensor:
        raise NotImplementedError


def _elbo_terms(
    posterior: DiagonalGaussian, bottleneck: Bottleneck, log_likelihood: LogLikelihood
) -> tuple[Tensor, ELBOTerms]:
    """One reparameterised sample, its reconstruction term and the KL per dimension."""
    z = posterior.rsample()
    rec = -log_likelihood(z, 1)
    kl_per_dim = bottleneck.kl_per_dim(posterior, z)
    return z, ELBOTerms(rec=rec, kl=kl_per_dim.sum(-1), kl_per_dim=kl_per_dim, posterior=posterior)


class ELBO(Objective):
    """Sums over data and latent dimensions, the mean over the batch: the negative ELBO per example in nats."""

    name = "elbo"

    def terms(
        self, posterior: DiagonalGaussian, bottleneck: Bottleneck, log_likelihood: LogLikelihood, beta: float
    ) -> ELBOTerms:
        return _elbo_terms(posterior, bottleneck, log_likelihood)[1]

    def loss(self, terms: ELBOTerms, beta: float, free_bits: float) -> Tensor:
        return terms.rec.mean() + beta * free_bits_kl(terms.kl_per_dim, free_bits)


class IWAE(Objective):
    """-(log mean_k w_k), w_k = p(x|z_k) p(z_k)^β / q(z_k|x)^β, z_k ~ q(z|x), k = 1..K."""

    name = "iwae"

    def __init__(
        self, config: ObjectiveConfig | None = None, free_bits: float = 0.0, prior: str = "standard_normal"
    ) -> None:
        super().__init__(config, free_bits, prior)
        if self.config.samples < 1:
            raise ValueError(f"--model.objective.samples must be at least 1, got {self.config.samples}")
        if free_bits > 0:
            raise ValueError(
                "free bits shape the ELBO's KL term, which the IWAE bound has not; set --model.free_bits 0"
            )

    def terms(
        self, posterior: DiagonalGaussian, bottleneck: Bottleneck, log_likelihood: LogLikelihood, beta: float
    ) -> ELBOTerms:
        samples = self.config.samples
        z = posterior.rsample((samples,))  # (K, B, D)
        log_px = log_likelihood(z.reshape(-1, z.shape[-1]), samples).view(samples, -1)
        log_w = log_px + beta * (bottleneck.prior.log_prob(z) - posterior.log_prob(z))
        bound = torch.logsumexp(log_w, dim=0) - math.log(samples)
        kl_per_dim = bottleneck.kl_per_dim(posterior, z[0])
        return ELBOTerms(rec=-log_px[0], kl=kl_per_dim.sum(-1), kl_per_dim=kl_per_dim, posterior=posterior, bound=bound)

    def loss(self, terms: ELBOTerms, beta: float, free_bits: float) -> Tensor:
        return -terms.bound.mean()


class BetaTCVAE(Objective):
    """rec + β (MI + tc_weight · TC + DWKL), estimated by minibatch-weighted sampling over a data set of
    ``dataset_size`` examples (the training split's size, set when fitting; the batch's own size otherwise)."""

    name = "btcvae"

    def __init__(
        self, config: ObjectiveConfig | None = None, free_bits: float = 0.0, prior: str = "standard_normal"
    ) -> None:
        super().__init__(config, free_bits, prior)
        if free_bits > 0:
            raise ValueError("β-TCVAE weights its own KL terms; set --model.free_bits 0")
        if prior != "standard_normal":
            raise ValueError("β-TCVAE splits the KL against a factorised prior; use --model.prior standard_normal")
        self.dataset_size: int | None = None

    def attach_data(self, size: int | None) -> None:
        self.dataset_size = size

    def terms(
        self, posterior: DiagonalGaussian, bottleneck: Bottleneck, log_likelihood: LogLikelihood, beta: float
    ) -> ELBOTerms:
        z, terms = _elbo_terms(posterior, bottleneck, log_likelihood)
        terms.extras = tc_decomposition(posterior, z, bottleneck, self.dataset_size or z.shape[0])
        return terms

    def loss(self, terms: ELBOTerms, beta: float, free_bits: float) -> Tensor:
        parts = terms.extras
        return terms.rec.mean() + beta * (parts["mi"] + self.config.tc_weight * parts["tc"] + parts["dwkl"]).mean()


def tc_decomposition(
    posterior: DiagonalGaussian, z: Tensor, bottleneck: Bottleneck, dataset_size: int
) -> dict[str, Tensor]:
    """Per example: index-code MI, total correlation and dimension-wise KL, which sum to log q(z|x) - log p(z)
    (the one-sample KL). q(z) and its marginals are estimated over the batch by minibatch-weighted sampling."""
    batch = z.shape[0]
    pairwise = -0.5 * (
        LOG_2PI + posterior.logvar[None] + (z[:, None] - posterior.mean[None]) ** 2 / posterior.logvar.exp()[None]
    )
    normaliser = math.log(batch * dataset_size)
    log_qz = torch.logsumexp(pairwise.sum(-1), dim=1) - normaliser  # (B,)
    log_qz_marginals = (torch.logsumexp(pairwise, dim=1) - normaliser).sum(-1)  # (B,)
    log_qz_given_x = posterior.log_prob(z)
    return {
        "mi": log_qz_given_x - log_qz,
        "tc": log_qz - log_qz_marginals,
        "dwkl": log_qz_marginals - bottleneck.prior.log_prob(z),
    }


OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (ELBO, IWAE, BetaTCVAE)}
# The bound every model is validated, selected and evaluated by, whatever it trains on (it holds no state).
THE_ELBO = ELBO()


def build_objective(config: ObjectiveConfig, free_bits: float, prior: str) -> Objective:
    """The objective ``config`` names, checked against the model's free bits and prior (by its name)."""
    return OBJECTIVES[config.name](config, free_bits, prior)
