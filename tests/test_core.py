"""The maths of the core, checked against torch.distributions and Monte Carlo."""

import math

import pytest
import torch
from torch import distributions as D

from vaekit.core.distributions import DiagonalGaussian, StandardNormalPrior
from vaekit.core.estimators import active_units, iw_nll, mutual_information
from vaekit.core.likelihoods import Bernoulli, Categorical, Gaussian, Laplace
from vaekit.core.module import repeat_batch
from vaekit.core.schedules import BetaSchedule, free_bits_kl


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _posterior(batch=4, dim=3):
    return DiagonalGaussian(torch.randn(batch, dim), torch.randn(batch, dim) * 0.5)


def test_analytic_kl_matches_monte_carlo():
    q = _posterior()
    z = q.rsample((200_000,))
    mc = (q.log_prob(z) - StandardNormalPrior().log_prob(z)).mean(0)
    torch.testing.assert_close(q.kl_to_standard_normal(), mc, atol=0.02, rtol=0.01)


def test_analytic_kl_matches_torch_distributions():
    q = _posterior()
    reference = D.kl_divergence(D.Normal(q.mean, q.std), D.Normal(0.0, 1.0))
    torch.testing.assert_close(q.kl_to_standard_normal_per_dim(), reference)


def test_posterior_log_prob_and_entropy_match_torch():
    q = _posterior()
    z = q.rsample((5,))
    reference = D.Independent(D.Normal(q.mean, q.std), 1)
    torch.testing.assert_close(q.log_prob(z), reference.log_prob(z))
    torch.testing.assert_close(q.entropy(), reference.entropy())
    assert torch.equal(q.mode(), q.mean)


def test_rsample_is_reparameterised():
    mean = torch.zeros(2, 3, requires_grad=True)
    DiagonalGaussian(mean, torch.zeros(2, 3)).rsample().sum().backward()
    assert mean.grad is not None and torch.all(mean.grad == 1)


def test_prior_log_prob_matches_torch():
    z = torch.randn(7, 5)
    reference = D.Independent(D.Normal(torch.zeros(5), torch.ones(5)), 1).log_prob(z)
    torch.testing.assert_close(StandardNormalPrior().log_prob(z), reference)


def test_bernoulli_log_prob_matches_torch_and_sums_over_dims():
    logits, x = torch.randn(4, 1, 5, 5), torch.bernoulli(torch.full((4, 1, 5, 5), 0.3))
    reference = D.Bernoulli(logits=logits).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(Bernoulli().log_prob(logits, x), reference)


@pytest.mark.parametrize(("cls", "dist"), [(Gaussian, D.Normal), (Laplace, D.Laplace)])
def test_location_scale_log_prob_matches_torch(cls, dist):
    likelihood = cls(channels=2, scale=0.3)
    mean, x = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    reference = dist(mean, torch.full_like(mean, 0.3)).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(likelihood.log_prob(mean, x), reference)
    assert not likelihood.log_scale.requires_grad  # a fixed scale is not learned


def test_gaussian_learned_scale_is_per_channel():
    likelihood = Gaussian(channels=3)
    with torch.no_grad():
        likelihood.log_scale.copy_(torch.tensor([0.0, 1.0, -1.0]))
    mean, x = torch.zeros(2, 3, 2, 2), torch.randn(2, 3, 2, 2)
    scale = torch.tensor([0.0, 1.0, -1.0]).exp().view(1, 3, 1, 1).expand_as(mean)
    torch.testing.assert_close(likelihood.log_prob(mean, x), D.Normal(mean, scale).log_prob(x).flatten(1).sum(1))


def test_categorical_log_prob_masks_padding():
    logits, tokens = torch.randn(2, 4, 6), torch.randint(0, 6, (2, 4))
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.float)
    per_token = D.Categorical(logits=logits).log_prob(tokens)
    torch.testing.assert_close(Categorical().log_prob(logits, tokens, mask), (per_token * mask).sum(1))


def _toy_model(dim=2, data=3):
    """A linear-Gaussian decoder: p(x|z) = N(Wz, 0.5^2 I); the exact log p(x) is known."""
    weight = torch.randn(data, dim)
    likelihood = Gaussian(channels=1, scale=0.5)

    def log_likelihood(z, copies):
        mean = (z @ weight.T).unsqueeze(1)  # (rows, 1, data): channel axis 1
        return likelihood.log_prob(mean, x.repeat(copies, 1).unsqueeze(1))

    x = torch.randn(5, data)
    marginal = D.MultivariateNormal(torch.zeros(data), weight @ weight.T + 0.25 * torch.eye(data))
    return x, weight, log_likelihood, -marginal.log_prob(x)


