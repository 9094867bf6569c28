"""Shared data plumbing: where data comes from, and the base data module (splits in memory or on disk)."""

from __future__ import annotations

import functools
import importlib.resources
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.accelerators import CUDAAccelerator
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler, SequentialSampler

from vaekit.core.resident import HOST_PREFIX, DeviceBatches, fits_on_device
from vaekit.core.storage import (
    ArrowSplit,
    Rows,
    Split,
    StreamSplit,
    TensorSplit,
    collate_examples,
    split_batches,
    write_cache,
)

DEMO_PREFIX = "demo:"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def is_hub_id(name: str, owner_required: bool = False) -> bool:
    """Whether ``name`` reads as a Hugging Face hub id (``name`` or ``owner/name``; models always have an owner)
    rather than a local path: the one rule for data roots and models."""
    text = str(name)
    if text.startswith(("/", ".", "~")) or not _HUB_ID.match(text):
        return False
    return "/" in text or not owner_required


@dataclass(frozen=True)
class DataSource:
    """A resolved ``--data.root``: a local folder, or a Hugging Face hub dataset id."""

    local: Path | None = None
    hub_id: str | None = None

    def __str__(self) -> str:
        return str(self.local) if self.local is not None else f"hub:{self.hub_id}"


def demo_path(name: str) -> Path:
    """Where the demo data ``demo:NAME``, shipped inside the package, lives."""
    return Path(str(importlib.resources.files("vaekit") / "demo" / name))


def resolve_root(root: str) -> DataSource:
    """Local path if it exists, ``demo:NAME`` for data shipped with vaekit, else a hub id.

    A path that looks local (absolute, ./, ../, or ~) but does not exist is an error that names it.
    """
    if root.startswith(DEMO_PREFIX):
        path = demo_path(root[len(DEMO_PREFIX) :])
        if not path.is_dir():
            raise FileNotFoundError(f"no bundled demo data {root!r} (looked in {path})")
        return DataSource(local=path)
    path = Path(root).expanduser()
    if path.exists():
        return DataSource(local=path.resolve())
    if not is_hub_id(root):
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


def split_off(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Split a random ``fraction`` of the rows off (a held-out set), reproducibly."""
    count = len(split)
    held = max(1, round(count * fraction))
    if held >= count:
        raise ValueError(f"a fraction of {fraction} leaves no training data out of {count} examples")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return split.select(order[held:].sort().values), split.select(order[:held].sort().values)


def _first(split: Split, count: int) -> Split:
    """The first ``count`` examples (``--data.limit``)."""
    if isinstance(split, StreamSplit):
        return StreamSplit(replace(split.rows, items=split.rows.items.take(count)), split.shuffle, split.seed)
    return split.select(range(min(count, len(split))))


def cache_root(cache_dir: str | None) -> Path:
    """``--data.cache_dir``, else ``$VAEKIT_CACHE``, else a ``vaekit`` folder in the ``datasets`` cache."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("VAEKIT_CACHE"):
        return Path(os.environ["VAEKIT_CACHE"])
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE) / "vaekit"


