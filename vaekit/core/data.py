"""Shared data plumbing: where data comes from, in-memory tensor batches, the base data module."""

from __future__ import annotations

import importlib.resources
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader

DEMO_PREFIX = "demo:"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class DataSource:
    """A resolved ``--data.root``: a local folder, or a Hugging Face hub dataset id."""

    local: Path | None = None
    hub_id: str | None = None

    def __str__(self) -> str:
        return str(self.local) if self.local is not None else f"hub:{self.hub_id}"


def resolve_root(root: str) -> DataSource:
    """Local path if it exists, ``demo:NAME`` for data shipped with vaekit, else a hub id.

    A path that looks local (absolute, ./, ../, or ~) but does not exist is an error that names it.
    """
    if root.startswith(DEMO_PREFIX):
        path = Path(str(importlib.resources.files("vaekit") / "demo" / root[len(DEMO_PREFIX) :]))
        if not path.is_dir():
            raise FileNotFoundError(f"no bundled demo data {root!r} (looked in {path})")
        return DataSource(local=path)
    path = Path(root).expanduser()
    if path.exists():
        return DataSource(local=path.resolve())
    if root.startswith(("/", ".", "~")) or not _HUB_ID.match(root):
        raise FileNotFoundError(
            f"data folder {root!r} does not exist; pass --data.root with the folder holding your data "
            "(or a Hugging Face dataset id)"
        )
    return DataSource(hub_id=root)


def load_hub_dataset(hub_id: str, **kwargs: Any) -> Any:
    """``datasets.load_dataset`` with an error that says what to do when the hub is out of reach."""
    import datasets

    try:
        return datasets.load_dataset(hub_id, **kwargs)
    except Exception as err:  # the hub raises many types: connection, not-found, auth
        raise FileNotFoundError(
            f"{hub_id!r} is neither a local folder nor a loadable hub dataset ({type(err).__name__}: {err}); "
            "pass --data.root with a local copy of the data"
        ) from err


def label_indices(names: list[str | int], label_names: list[str], flag: str) -> list[int]:
    """Labels given on the command line as indices: by name when the data names its classes, else as numbers."""
    if not label_names:
        return [int(n) for n in names]
    unknown = [str(n) for n in names if str(n) not in label_names]
    if unknown:
        raise ValueError(f"no label(s) {unknown} for {flag}; the labels are {label_names}")
    return [label_names.index(str(n)) for n in names]


def _identity(batch: Any) -> Any:
    return batch


class TensorDictDataset(torch.utils.data.Dataset):
    """Examples held as tensors; a whole batch is gathered with one index op (``__getitems__``)."""

    def __init__(self, tensors: dict[str, Tensor]) -> None:
        sizes = {k: len(v) for k, v in tensors.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"tensor columns differ in length: {sizes}")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {k: v[index] for k, v in self.tensors.items()}

    def __getitems__(self, indices: list[int]) -> dict[str, Tensor]:
        index = torch.as_tensor(indices)
        return {k: v[index] for k, v in self.tensors.items()}


