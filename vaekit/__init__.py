"""vaekit: variational autoencoders for every modality, from one core."""

__version__ = "0.2.0"  # before the imports: the core records it in every checkpoint

from vaekit.core.distributions import DiagonalGaussian, Prior, StandardNormalPrior
from vaekit.core.module import VAE
from vaekit.core.schedules import BetaSchedule

__all__ = ["VAE", "BetaSchedule", "DiagonalGaussian", "Prior", "StandardNormalPrior"]
