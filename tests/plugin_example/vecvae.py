"""A third-party vaekit modality: VAEs over rows of a CSV file. The worked example of docs/plugins.md."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vaekit.core.data import VAEDataModule
from vaekit.core.io import atomic_path
from vaekit.core.likelihoods import Gaussian
from vaekit.core.module import VAE
from vaekit.core.storage import Rows, Split, file_stats, fingerprint
from vaekit.modalities.registry import Modality


@dataclass(frozen=True)
class VectorSpec:
    features: int


def read_rows(path: Path) -> Iterator[list[str]]:
    with open(path, newline="") as handle:
        yield from (row for row in csv.reader(handle) if row)


def as_example(row: list[str]) -> list[dict[str, np.ndarray]]:
    return [{"x": np.array([float(v) for v in row], dtype=np.float32)}]


class VectorData(VAEDataModule):
    """``root`` holds train.csv and test.csv, one example per row; the base splits validation off train."""

    def load_splits(self) -> dict[str, Rows]:
        paths = {name: self.source.local / f"{name}.csv" for name in ("train", "test")}
        return {
            name: Rows(read_rows(path), as_example, fingerprint(file_stats([path]))) for name, path in paths.items()
        }

    def make_spec(self, train: Split) -> VectorSpec:
        return VectorSpec(features=train.take([0])["x"].shape[1])

    def load_inputs(self, items: list[str]) -> dict[str, Tensor]:
        rows = [example["x"] for item in items for row in read_rows(Path(item)) for example in as_example(row)]
        return {"x": torch.from_numpy(np.stack(rows))}


class VectorVAE(VAE):
    modality = "vector"
    spec_type = VectorSpec

    def __init__(self, latent_dim: int = 2, hidden: int = 32, **core: Any) -> None:
        super().__init__(latent_dim=latent_dim, **core)

    def build(self, spec: VectorSpec) -> None:
        hidden, latent = self.hparams.hidden, self.hparams.latent_dim
        self.encoder = _MLP(spec.features, hidden, 2 * latent)
        self.decoder = _MLP(latent, hidden, spec.features)
        self.likelihood = Gaussian(channels=1)

    def encode_params(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        mean, logvar = self.encoder(batch["x"]).chunk(2, dim=-1)
        return mean, logvar

    def log_likelihood(self, params: Tensor, batch: dict[str, Tensor]) -> Tensor:
        return self.likelihood.log_prob(params.unsqueeze(1), batch["x"].unsqueeze(1))

    def generate(self, z: Tensor, **options: Any) -> Tensor:
        return self.decoder(z)

    def save_outputs(
        self, data: Tensor, out_dir: Path, stem: str, nrow: int | None = None, **options: Any
    ) -> list[Path]:
        path = Path(out_dir) / f"{stem}.csv"
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
            csv.writer(handle).writerows(data.tolist())
        return [path]


class _MLP(nn.Sequential):
    def __init__(self, inputs: int, hidden: int, outputs: int) -> None:
        super().__init__(nn.Linear(inputs, hidden), nn.SiLU(), nn.Linear(hidden, outputs))


MODALITY = Modality(name="vector", model=VectorVAE, datamodule=VectorData)