def test_iw_bound_below_negative_elbo_and_tightens_with_k():
    _, _, log_likelihood, exact_nll = _toy_model()
    q = DiagonalGaussian(torch.zeros(5, 2), torch.full((5, 2), -0.5))  # a deliberately poor posterior
    prior = StandardNormalPrior()
    z = q.rsample((20_000,))
    neg_elbo = -(log_likelihood(z.reshape(-1, 2), 20_000).view(20_000, 5).mean(0) - q.kl_to_standard_normal())
    estimates = {k: iw_nll(q, prior, log_likelihood, k).mean() for k in (1, 10, 1000)}
    # K=1 is an unbiased estimate of -ELBO; larger K is lower and closer to the exact -log p(x).
    assert estimates[1] == pytest.approx(neg_elbo.mean().item(), rel=0.05)
    assert exact_nll.mean() <= estimates[1000] <= estimates[10] <= estimates[1]
    assert estimates[1000] - exact_nll.mean() < 0.2 * (estimates[1] - exact_nll.mean())


def test_iw_with_the_exact_posterior_is_exact_for_any_k_and_chunking():
    """With q(z|x) the true posterior every weight equals p(x): the estimate must be exact."""
    x, weight, log_likelihood, exact_nll = _toy_model(dim=1)
    precision = 1 + (weight**2).sum() / 0.25  # posterior of z given x for p(z)=N(0,1), x|z ~ N(wz, 0.25 I)
    mean = x @ weight / 0.25 / precision
    q = DiagonalGaussian(mean, torch.full_like(mean, -math.log(precision)))
    for k, rows in ((1, 10_000), (50, 10_000), (50, 5 * 3)):
        estimate = iw_nll(q, StandardNormalPrior(), log_likelihood, k, max_rows=rows)
        torch.testing.assert_close(estimate, exact_nll, atol=1e-4, rtol=1e-5)


def test_repeat_batch_is_copy_major():
    batch = {"x": torch.arange(3), "m": torch.arange(6).view(3, 2)}
    repeated = repeat_batch(batch, 2)
    assert repeated["x"].tolist() == [0, 1, 2, 0, 1, 2]
    assert repeated["m"].shape == (6, 2) and torch.equal(repeated["m"][3:], batch["m"])


def test_free_bits_clamps_per_dimension_batch_mean():
    kl = torch.tensor([[0.1, 2.0], [0.3, 4.0]])  # batch-mean KL per dim: 0.2 and 3.0
    assert free_bits_kl(kl, 0.0).item() == pytest.approx(3.2)
    assert free_bits_kl(kl, 0.5).item() == pytest.approx(0.5 + 3.0)
    kl.requires_grad_(True)
    free_bits_kl(kl, 0.5).backward()
    # The dimension below its target gets no gradient; the other gets the batch-mean gradient.
    assert kl.grad[:, 0].abs().sum() == 0 and torch.allclose(kl.grad[:, 1], torch.tensor(0.5))


def test_beta_schedules_at_known_steps():
    assert BetaSchedule("constant", max=0.7)(12345) == 0.7
    assert [BetaSchedule("constant", max=0.7, start_step=10)(s) for s in (9, 10)] == [0.0, 0.7]
    linear = BetaSchedule("linear", max=1.0, warmup_steps=100, start_step=50)
    assert [linear(s) for s in (0, 50, 100, 150, 1000)] == [0.0, 0.0, 0.5, 1.0, 1.0]
    cyclical = BetaSchedule("cyclical", max=2.0, cycle_steps=100, ratio=0.5)
    assert [cyclical(s) for s in (0, 25, 50, 99, 100, 125)] == [0.0, 1.0, 2.0, 2.0, 0.0, 1.0]
    limited = BetaSchedule("cyclical", max=1.0, cycle_steps=10, ratio=0.5, num_cycles=2)
    assert limited(15) == 1.0 and limited(10) == 0.0 and limited(20) == 1.0 and limited(25) == 1.0


def test_beta_schedule_rejects_bad_settings():
    with pytest.raises(ValueError, match="ratio"):
        BetaSchedule("cyclical", ratio=0.0)
    with pytest.raises(ValueError, match=">= 0"):
        BetaSchedule("constant", max=-1.0)


def test_active_units_counts_dimensions_that_vary():
    means = torch.stack([torch.randn(500), torch.randn(500) * 0.01, torch.zeros(500)], dim=1)
    assert active_units(means).item() == 1


def test_mutual_information_zero_when_posteriors_ignore_x_and_high_when_separated():
    same = mutual_information(torch.zeros(400, 2), torch.zeros(400, 2))
    assert abs(same.item()) < 0.05
    # Four well-separated posteriors: MI approaches log 4.
    means = torch.tensor([[-20.0, 0.0], [20.0, 0.0], [0.0, 20.0], [0.0, -20.0]]).repeat(1000, 1)
    separated = mutual_information(means, torch.zeros(4000, 2))
    assert separated.item() == pytest.approx(math.log(4), abs=0.05)
