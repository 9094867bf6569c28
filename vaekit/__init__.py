"""vaekit: variational autoencoders for every modality, from one core."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"  # the core records it in every checkpoint

# The public classes load on first use (PEP 562), so `vaekit --help` and `vaekit recipes` never import torch.
_LAZY = {
    "VAE": "vaekit.core.module",
    "BetaSchedule": "vaekit.core.schedules",
    "DiagonalGaussian": "vaekit.core.distributions",
    "Prior": "vaekit.core.distributions",
    "StandardNormalPrior": "vaekit.core.distributions",
}
__all__ = ["VAE", "BetaSchedule", "DiagonalGaussian", "Prior", "StandardNormalPrior"]

if TYPE_CHECKING:
    from vaekit.core.distributions import DiagonalGaussian, Prior, StandardNormalPrior
    from vaekit.core.module import VAE
    from vaekit.core.schedules import BetaSchedule


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'vaekit' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
