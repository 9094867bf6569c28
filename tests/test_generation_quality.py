"""Samples like the data: learned priors and the discretised logistic, checked against torch.distributions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import distributions as D

from tests.conftest import fit_args, vaekit
from vaekit.callbacks import posterior_means
from vaekit.checkpoint import load_datamodule, load_model
from vaekit.core.distributions import DiagonalGaussian, MixtureOfGaussiansPrior, StandardNormalPrior, VampPrior
from vaekit.core.likelihoods import DiscretizedLogistic
from vaekit.core.samplers import GaussianMixtureSampler
from vaekit.modalities.image import ImageVAE
from vaekit.modalities.text import TextDataModule, TextVAE

TINY_IMAGE = "configs/image/tiny.yaml"


def _reference_mixture(means: torch.Tensor, logvars: torch.Tensor, logits: torch.Tensor) -> D.Distribution:
    components = D.Independent(D.Normal(means, (0.5 * logvars).exp()), 1)
    return D.MixtureSameFamily(D.Categorical(logits=logits), components)


def test_mixture_prior_density_matches_torch_distributions() -> None:
    torch.manual_seed(0)
    prior = MixtureOfGaussiansPrior(latent_dim=3, components=4)
    with torch.no_grad():
        prior.logvars.normal_(0, 0.5)
        prior.logits.normal_()
    z = torch.randn(5, 7, 3) * 2  # extra sample dimensions, as the IW estimator passes them
    reference = _reference_mixture(prior.means, prior.logvars, prior.logits)
    assert torch.allclose(prior.log_prob(z), reference.log_prob(z), atol=1e-5)


def test_mixture_prior_samples_follow_its_density() -> None:
    torch.manual_seed(0)
    prior = MixtureOfGaussiansPrior(latent_dim=2, components=3)
    with torch.no_grad():
        prior.logits.copy_(torch.tensor([0.0, 1.0, -1.0]))
    samples = prior.sample(40000, 2)
    weights = torch.softmax(prior.logits, 0)
    mean = (weights[:, None] * prior.means).sum(0)
    second = (weights[:, None] * (prior.logvars.exp() + prior.means**2)).sum(0)
    assert torch.allclose(samples.mean(0), mean.detach(), atol=0.03)
    assert torch.allclose(samples.var(0), (second - mean**2).detach(), rtol=0.05)
    # At temperature 0 every sample is a component mean.
    cold = prior.sample(100, 2, temperature=0.0)
    assert ((cold[:, None] - prior.means[None]).abs().sum(-1).min(1).values < 1e-6).all()


def test_one_standard_component_is_the_standard_normal_and_its_monte_carlo_kl_the_analytic_one() -> None:
    prior = MixtureOfGaussiansPrior(latent_dim=4, components=1)
    with torch.no_grad():
        prior.means.zero_()
    z = torch.randn(100, 4)
    assert torch.allclose(prior.log_prob(z), StandardNormalPrior().log_prob(z), atol=1e-5)
    posterior = DiagonalGaussian(torch.tensor([[0.5, -1.0, 0.2, 2.0]]), torch.tensor([[-1.0, 0.3, 0.0, -2.0]]))
    torch.manual_seed(0)
    samples = posterior.rsample((200000,))
    monte_carlo = (posterior.log_prob(samples) - prior.log_prob(samples)).mean()
    assert monte_carlo.item() == pytest.approx(posterior.kl_to_standard_normal().item(), rel=0.01)


def test_vamp_prior_is_the_average_posterior_at_its_pseudo_inputs() -> None:
    torch.manual_seed(0)
    encoder = torch.nn.Linear(6, 4)

    def encode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return encoder(x).chunk(2, dim=-1)

    prior = VampPrior(encode, torch.zeros(2, 6), components=5)
    assert prior.pseudo_inputs.shape == (5, 6)
    assert not any(name.startswith("encode") for name, _ in prior.named_parameters()), "the encoder is not copied"
    mean, logvar = encode(prior.pseudo_inputs)
    reference = D.MixtureSameFamily(
        D.Categorical(logits=torch.zeros(5)), D.Independent(D.Normal(mean, (0.5 * logvar).exp()), 1)
    )
    z = torch.randn(3, 8, 2)
    assert torch.allclose(prior.log_prob(z), reference.log_prob(z), atol=1e-5)
    prior.log_prob(z).sum().backward()
    assert prior.pseudo_inputs.grad is not None and encoder.weight.grad is not None, "both are learned"
    assert prior.sample(10, 2).shape == (10, 2)


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_each_prior_trains_and_keeps_the_bounds_in_order(prior: str, tmp_path: Path) -> None:
    vaekit(*fit_args(TINY_IMAGE, tmp_path, "--model.prior", prior, "--model.prior_components", "5",
                     "--trainer.max_epochs", "1", "--samples.num", "4"))  # fmt: skip
    model, record = load_model(tmp_path / "checkpoints" / "last.ckpt")
    assert type(model.prior).__name__ == {"mog": "MixtureOfGaussiansPrior", "vamp": "VampPrior"}[prior]
    names = {name for name, _ in model.prior.named_parameters()}
    assert names == ({"means", "logvars", "logits"} if prior == "mog" else {"pseudo_inputs"})
    datamodule = load_datamodule(model, record)
    datamodule.setup("test")
    batch = datamodule.on_after_batch_transfer(datamodule.examples("test", range(64)), 0)
    torch.manual_seed(0)
    with torch.no_grad():
        elbo = torch.stack([model.elbo_terms(batch).elbo for _ in range(20)]).mean(0)
        nll = model.nll(batch, 200)
    # -log p(x) <= -IW bound <= -ELBO on average: the IW estimate lies below the negative ELBO.
    assert torch.isfinite(nll).all() and (nll.mean() < -elbo.mean()).item()
    assert math.isfinite(float(model.prior.log_prob(model.sample_latents(8, 1.0)).sum()))
    vaekit("sample", tmp_path / "checkpoints" / "last.ckpt", "--num", "4", "--out", tmp_path / "drawn")
    assert (tmp_path / "drawn" / "samples.png").is_file()


def test_vamp_prior_is_refused_where_the_encoder_reads_tokens(tmp_path: Path) -> None:
    model = TextVAE(latent_dim=4, embed_dim=8, hidden_dim=8, prior="vamp")
    datamodule = TextDataModule("demo:text", max_length=8, limit=50)
    datamodule.setup("fit")
    with pytest.raises(ValueError, match=r"--model\.prior mog"):
        model.attach_spec(datamodule.spec)


# ------------------------------------------------------------------ the discretised logistic


@pytest.mark.parametrize("mixtures", [1, 3])
def test_discretized_logistic_gives_the_256_values_a_distribution(mixtures: int) -> None:
    torch.manual_seed(0)
    likelihood = DiscretizedLogistic(channels=2, mixtures=mixtures)
    params = torch.randn(3, 2 * likelihood.params_per_channel, 2, 2) * 2
    values = torch.arange(256) / 255
    # log p of every value for every pixel: 256 images of one constant value each, one pixel read at a time.
    per_value = []
    for v in values:
        x = torch.full((3, 2, 2, 2), float(v))
        mask = torch.zeros_like(x)
        mask[:, 0, 0, 0] = 1  # one pixel of one channel
        per_value.append(likelihood.log_prob(params, x, mask))
    total = torch.logsumexp(torch.stack(per_value), dim=0)
    assert torch.allclose(total, torch.zeros(3), atol=1e-4), "the 256 probabilities sum to one"


def test_discretized_logistic_bins_are_logistic_cdf_differences() -> None:
    likelihood = DiscretizedLogistic(channels=1)
    mean, log_scale = 0.1, -1.5
    params = torch.tensor([mean, log_scale]).view(1, 2, 1, 1)
    logistic = D.TransformedDistribution(
        D.Uniform(0.0, 1.0),
        [D.transforms.SigmoidTransform().inv, D.transforms.AffineTransform(mean, math.exp(log_scale))],
    )
    for k in (0, 37, 128, 255):
        x = torch.full((1, 1, 1, 1), k / 255)
        centre = 2 * k / 255 - 1
        upper = logistic.cdf(torch.tensor(centre + 1 / 255)) if k < 255 else torch.tensor(1.0)
        lower = logistic.cdf(torch.tensor(centre - 1 / 255)) if k > 0 else torch.tensor(0.0)
        assert likelihood.log_prob(params, x).exp().item() == pytest.approx((upper - lower).item(), rel=1e-4)
    samples = likelihood.sample(params.expand(4000, 2, 1, 1))
    assert torch.equal(samples * 255, (samples * 255).round()), "samples are 8-bit values"
    assert samples.mean().item() == pytest.approx(likelihood.mean(params).item(), abs=0.01)


def test_discretized_logistic_trains_on_grey_images_and_reports_bits_per_dim(tmp_path: Path) -> None:
    vaekit(*fit_args(TINY_IMAGE, tmp_path, "--model.likelihood", "discretized_logistic", "--data.binarize", "false",
                     "--model.logistic_mixtures", "2", "--trainer.max_epochs", "1", "--samples.num", "4"))  # fmt: skip
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    vaekit(
        "evaluate", ckpt, "--split", "test", "--iw-samples", "4", "--max-examples", "50", "--out", tmp_path / "e.json"
    )
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["bits_per_dim"] == pytest.approx(result["nll"] / (784 * math.log(2)), rel=1e-6)
    assert 0 < result["bits_per_dim"] < 8, "below the 8 bits of a uniform guess"
    with pytest.raises(SystemExit, match="binarize false"):
        vaekit(*fit_args(TINY_IMAGE, tmp_path / "binary", "--model.likelihood", "discretized_logistic"))


# ------------------------------------------------------------------ post-hoc samplers


def test_gaussian_mixture_sampler_recovers_clusters_and_matches_torch_distributions() -> None:
    torch.manual_seed(0)
    centres = torch.tensor([[-4.0, 0.0], [4.0, 1.0]])
    codes = torch.cat([centres[0] + 0.5 * torch.randn(3000, 2), centres[1] + torch.randn(1000, 2) * 0.3])
    sampler = GaussianMixtureSampler.fit(codes, components=2)
    order = sampler.means[:, 0].argsort()
    assert torch.allclose(sampler.means[order], centres, atol=0.1)
    assert torch.allclose(sampler.weights[order], torch.tensor([0.75, 0.25]), atol=0.02)
    z = torch.randn(50, 2) * 3
    covariance = sampler.scale_tril @ sampler.scale_tril.transpose(-1, -2)
    reference = D.MixtureSameFamily(
        D.Categorical(probs=sampler.weights), D.MultivariateNormal(sampler.means, covariance)
    )
    assert torch.allclose(sampler.log_prob(z), reference.log_prob(z), atol=1e-4)
    drawn = sampler.sample(20000)
    assert torch.allclose(drawn.mean(0), codes.mean(0), atol=0.1)


def test_fit_stores_a_gmm_sampler_that_fits_the_codes_better_than_the_prior(tmp_path: Path) -> None:
    vaekit(*fit_args(TINY_IMAGE, tmp_path, "--trainer.max_epochs", "3", "--samples.num", "4",
                     "--posthoc.components", "5"))  # fmt: skip
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert (tmp_path / "samples" / "gmm.png").is_file(), "the fit's samples folder shows the sampler too"
    model, record = load_model(ckpt)
    assert set(model.samplers) == {"gmm"} and model.samplers["gmm"].means.shape == (5, 8)
    datamodule = load_datamodule(model, record)
    datamodule.setup("test")
    held_out = posterior_means(model, datamodule, "test", 500)
    gmm, prior = model.samplers["gmm"].log_prob(held_out).mean(), model.prior.log_prob(held_out).mean()
    assert gmm > prior, "the mixture fitted to training codes explains held-out codes better than N(0, I)"
    export = tmp_path / "exported"
    vaekit("export", ckpt, "--out", export)
    for source in (ckpt, export):
        out = tmp_path / f"gmm-{source.name}"
        vaekit("sample", source, "--num", "4", "--sampler", "gmm", "--seed", "1", "--out", out)
        assert (out / "samples.png").is_file()
        # The tiny recipe records gmm as its default sampler: no --sampler draws the same samples.
        default = tmp_path / f"default-{source.name}"
        vaekit("sample", source, "--num", "4", "--seed", "1", "--out", default)
        assert (default / "samples.png").read_bytes() == (out / "samples.png").read_bytes()
        prior = tmp_path / f"prior-{source.name}"
        vaekit("sample", source, "--num", "4", "--sampler", "prior", "--seed", "1", "--out", prior)
        assert (prior / "samples.png").read_bytes() != (out / "samples.png").read_bytes()
    with pytest.raises(SystemExit, match="no 'vamp' sampler"):
        vaekit("sample", ckpt, "--num", "2", "--sampler", "vamp", "--out", tmp_path / "none")
    # Resuming from a last.ckpt that holds a sampler works, and refits it at the end.
    vaekit(*fit_args(TINY_IMAGE, tmp_path, "--ckpt_path", ckpt, "--trainer.max_epochs", "4", "--samples.num", "0",
                     "--posthoc.components", "3"))  # fmt: skip
    assert load_model(ckpt)[0].samplers["gmm"].means.shape == (3, 8)


def test_a_saved_state_with_a_strange_sampler_is_refused_by_name() -> None:
    model = ImageVAE(latent_dim=4)  # unbuilt: the check runs before any network is needed
    with pytest.raises(ValueError, match="unknown or incomplete sampler 'evil'"):
        model.restore_samplers({"samplers.evil.means": torch.zeros(2, 4)})
    with pytest.raises(ValueError, match="incomplete sampler 'gmm'"):
        model.restore_samplers({"samplers.gmm.weights": torch.ones(2)})
    model.restore_samplers({"samplers.gmm.means": torch.zeros(3, 4)})
    assert model.samplers["gmm"].scale_tril.shape == (3, 4, 4)


def test_default_sampler_is_checked_and_falls_back_to_the_prior_until_fitted(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="default_sampler must be one of"):
        ImageVAE(latent_dim=4, default_sampler="vamp")
    model = ImageVAE(latent_dim=4, default_sampler="gmm")
    with pytest.warns(UserWarning, match="default sampler 'gmm' was not fitted"):
        assert model.default_sampler() == "prior"  # e.g. a best-*.ckpt saved before training ended
    model.samplers["gmm"] = GaussianMixtureSampler.fit(torch.randn(50, 4) + 5.0, components=2)
    assert model.default_sampler() == "gmm" and model.sample_latents(200).mean() > 4
    with pytest.raises(SystemExit, match="needs the sampler fitted"):
        vaekit(*fit_args(TINY_IMAGE, tmp_path, "--trainer.max_epochs", "1", "--posthoc.components", "0"))
