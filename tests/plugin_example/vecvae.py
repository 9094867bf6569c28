"""A third-party vaekit modality: VAEs over rows of a CSV file. The worked example of docs/plugins.md."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vaekit.core.data import VAEDataModule, split_off
from vaekit.core.io import atomic_path
from vaekit.core.likelihoods import Gaussian
from vaekit.core.module import VAE
from vaekit.modalities.registry import Modality


@dataclass(frozen=True)
class VectorSpec:
    features: int


def read_rows(path: Path) -> Tensor:
    with open(path, newline="") as handle:
        return torch.tensor([[float(v) for v in row] for row in csv.reader(handle) if row])


class VectorData(VAEDataModule):
    """``root`` holds train.csv and test.csv, one example per row."""

    def load_splits(self) -> dict[str, dict[str, Tensor]]:
        splits = {name: {"x": read_rows(self.source.local / f"{name}.csv")} for name in ("train", "test")}
        splits["train"], splits["val"] = split_off(splits["train"], self.hparams.val_fraction, self.hparams.seed)
        return splits

    def make_spec(self, train: dict[str, Tensor]) -> VectorSpec:
        return VectorSpec(features=train["x"].shape[1])

    def load_inputs(self, items: list[str]) -> dict[str, Tensor]:
        return {"x": torch.cat([read_rows(Path(item)) for item in items])}


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