def split_off(tensors: dict[str, Tensor], fraction: float, seed: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split a random ``fraction`` of the rows off (a held-out validation set), reproducibly."""
    count = len(next(iter(tensors.values())))
    held = max(1, round(count * fraction))
    if held >= count:
        raise ValueError(f"val_fraction={fraction} leaves no training data out of {count} examples")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    keep, out = order[held:].sort().values, order[:held].sort().values
    return {k: v[keep] for k, v in tensors.items()}, {k: v[out] for k, v in tensors.items()}


class VAEDataModule(pl.LightningDataModule):
    """Base data module: splits held as tensors, a ``spec`` describing the data for the model.

    Subclasses implement ``load_splits`` (returning ``train``/``val``/``test`` tensor dicts) and
    ``make_spec``; ``val_fraction``/``test_fraction`` are what they hold out when the data has no such
    split of its own. Subclasses take their own arguments and pass the rest on with ``**common``. A model loaded from a checkpoint hands its spec back through ``adopt_spec`` so the
    data is prepared exactly as in training (same tokenizer, same normalisation).
    """

    def __init__(
        self,
        root: str,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.1,
        seed: int = 0,
        num_workers: int = 0,
        skip_bad_files: bool = False,
        test_fraction: float = 0.1,
        labels: list[str | int] | None = None,
        exclude_labels: list[str | int] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.label_names: list[str] = []  # class names by label index, for data that has classes
        self.source = resolve_root(root)
        if self.source.local is not None:  # saved absolute, so a checkpoint works from any directory
            self.hparams.root = str(self.source.local)
        self.spec: Any = None
        self.splits: dict[str, dict[str, Tensor]] = {}
        self.eval_split = "test"
        self.skipped: list[str] = []

    # ---------------------------------------------------------------- plugin hooks
    def load_splits(self) -> dict[str, dict[str, Tensor]]:
        raise NotImplementedError

    def make_spec(self, train: dict[str, Tensor]) -> Any:
        raise NotImplementedError

    def load_inputs(self, items: list[str]) -> dict[str, Tensor]:
        """Turn user-given inputs (file paths, sentences) into a batch, as the splits are prepared."""
        raise NotImplementedError

    # ---------------------------------------------------------------- shared
    def adopt_spec(self, spec: Any) -> None:
        self.spec = spec

    def skip_or_raise(self, message: str) -> None:
        """A bad file: raise, or count it when ``skip_bad_files`` is set."""
        if not self.hparams.skip_bad_files:
            raise ValueError(f"{message} (or set --data.skip_bad_files true to skip such files)")
        self.skipped.append(message)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        self.splits = self.load_splits()
        if self.skipped:
            rank_zero_warn(f"skipped {len(self.skipped)} bad file(s); first: {self.skipped[0]}")
        self.filter_labels()
        if self.spec is None:
            self.spec = self.make_spec(self.splits["train"])

    def filter_labels(self) -> None:
        """Keep (``labels``) or drop (``exclude_labels``) classes in the training and validation splits.

        The test split keeps every class, so a model trained on normal classes only can be scored on the
        held-out ones (`vaekit score --normal ...`).
        """
        keep, drop = self.hparams.labels or [], self.hparams.exclude_labels or []
        if (not keep and not drop) or "train" not in self.splits:  # nothing to filter when only evaluating
            return
        if not self.label_names:
            raise ValueError(f"{self.source}: --data.labels and --data.exclude_labels need labelled data; it has none")
        kept = label_indices(keep, self.label_names, "--data.labels") or range(len(self.label_names))
        dropped = set(label_indices(drop, self.label_names, "--data.exclude_labels"))
        chosen = torch.tensor([i for i in kept if i not in dropped])
        for split in ("train", "val"):
            if split in self.splits:
                rows = torch.isin(self.splits[split]["label"], chosen)
                self.splits[split] = {k: v[rows] for k, v in self.splits[split].items()}
        if "train" in self.splits and len(self.splits["train"]["label"]) == 0:
            raise ValueError(f"{self.source}: no training examples left with labels {keep or 'all'} minus {drop}")
        names = [self.label_names[i] for i in chosen.tolist()]
        rank_zero_info(f"training and validation on labels {names}; the test split keeps all of {self.label_names}")

    def loader(self, split: str, shuffle: bool = False) -> DataLoader:
        if split not in self.splits:
            raise ValueError(f"no {split!r} split in {self.source}; available: {sorted(self.splits)}")
        batch_size = self.hparams.batch_size if shuffle else (self.hparams.eval_batch_size or self.hparams.batch_size)
        return DataLoader(
            TensorDictDataset(self.splits[split]),
            batch_size=batch_size,
            shuffle=shuffle,
            collate_fn=_identity,
            num_workers=self.hparams.num_workers,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader(self.eval_split)

    def predict_dataloader(self) -> DataLoader:
        return self.loader(self.eval_split)