class VAEDataModule(pl.LightningDataModule):
    """Base data module: named splits of examples, a ``spec`` describing the data for the model.

    Plugins implement ``load_splits`` (each split as ``Rows`` to decode, or as tensors when the data is
    already arrays), ``make_spec`` and ``load_inputs``. The base decodes ``Rows`` once into an Arrow cache
    (``cache_dir``) and then holds the splits in memory, or reads them from the memory-mapped cache per
    batch: ``in_memory`` true/false, or by size when unset (up to ``IN_MEMORY_BYTES``). It splits off
    ``test``/``val`` (``test_fraction``/``val_fraction``) where the data has no such split, keeps the first
    ``limit`` examples of each split, and filters labels. A model loaded from a checkpoint hands its spec
    back through ``adopt_spec`` so the data is prepared exactly as in training.

    Splits held in memory can live on the training device whole (``on_device``; by default on a GPU when they
    take at most a quarter of its free memory), batched there with no loader workers or copies per step
    (``core/resident.py``). A module opts in with ``DEVICE_COLLATE`` once its ``collate`` works on device
    tensors; values its collate reads as numbers come from host copies of ``HOST_COLUMNS``.
    """

    IN_MEMORY_BYTES = 2**30
    DEVICE_COLLATE = False  # whether ``collate`` works on tensors on the device (then splits may live there)
    HOST_COLUMNS: tuple[str, ...] = ()  # columns also kept on the host, given to ``collate`` as ``host_<name>``
    SPEC_EXAMPLES = 2000  # the spec (sizes, statistics) is computed from at most this many training examples

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
        limit: int | None = None,
        in_memory: bool | None = None,
        cache_dir: str | None = None,
        streaming: bool = False,
        on_device: bool | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.label_names: list[str] = []  # class names by label index, for data that has classes
        self.source = resolve_root(root)
        if self.source.local is not None:  # saved absolute, so a checkpoint works from any directory
            self.hparams.root = str(self.source.local)
        if streaming and self.source.local is not None:
            raise ValueError(
                f"--data.streaming is for hub datasets, and {self.source} is a local folder: it is decoded once "
                "into the on-disk cache instead (--data.in_memory false reads it from there per batch)"
            )
        if on_device and not self.DEVICE_COLLATE:
            raise ValueError(
                f"--data.on_device true: {type(self).__name__} batches on the host (its collate runs on the host "
                "only); leave --data.on_device unset"
            )
        self.spec: Any = None
        self.splits: dict[str, Split] = {}
        self.eval_split = "test"
        self.skipped: list[str] = []
        self._resident: dict[tuple[str, bool, bool], DeviceBatches] = {}
        self._resident_for: tuple[Any, torch.device | None] | None = None  # (trainer, its choice), once decided

    # ---------------------------------------------------------------- plugin hooks
    def load_splits(self) -> dict[str, Rows | dict[str, Tensor]]:
        raise NotImplementedError

    def make_spec(self, train: Split) -> Any:
        raise NotImplementedError

    def load_inputs(self, items: list[str]) -> dict[str, Tensor]:
        """Turn user-given inputs (file paths, sentences) into a batch, as the splits are prepared."""
        raise NotImplementedError

    def collate(self, batch: dict[str, Tensor], split: str) -> dict[str, Tensor]:
        """A batch as read from ``split``, before it goes to the device (runs in the loader's workers), or on
        the device when the split lives there (``DEVICE_COLLATE``)."""
        return batch

    def batch_sampler(self, split: str, shuffle: bool, sort_by_length: bool = False) -> Sampler[list[int]] | None:
        """A module's own batching of a split (text: by length, when ``sort_by_length`` or training), or None
        for plain batches of ``batch_size``, shuffled or in order, which Lightning shards under DDP."""
        return None

    def batch_indices(self, split: str, shuffle: bool, sort_by_length: bool = False) -> Sampler[list[int]]:
        """The indices of each batch of a split, drawn on the host: the module's own, else plain batches."""
        custom = self.batch_sampler(split, shuffle, sort_by_length)
        if custom is not None:
            return custom
        dataset = self.split(split)
        order = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
        return BatchSampler(order, self.batch_size(shuffle), drop_last=False)

    def batch_size(self, training: bool) -> int:
        return self.hparams.batch_size if training else (self.hparams.eval_batch_size or self.hparams.batch_size)

    # ---------------------------------------------------------------- shared
    def hub_dataset(self) -> Any:
        """The hub dataset ``root`` names: downloaded (and cached by ``datasets``), or streamed (``streaming``)."""
        return load_hub_dataset(self.source.hub_id, **({"streaming": True} if self.hparams.streaming else {}))

    def adopt_spec(self, spec: Any) -> None:
        self.spec = spec

    def skip_or_raise(self, message: str) -> None:
        """A bad file: raise, or count it when ``skip_bad_files`` is set."""
        if not self.hparams.skip_bad_files:
            raise ValueError(f"{message} (or set --data.skip_bad_files true to skip such files)")
        self.skipped.append(message)

    def prepare_data(self) -> None:
        """Decode into the cache once per node (Lightning calls this on one process per node, before setup)."""
        self.setup("fit")

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        splits = {name: self.store(name, value) for name, value in self.load_splits().items()}
        if self.skipped:
            rank_zero_warn(f"skipped {len(self.skipped)} bad file(s); first: {self.skipped[0]}")
        streamed = [name for name, split in splits.items() if isinstance(split, StreamSplit)]
        if streamed and "train" in splits and not {"val", "test"} <= splits.keys():
            raise ValueError(
                f"{self.source} has no validation or test split ({sorted(splits)}); a stream cannot be split at "
                "random: pass --data.streaming false to download it, or use a dataset that has both splits"
            )
        if "train" in splits:  # a checkpoint command may read data that holds only the split it needs
            if "test" not in splits:
                splits["train"], splits["test"] = split_off(
                    splits["train"], self.hparams.test_fraction, self.hparams.seed + 1
                )
            if "val" not in splits:
                splits["train"], splits["val"] = split_off(
                    splits["train"], self.hparams.val_fraction, self.hparams.seed
                )
        if self.hparams.limit:
            splits = {name: _first(split, self.hparams.limit) for name, split in splits.items()}
        self.splits = self.place(splits)
        self.filter_labels()
        if self.spec is None:
            self.spec = self.make_spec(self.subset("train", self.SPEC_EXAMPLES))

    def subset(self, name: str, count: int) -> Split:
        """At most ``count`` examples of a split, a seeded random choice in the split's order (a stream's first
        ones): what statistics over a split read, so they cost the same for any size of data."""
        split = self.split(name)
        if isinstance(split, StreamSplit):
            return split.head(count)
        if len(split) <= count:
            return split
        chosen = torch.randperm(len(split), generator=torch.Generator().manual_seed(self.hparams.seed))
        return split.select(chosen[:count].sort().values)

    def store(self, name: str, value: Rows | dict[str, Tensor]) -> Split:
        """A plugin's split as a ``Split``: tensors as they are; ``Rows`` decoded into (or found in) the cache."""
        if not isinstance(value, Rows):
            return TensorSplit(value)
        if self.hparams.streaming:
            return StreamSplit(value, shuffle=name == "train", seed=self.hparams.seed)
        folder = cache_root(self.hparams.cache_dir) / type(self).__name__ / f"{name}-{value.fingerprint}"
        if (folder / "manifest.json").exists():
            self.skipped += json.loads((folder / "manifest.json").read_text())["skipped"]
        else:
            try:
                write_cache(folder, value, f"decoding {self.source} {name}", self.skipped)
            except OSError:
                if not (folder / "manifest.json").exists():
                    raise  # not another process (a rank on another node sharing the folder) finishing first
        return ArrowSplit(folder)

    def place(self, splits: dict[str, Split]) -> dict[str, Split]:
        """Hold the splits in memory or leave them on disk (``in_memory``, else by size), and say which."""
        on_disk = [s for s in splits.values() if isinstance(s, ArrowSplit)]
        if any(isinstance(s, StreamSplit) for s in splits.values()):
            rank_zero_info(f"{self.source}: streamed, decoded batch by batch (nothing is downloaded whole)")
        if not on_disk:
            return splits
        size = sum(s.nbytes for s in on_disk)
        where = f"decoded data ({size / 2**20:.0f} MB) in {on_disk[0].folder.parent}"
        in_memory = self.hparams.in_memory
        if in_memory is None:
            in_memory = size <= self.IN_MEMORY_BYTES
        if in_memory:
            rank_zero_info(f"{where}: held in memory (--data.in_memory false reads it from disk per batch)")
            return {name: s.load() if isinstance(s, ArrowSplit) else s for name, s in splits.items()}
        rank_zero_info(f"{where}: read from disk per batch (--data.in_memory true loads it into memory)")
        return splits

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
        for name in ("train", "val"):
            split = self.splits.get(name)
            if isinstance(split, StreamSplit):
                self.splits[name] = split.with_labels(set(chosen.tolist()))
            elif split is not None:
                self.splits[name] = split.select(torch.isin(split["label"], chosen).nonzero().squeeze(1))
        if isinstance(self.splits["train"], TensorSplit | ArrowSplit) and len(self.splits["train"]) == 0:
            raise ValueError(f"{self.source}: no training examples left with labels {keep or 'all'} minus {drop}")
        names = [self.label_names[i] for i in chosen.tolist()]
        rank_zero_info(f"training and validation on labels {names}; the test split keeps all of {self.label_names}")

    def keep_first(self, name: str, count: int) -> None:
        """Keep only the first ``count`` examples of a split, in the data's own order (a fair, fixed subset)."""
        self.splits[name] = _first(self.split(name), count)

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise ValueError(f"no {name!r} split in {self.source}; available: {sorted(self.splits)}")
        return self.splits[name]

    def examples(self, name: str, indices: Sequence[int]) -> dict[str, Tensor]:
        """Examples of a split by index, as a loader would batch them (before the device transform)."""
        split = self.split(name)
        if isinstance(split, StreamSplit):
            split = split.head(max(indices) + 1)
        if max(indices) >= len(split):
            raise ValueError(
                f"asked for {max(indices) + 1} examples but the {name} split has {len(split)}; pass --num "
                f"{len(split)} or less, or give your own files with --input"
            )
        return self.collate(split.take(list(indices)), name)

    def batches(self, name: str, max_examples: int, size: int) -> Iterator[dict[str, Tensor]]:
        """At most ``max_examples`` examples of a split (a seeded random choice), collated, ``size`` at a time:
        what statistics over the training data read (the post-hoc sampler's codes)."""
        for batch in split_batches(self.subset(name, max_examples), size):
            yield self.collate(batch, name)

    def _collate_stream(self, examples: list[dict[str, Any]], split: str) -> dict[str, Tensor]:
        return self.collate(collate_examples(examples), split)

    def loader(self, split: str, shuffle: bool = False, sort_by_length: bool = False) -> DataLoader | DeviceBatches:
        """Batches of a split: from the device when the splits live there (``resident_device``), else a
        DataLoader (a stream's is shuffled in the stream, sharded by rank and worker)."""
        if isinstance(self.split(split), StreamSplit):
            return DataLoader(
                self.split(split),
                batch_size=self.batch_size(shuffle),
                collate_fn=functools.partial(self._collate_stream, split=split),
                num_workers=self.hparams.num_workers,
            )
        device = self.resident_device()
        if device is not None:
            key = (split, shuffle, sort_by_length)
            if key not in self._resident:
                self._resident[key] = DeviceBatches(
                    self.split(split),
                    device,
                    self.batch_indices(split, shuffle, sort_by_length),
                    functools.partial(self.collate, split=split),
                    self.HOST_COLUMNS,
                    fixed=not shuffle,
                    rank=self.trainer.global_rank,
                    world=self.trainer.world_size,
                )
            return self._resident[key]
        custom = self.batch_sampler(split, shuffle, sort_by_length)
        batching = (
            {"batch_sampler": custom}
            if custom is not None
            else {"batch_size": self.batch_size(shuffle), "shuffle": shuffle}
        )
        return DataLoader(
            self.split(split),
            **batching,
            collate_fn=functools.partial(self.collate, split=split),
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
            pin_memory=self.trainer is not None and isinstance(self.trainer.accelerator, CUDAAccelerator),
        )

    def resident_device(self) -> torch.device | None:
        """The device the splits live on while a trainer runs, or None for DataLoaders: ``on_device``, else
        by size on a GPU. Decided once per trainer and said in the log."""
        wanted, trainer = self.hparams.on_device, self.trainer
        if trainer is None or wanted is False:
            return None  # a command outside training: batches for the host, the model moves them
        if self._resident_for is not None and self._resident_for[0] is trainer:
            return self._resident_for[1]
        self._resident = {}  # a new trainer: batches for its device and processes
        splits = list(self.splits.values())
        why_not = (
            "its collate runs on the host only"
            if not self.DEVICE_COLLATE
            else "its splits are not all held in memory (--data.in_memory true)"
            if not all(isinstance(s, TensorSplit) for s in splits)
            else None
        )
        if why_not and wanted:
            raise ValueError(f"--data.on_device true: {self.source} cannot live on the device: {why_not}")
        device = trainer.strategy.root_device
        size = sum(column.nbytes for s in splits if isinstance(s, TensorSplit) for column in s.columns.values())
        chosen = not why_not and (wanted or fits_on_device(size, device))
        if chosen:
            rank_zero_info(
                f"{self.source}: all splits ({size / 2**20:.0f} MB) on {device}, batched there with no loader "
                "workers (--data.on_device false for DataLoaders)"
            )
        elif wanted is None and device.type == "cuda":
            rank_zero_info(f"{self.source}: batched by DataLoaders ({why_not or 'too large for the device'})")
        self._resident_for = (trainer, device if chosen else None)
        return self._resident_for[1]

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Everything to the device but the host copies (``host_*`` keys, at any depth): those are read as
        numbers on the host, and a copy back from the GPU would stall the step."""
        if not isinstance(batch, dict):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        return {
            key: value if key.startswith(HOST_PREFIX) else self.transfer_batch_to_device(value, device, dataloader_idx)
            for key, value in batch.items()
        }

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader(self.eval_split)

    def predict_dataloader(self) -> DataLoader:
        return self.loader(self.eval_split)
