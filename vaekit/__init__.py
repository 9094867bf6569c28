"""vaekit: variational autoencoders for every modality, from one core."""

from vaekit.core.distributions import DiagonalGaussian, Prior, StandardNormalPrior
from vaekit.core.module import VAE
from vaekit.core.schedules import BetaSchedule

__all__ = ["VAE", "BetaSchedule", "DiagonalGaussian", "Prior", "StandardNormalPrior"]
__version__ = "0.1.0"
