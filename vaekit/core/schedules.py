"""KL weight (beta) schedules and free bits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor


@dataclass
class BetaSchedule:
    """Weight of the KL term as a function of the optimiser step.

    Every schedule is 0 before ``start_step`` and counts its steps from there (an autoencoder
    pre-training phase, say).

    - ``constant``: ``max``.
    - ``linear``: rising linearly from 0 to ``max`` over ``warmup_steps`` (Bowman et al. 2016 annealing).
    - ``cyclical``: repeats every ``cycle_steps``; rises linearly over the first ``ratio`` of each
      cycle, then holds at ``max`` (Fu et al. 2019). ``num_cycles`` > 0 stops cycling after that many,
      holding ``max``.
    """

    schedule: Literal["constant", "linear", "cyclical"] = "constant"
    max: float = 1.0
    warmup_steps: int = 0
    start_step: int = 0
    cycle_steps: int = 1000
    ratio: float = 0.5
    num_cycles: int = 0

    def __post_init__(self) -> None:
        if self.max < 0:
            raise ValueError(f"beta max must be >= 0, got {self.max}")
        if self.schedule == "cyclical" and (self.cycle_steps <= 0 or not 0 < self.ratio <= 1):
            raise ValueError("cyclical beta needs cycle_steps > 0 and 0 < ratio <= 1")

    def __call__(self, step: int) -> float:
        step = step - self.start_step
        if step < 0:
            return 0.0
        if self.schedule == "constant":
            return self.max
        if self.schedule == "linear":
            return self.max if self.warmup_steps <= 0 else self.max * min(1.0, step / self.warmup_steps)
        if self.num_cycles and step >= self.num_cycles * self.cycle_steps:
            return self.max
        phase = (step % self.cycle_steps) / (self.cycle_steps * self.ratio)
        return self.max * min(1.0, phase)


def free_bits_kl(kl_per_dim: Tensor, free_bits: float) -> Tensor:
    """KL term of the loss with free bits per latent dimension (Kingma et al. 2016; Li et al. 2019).

    The batch-mean KL of each dimension is clamped from below at ``free_bits`` nats, so a dimension
    below the target gets no gradient pushing it further towards the prior. Returns the sum over
    dimensions (a scalar); with ``free_bits == 0`` it is just the batch-mean KL.
    """
    per_dim = kl_per_dim.mean(0)
    if free_bits > 0:
        per_dim = torch.clamp(per_dim, min=free_bits)
    return per_dim.sum()
