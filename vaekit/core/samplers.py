"""Post-hoc samplers: latent distributions fitted to a trained model's aggregate posterior.

Samples from the prior land wherever the prior has mass, including its "holes" where no training
example's posterior is; decoded, those are the blurry, ambiguous samples. A sampler fitted after training
to the training set's posterior means (as pythae's ``GaussianMixtureSampler``) draws only where the data's
codes are. A fitted sampler is part of the model's weights (``samplers.<name>.*``), so it travels in the
checkpoint and the exported folder, and ``vaekit sample MODEL --sampler gmm`` chooses it.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch import distributions as D


class GaussianMixtureSampler(torch.nn.Module):
    """A full-covariance Gaussian mixture over the latent space, fitted by EM (scikit-learn)."""

    def __init__(self, components: int, latent_dim: int) -> None:
        super().__init__()
        self.register_buffer("weights", torch.full((components,), 1.0 / components))
        self.register_buffer("means", torch.zeros(components, latent_dim))
        self.register_buffer("scale_tril", torch.eye(latent_dim).repeat(components, 1, 1))

    @classmethod
    def fit(cls, codes: Tensor, components: int = 10, seed: int = 0) -> GaussianMixtureSampler:
        """Fit to ``codes`` (N, D), e.g. the training set's posterior means."""
        from sklearn.mixture import GaussianMixture

        components = min(components, len(codes))
        mixture = GaussianMixture(components, covariance_type="full", reg_covar=1e-4, random_state=seed)
        mixture.fit(codes.detach().double().cpu().numpy())
        sampler = cls(components, codes.shape[1])
        sampler.weights.copy_(torch.from_numpy(mixture.weights_))
        sampler.means.copy_(torch.from_numpy(mixture.means_))
        sampler.scale_tril.copy_(torch.linalg.cholesky(torch.from_numpy(mixture.covariances_)))
        return sampler

    def distribution(self) -> D.MixtureSameFamily:
        components = D.MultivariateNormal(self.means, scale_tril=self.scale_tril)
        return D.MixtureSameFamily(D.Categorical(probs=self.weights), components)

    def log_prob(self, z: Tensor) -> Tensor:
        return self.distribution().log_prob(z)

    def sample(self, num: int, temperature: float = 1.0) -> Tensor:
        """``num`` codes; ``temperature`` scales each component's spread around its mean."""
        component = torch.multinomial(self.weights, num, replacement=True)
        noise = torch.randn(num, self.means.shape[1], 1, device=self.means.device, dtype=self.means.dtype)
        return self.means[component] + temperature * (self.scale_tril[component] @ noise).squeeze(-1)


SAMPLERS = {"gmm": GaussianMixtureSampler}
