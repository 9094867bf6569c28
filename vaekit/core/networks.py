"""2-D convolutional encoder and decoder shared by the grid-shaped modalities (images, spectrograms)."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn


def padded(size: int, scale: int) -> int:
    """``size`` rounded up to a multiple of ``scale``."""
    return math.ceil(size / scale) * scale


class Residual(nn.Module):
    """x + SiLU(conv3x3(x)): extra depth at one resolution without changing the shape."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.SiLU())

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ConvEncoder(nn.Module):
    """Strided convolutions halving (H, W) ``len(channels)`` times, then a dense head -> (mean, logvar).

    Inputs whose size is not a multiple of ``2 ** len(channels)`` are zero-padded up to one.
    """

    def __init__(
        self, in_channels: int, size: tuple[int, int], channels: list[int], blocks: int, hidden: int, latent_dim: int
    ) -> None:
        super().__init__()
        scale = 2 ** len(channels)
        self.padded = (padded(size[0], scale), padded(size[1], scale))
        layers: list[nn.Module] = []
        previous = in_channels
        for width in channels:
            layers += [nn.Conv2d(previous, width, 4, stride=2, padding=1), nn.SiLU()]
            layers += [Residual(width) for _ in range(blocks)]
            previous = width
        self.features = nn.Sequential(*layers, nn.Flatten())
        flat = previous * (self.padded[0] // scale) * (self.padded[1] // scale)
        self.head = nn.Sequential(nn.Linear(flat, hidden), nn.SiLU(), nn.Linear(hidden, 2 * latent_dim))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pad_h, pad_w = self.padded[0] - x.shape[2], self.padded[1] - x.shape[3]
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        mean, logvar = self.head(self.features(x)).chunk(2, dim=-1)
        return mean, logvar


class ConvDecoder(nn.Module):
    """Mirror of the encoder: dense layers, transposed convolutions, cropped back to ``size``."""

    def __init__(
        self, out_channels: int, size: tuple[int, int], channels: list[int], blocks: int, hidden: int, latent_dim: int
    ) -> None:
        super().__init__()
        scale = 2 ** len(channels)
        self.size = size
        self.start = (channels[-1], padded(size[0], scale) // scale, padded(size[1], scale) // scale)
        self.head = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.SiLU(), nn.Linear(hidden, math.prod(self.start)), nn.SiLU()
        )
        layers: list[nn.Module] = []
        widths = list(reversed(channels))
        for i, width in enumerate(widths):
            layers += [Residual(width) for _ in range(blocks)]
            last = i == len(widths) - 1
            layers.append(nn.ConvTranspose2d(width, out_channels if last else widths[i + 1], 4, stride=2, padding=1))
            if not last:
                layers.append(nn.SiLU())
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        out = self.body(self.head(z).view(-1, *self.start))
        return out[:, :, : self.size[0], : self.size[1]]
