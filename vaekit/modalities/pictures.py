"""Pictures the plugins write: grids of images or spectrograms, and PNG files written atomically."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image

from vaekit.core.io import atomic_path


def grid(images: list[Image.Image], nrow: int | None = None, pad: int = 2) -> Image.Image:
    """``images`` (all one size and mode) in rows of ``nrow`` (default: a square), on white, ``pad`` pixels apart."""
    nrow = nrow or max(1, math.ceil(math.sqrt(len(images))))
    width, height = images[0].size
    rows = math.ceil(len(images) / nrow)
    white = 255 if images[0].mode == "L" else (255,) * len(images[0].getbands())
    canvas = Image.new(images[0].mode, (nrow * (width + pad) + pad, rows * (height + pad) + pad), white)
    for i, image in enumerate(images):
        r, c = divmod(i, nrow)
        canvas.paste(image, (pad + c * (width + pad), pad + r * (height + pad)))
    return canvas


def save_png(image: Image.Image, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)
