"""The objectives by name: IWAE against the ELBO and an exact likelihood, β-TCVAE's decomposition of the KL,
and each one training a real recipe end to end; the diagnostics under a learned prior."""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import fit_args, vaekit
from vaekit.checkpoint import load_model
from vaekit.core.bottleneck import Bottleneck
from vaekit.core.distributions import DiagonalGaussian, MixtureOfGaussiansPrior, StandardNormalPrior
from vaekit.core.objectives import ELBO, IWAE, BetaTCVAE, ObjectiveConfig, tc_decomposition

D, X = 3, 5
NOISE = 0.5


def linear_gaussian(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x = W z + noise, z ~ N(0, I): p(x) and p(z|x) are Gaussian in closed form."""
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(X, D, generator=generator, dtype=torch.float64)
    x = torch.randn(4, X, generator=generator, dtype=torch.float64)
    return weights, x


def log_likelihood_of(weights: torch.Tensor, x: torch.Tensor):
    def log_likelihood(z: torch.Tensor, copies: int) -> torch.Tensor:  # (copies * B, D) -> (copies * B,)
        return torch.distributions.Normal(z @ weights.T, NOISE).log_prob(x.repeat(copies, 1)).sum(-1)

    return log_likelihood


def exact_log_evidence(weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    covariance = weights @ weights.T + NOISE**2 * torch.eye(X, dtype=weights.dtype)
    return torch.distributions.MultivariateNormal(torch.zeros(X, dtype=weights.dtype), covariance).log_prob(x)


def approximate_posterior(weights: torch.Tensor, x: torch.Tensor) -> DiagonalGaussian:
    """The exact posterior's mean with the diagonal of its covariance: close, but not exact."""
    precision = weights.T @ weights / NOISE**2 + torch.eye(D, dtype=weights.dtype)
    covariance = torch.linalg.inv(precision)
    mean = (x @ weights / NOISE**2) @ covariance
    return DiagonalGaussian(mean, covariance.diagonal().log().expand_as(mean) + 0.5)


def mean_bound(objective, posterior, log_likelihood, draws: int = 400) -> torch.Tensor:
    bottleneck = Bottleneck(StandardNormalPrior().double())
    values = []
    for _ in range(draws):
        terms = objective.terms(posterior, bottleneck, log_likelihood, 1.0)
        values.append(terms.elbo if terms.bound is None else terms.bound)
    return torch.stack(values).mean(0)


def test_iwae_with_one_sample_is_the_elbo_with_a_one_sample_kl():
    weights, x = linear_gaussian()
    posterior, log_likelihood = approximate_posterior(weights, x), log_likelihood_of(weights, x)
    bottleneck = Bottleneck(StandardNormalPrior().double())
    torch.manual_seed(0)
    bound = IWAE(ObjectiveConfig("iwae", samples=1)).terms(posterior, bottleneck, log_likelihood, 1.0).bound
    torch.manual_seed(0)
    z = posterior.rsample((1,))[0]
    one_sample_elbo = log_likelihood(z, 1) + bottleneck.prior.log_prob(z) - posterior.log_prob(z)
    torch.testing.assert_close(bound, one_sample_elbo)
    # In expectation, the ELBO in closed form (a linear-Gaussian decoder): within 4 standard errors.
    torch.manual_seed(1)
    iwae = IWAE(ObjectiveConfig("iwae", samples=1))
    draws = torch.stack([iwae.terms(posterior, bottleneck, log_likelihood, 1.0).bound for _ in range(4000)])
    mean_x, var_z = posterior.mean @ weights.T, posterior.logvar.exp()
    expected_log_px = (
        torch.distributions.Normal(mean_x, NOISE).log_prob(x).sum(-1) - 0.5 * (var_z @ (weights**2).sum(0)) / NOISE**2
    )
    exact_elbo = expected_log_px - posterior.kl_to_standard_normal()
    assert ((draws.mean(0) - exact_elbo).abs() < 4 * draws.std(0) / 4000**0.5).all(), (draws.mean(0), exact_elbo)


def test_iwae_tightens_with_k_towards_the_exact_log_likelihood():
    weights, x = linear_gaussian()
    posterior, log_likelihood = approximate_posterior(weights, x), log_likelihood_of(weights, x)
    exact = exact_log_evidence(weights, x)
    torch.manual_seed(0)
    elbo = mean_bound(ELBO(), posterior, log_likelihood)
    iwae = {k: mean_bound(IWAE(ObjectiveConfig("iwae", samples=k)), posterior, log_likelihood) for k in (5, 50)}
    assert (elbo < iwae[5]).all() and (iwae[5] < iwae[50]).all() and (iwae[50] <= exact + 0.01).all()
    assert (exact - iwae[50]).max() < 0.5 * (exact - elbo).min(), (exact, elbo, iwae)


def test_iwae_with_the_exact_posterior_equals_log_p_x():
    """Every importance weight is p(x): the bound is exact for any K and any sample."""
    weights, x = linear_gaussian()
    # A diagonal posterior is exact when the posterior covariance is diagonal: W with orthogonal columns.
    weights = torch.linalg.qr(weights)[0] * 2.0
    precision = weights.T @ weights / NOISE**2 + torch.eye(D, dtype=weights.dtype)
    covariance = torch.linalg.inv(precision)
    mean = (x @ weights / NOISE**2) @ covariance
    posterior = DiagonalGaussian(mean, covariance.diagonal().log().expand_as(mean))
    terms = IWAE(ObjectiveConfig("iwae", samples=3)).terms(
        posterior, Bottleneck(StandardNormalPrior().double()), log_likelihood_of(weights, x), 1.0
    )
    torch.testing.assert_close(terms.bound, exact_log_evidence(weights, x))


def test_tc_decomposition_sums_to_the_kl_and_sees_correlation():
    torch.manual_seed(0)
    bottleneck = Bottleneck(StandardNormalPrior())
    mean, logvar = torch.randn(256, D), torch.full((256, D), -2.0)
    posterior = DiagonalGaussian(mean, logvar)
    z = posterior.rsample()
    parts = tc_decomposition(posterior, z, bottleneck, dataset_size=256)
    torch.testing.assert_close(
        parts["mi"] + parts["tc"] + parts["dwkl"], posterior.log_prob(z) - bottleneck.prior.log_prob(z)
    )
    # Its mean is the KL: the analytic KL to N(0, I), within Monte Carlo error over many draws.
    totals = []
    for _ in range(200):
        z = posterior.rsample()
        parts = tc_decomposition(posterior, z, bottleneck, dataset_size=256)
        totals.append((parts["mi"] + parts["tc"] + parts["dwkl"]).mean())
    assert torch.stack(totals).mean().item() == pytest.approx(posterior.kl_to_standard_normal().mean().item(), abs=0.05)
    # Codes whose dimensions move together have a total correlation that independent ones lack.
    shared = torch.randn(256, 1).expand(256, D).contiguous()
    correlated = DiagonalGaussian(shared, logvar)
    tc_correlated = tc_decomposition(correlated, correlated.rsample(), bottleneck, 256)["tc"].mean()
    tc_independent = tc_decomposition(posterior, posterior.rsample(), bottleneck, 256)["tc"].mean()
    assert tc_correlated > tc_independent + 1.0, (tc_correlated, tc_independent)


def test_objectives_refuse_settings_they_cannot_honour():
    with pytest.raises(ValueError, match="free bits"):
        IWAE(ObjectiveConfig("iwae"), free_bits=0.5)
    with pytest.raises(ValueError, match="factorised prior"):
        BetaTCVAE(ObjectiveConfig("btcvae"), prior="mog")


@pytest.mark.parametrize("objective", [["--model.objective.name", "iwae", "--model.objective.samples", "3"],
                                       ["--model.objective.name", "btcvae", "--model.objective.tc_weight", "4"]],
                         ids=["iwae", "btcvae"])  # fmt: skip
def test_each_objective_trains_a_recipe_and_its_model_evaluates(objective, tmp_path):
    vaekit(*fit_args("configs/image/tiny.yaml", tmp_path, "--trainer.max_steps", "4", "--samples.num", "0",
                     "--model.free_bits", "0", *objective))  # fmt: skip
    model, _ = load_model(tmp_path / "checkpoints" / "last.ckpt")
    assert model.objective.name == objective[1]
    vaekit("evaluate", tmp_path / "checkpoints" / "last.ckpt", "--iw-samples", "4", "--max-examples", "8",
           "--out", tmp_path / "eval.json")  # fmt: skip
    assert math.isfinite(__import__("json").loads((tmp_path / "eval.json").read_text())["nll"])


def test_per_dimension_kl_follows_a_mixture_prior():
    """The diagnostics measure KL to the model's prior: a posterior sitting on a mixture component far from the
    origin has little KL to the mixture, and a large one to N(0, I), which the diagnostics used to report."""
    torch.manual_seed(0)
    prior = MixtureOfGaussiansPrior(D, 2)
    with torch.no_grad():
        prior.means.copy_(torch.tensor([[4.0] * D, [-4.0] * D]))
        prior.logvars.fill_(math.log(0.25))
    bottleneck = Bottleneck(prior)
    posterior = DiagonalGaussian(torch.full((512, D), 4.0), torch.full((512, D), math.log(0.25)))
    estimates = torch.stack([bottleneck.diagnostic_kl_per_dim(posterior).mean(0) for _ in range(50)])
    per_dim = estimates.mean(0)
    # The marginal of each dimension is the two-component mixture: KL(N(4, 0.25) || 0.5 N(4, .25) + 0.5 N(-4, .25)) = log 2.
    torch.testing.assert_close(per_dim, torch.full((D,), math.log(2)), atol=0.02, rtol=0)
    assert (posterior.kl_to_standard_normal_per_dim().mean(0) > 7).all()
    assert (
        bottleneck.diagnostic_name == "kl_per_dim_mc"
        and Bottleneck(StandardNormalPrior()).diagnostic_name == "kl_per_dim"
    )


def test_a_mixture_prior_model_logs_its_per_dimension_kl_as_an_estimate(tmp_path):
    vaekit(*fit_args("configs/image/tiny.yaml", tmp_path, "--model.prior", "mog", "--trainer.max_epochs", "1",
                     "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1", "--samples.num", "0"))  # fmt: skip
    header = next(tmp_path.rglob("metrics.csv")).read_text().splitlines()[0].split(",")
    assert "val_kl_per_dim_mc/000" in header and not any(c.startswith("val_kl_per_dim/") for c in header)
