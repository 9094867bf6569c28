"""Paired data for joint models: the examples of several modality datasets, tuple by tuple.

Each part is loaded by its own plugin's data module, with that module's own splits and held-out rules (the
FSDD test speaker stays unseen, whatever it is paired with). Tuples are formed

- by a shared label (``pair_by: label``): each example of the anchor part (the part with fewest examples in
  the split; for training, ``anchor`` may name another) is joined by an example of the same label from every
  other part, drawn afresh each training epoch and once, with the seed, for validation and test; labels are
  matched by name across the parts;
- or by an index file (``pair_by: index``): a CSV with one column per part, a ``split`` column
  (train/val/test) and optionally a ``label`` column; each cell is what that plugin's ``load_inputs`` reads
  (a file path, relative to the index file, or a sentence). An empty cell is a missing modality.

An example that lacks a modality (an empty cell, a label one part has no example of) carries a stand-in
example flagged ``present`` False, which the joint model leaves out of that example's bound.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from vaekit.core.data import VAEDataModule
from vaekit.core.plain import instantiate
from vaekit.core.storage import Split, StreamSplit, TensorSplit
from vaekit.modalities.multimodal.model import PRESENT, JointBatch, JointSpec, part_modality
from vaekit.modalities.registry import get_modality

SPLITS = ("train", "val", "test")
# `--data.image_root DIR` and the like: the built-in modalities' roots, as flags of their own.
ROOT_FLAGS = ("image", "audio", "text")


class Pairing:
    """One split of paired data: ``batch(rows)`` gives the tuples whose anchor examples are ``rows``."""

    def __init__(self, datamodule: PairedDataModule, split: str, anchor: str) -> None:
        self.datamodule, self.split, self.anchor = datamodule, split, anchor
        self.parts: dict[str, Split] = {name: dm.split(split) for name, dm in datamodule.part_modules.items()}
        self.labels = {name: datamodule.joint_labels(name, split) for name in self.parts}
        self.count = len(self.parts[anchor])
        # Each part's examples grouped by joint label: ``order[offsets[y] : offsets[y] + counts[y]]`` hold label y.
        classes = len(datamodule.label_names)
        self.groups = {}
        for name, labels in self.labels.items():
            labelled = (labels >= 0).nonzero().squeeze(1)
            order = labelled[torch.argsort(labels[labelled], stable=True)]
            counts = torch.bincount(labels[labelled], minlength=classes)
            self.groups[name] = (order, counts, torch.cumsum(counts, 0) - counts)
        generator = torch.Generator().manual_seed(datamodule.hparams.seed + SPLITS.index(split))
        self.fixed = None if split == "train" else self.draw(torch.arange(self.count), generator)

    def __len__(self) -> int:
        return self.count

    def draw(self, rows: Tensor, generator: torch.Generator | None = None) -> dict[str, tuple[Tensor, Tensor]]:
        """For each part, the partner row of every anchor row (same label, at random) and whether it has one."""
        label = self.labels[self.anchor][rows]
        chosen = {}
        for name, (order, counts, offsets) in self.groups.items():
            if name == self.anchor:
                chosen[name] = (rows, torch.ones(len(rows), dtype=torch.bool))
                continue
            known = label.clamp(min=0)
            has = (label >= 0) & (counts[known] > 0)
            pick = offsets[known] + (torch.rand(len(rows), generator=generator) * counts[known]).long()
            # Rows without a partner take the part's first example as a stand-in (``present`` False).
            partner = order[pick[has]] if has.any() else torch.zeros(0, dtype=torch.long)
            chosen[name] = (torch.zeros_like(rows).masked_scatter(has, partner), has)
        return chosen

    def batch(self, rows: Sequence[int]) -> JointBatch:
        rows = torch.as_tensor(list(rows), dtype=torch.long)
        chosen = self.draw(rows) if self.fixed is None else {n: (r[rows], p[rows]) for n, (r, p) in self.fixed.items()}
        label = self.labels[self.anchor][rows]
        out = {}
        for name, (partner, has) in chosen.items():
            part = self.datamodule.part_modules[name]
            examples = part.collate(self.parts[name].take(partner), self.split)
            out[name] = {**examples, "label": label, PRESENT: has}
        return out


class IndexPairing:
    """One split of an index file: the tuples in the file's order, each cell decoded by its part's plugin."""

    def __init__(self, tuples: dict[str, TensorSplit], labels: Tensor) -> None:
        self.tuples, self.label = tuples, labels
        self.count = len(labels)

    def __len__(self) -> int:
        return self.count

    def batch(self, rows: Sequence[int]) -> JointBatch:
        rows = list(rows)
        return {name: {**split.take(rows), "label": self.label[rows]} for name, split in self.tuples.items()}


class PairedDataModule(VAEDataModule):
    """Examples of several modalities paired into tuples, for a joint model (see the module's docstring).

    ``sources`` maps each part name to its plugin data module's arguments (as under ``data.init_args`` of that
    plugin's own recipe), with ``modality`` when the name is not the modality's. Data-module options given
    here (``limit``, ``labels``, ``cache_dir``...) are every part's defaults; ``batch_size``,
    ``eval_batch_size``, ``seed`` and ``num_workers`` are the pairs'. ``root`` is where a relative
    ``index_file`` is found.
    """

    def __init__(
        self,
        sources: dict[str, dict[str, Any]],
        pair_by: Literal["label", "index"] = "label",
        index_file: str | None = None,
        anchor: str | None = None,
        image_root: str | None = None,
        audio_root: str | None = None,
        text_root: str | None = None,
        root: str = ".",
        **common: Any,
    ) -> None:
        super().__init__(root, **common)
        if len(sources) < 1:
            raise ValueError("--data.sources names no modality; a joint model pairs two or more")
        if pair_by == "index" and not index_file:
            raise ValueError("--data.pair_by index needs --data.index_file (a CSV with a column per part)")
        if anchor is not None and anchor not in sources:
            raise ValueError(f"--data.anchor {anchor!r} is not a part ({list(sources)})")
        roots = {"image": image_root, "audio": audio_root, "text": text_root}
        shared = {k: v for k, v in common.items() if k not in ("batch_size", "eval_batch_size", "num_workers")}
        self.part_modules: dict[str, VAEDataModule] = {}
        saved = {}
        for name, args in sources.items():
            modality = part_modality(name, args)
            args = {**shared, **{k: v for k, v in args.items() if k != "modality"}}
            if roots.get(name):
                args["root"] = roots[name]
            if "root" not in args:
                flag = f"--data.{name}_root" if name in ROOT_FLAGS else f"--data.sources (a 'root' for {name})"
                raise ValueError(f"no data for the {name!r} part: give its folder with {flag}")
            module = instantiate(get_modality(modality).datamodule, args, f"--data.sources.{name}")
            self.part_modules[name] = module
            # Saved with absolute roots, so the checkpoint's commands find the data from any directory.
            saved[name] = {**sources[name], "root": module.hparams.root}
        self.hparams.sources = saved
        for flag in ROOT_FLAGS:
            self.hparams[f"{flag}_root"] = None

    # ---------------------------------------------------------------- spec
    def adopt_spec(self, spec: JointSpec) -> None:
        """Each part's data prepared as in training: its own spec handed back to it."""
        self.spec = spec
        self.label_names = list(spec.label_names)
        for name, module in self.part_modules.items():
            modality = part_modality(name, self.hparams.sources[name])
            module.adopt_spec(get_modality(modality).model.spec_type(**spec.parts[name]))

    def _shared_labels(self) -> list[str]:
        """The label names every part has, in the first part's order (labels pair by name, not by index)."""
        names = [m.label_names for m in self.part_modules.values()]
        if any(not n for n in names):
            unlabelled = [p for p, m in self.part_modules.items() if not m.label_names]
            raise ValueError(
                f"--data.pair_by label needs labelled data, and the {unlabelled} part(s) have no labels; "
                "pair them by an index file instead (--data.pair_by index --data.index_file FILE.csv)"
            )
        shared = [n for n in names[0] if all(n in other for other in names[1:])]
        if not shared:
            raise ValueError(f"the parts share no label name ({', '.join(str(n[:5]) for n in names)} ...)")
        return shared

    def joint_labels(self, name: str, split: str) -> Tensor:
        """A part's labels in the joint label order (-1 for a label the other parts lack)."""
        module = self.part_modules[name]
        mapping = torch.tensor([self.label_names.index(n) if n in self.label_names else -1 for n in module.label_names])
        labels = module.split(split)["label"].long()
        return torch.where(labels >= 0, mapping[labels.clamp(min=0)], labels)

    # ---------------------------------------------------------------- loading
    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        for module in self.part_modules.values():
            module.setup(stage)
            if any(isinstance(s, StreamSplit) for s in module.splits.values()):
                raise ValueError(f"{module.source}: a streamed dataset cannot be paired; pass --data.streaming false")
        if self.hparams.pair_by == "label":
            self.label_names = self.spec.label_names if self.spec is not None else self._shared_labels()
            self.splits = {split: self._label_pairing(split) for split in SPLITS if self._has(split)}
        else:
            self.splits = self._index_pairings()
        if self.spec is None:
            parts = {name: dataclasses.asdict(m.spec) for name, m in self.part_modules.items()}
            self.spec = JointSpec(parts=parts, label_names=self.label_names)

    def _has(self, split: str) -> bool:
        return all(split in m.splits for m in self.part_modules.values())

    def _label_pairing(self, split: str) -> Pairing:
        """Validation and test go through the part with the fewest examples there, each once (each of a
        held-out speaker's clips, say); training through ``anchor`` if set, so an epoch can be longer."""
        fewest = min(self.part_modules, key=lambda n: len(self.part_modules[n].split(split)))
        return Pairing(self, split, self.hparams.anchor if split == "train" and self.hparams.anchor else fewest)

    def _index_pairings(self) -> dict[str, IndexPairing]:
        path = Path(self.hparams.index_file)
        path = path if path.is_absolute() else Path(self.hparams.root) / path
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such index file; pass --data.index_file FILE.csv")
        with open(path, newline="", encoding="utf-8") as handle:
            table = list(csv.DictReader(handle))
        columns = set(table[0]) if table else set()
        missing = [c for c in (*self.part_modules, "split") if c not in columns]
        if missing:
            raise ValueError(
                f"{path}: no column(s) {missing}; it needs one per part ({list(self.part_modules)}) and 'split'"
            )
        bad = [i + 2 for i, row in enumerate(table) if row["split"] not in SPLITS]
        if bad:
            raise ValueError(f"{path}: line {bad[0]}: split must be one of {SPLITS}")
        self.label_names = sorted({row["label"] for row in table if row.get("label")})
        pairings = {}
        for split in SPLITS:
            rows = [row for row in table if row["split"] == split]
            if rows:
                labels = torch.tensor([self.label_names.index(r["label"]) if r.get("label") else -1 for r in rows])
                tuples = {name: self._decode_column(name, path, rows) for name in self.part_modules}
                pairings[split] = IndexPairing(tuples, labels)
        if "train" not in pairings and self.spec is None:
            raise ValueError(f"{path}: no row has split 'train'")
        return pairings

    def _decode_column(self, name: str, index: Path, rows: list[dict[str, str]]) -> TensorSplit:
        """One part's cells through its plugin's ``load_inputs``; an empty cell borrows a stand-in, not present."""
        cells = [row[name].strip() for row in rows]
        filled = [c for c in cells if c]
        if not filled:
            raise ValueError(f"{index}: every {name!r} cell of a split is empty; give at least one")

        def located(cell: str) -> str:
            candidate = index.parent / cell
            return str(candidate) if candidate.exists() else cell

        items = [located(c or filled[0]) for c in cells]
        try:
            batch = self.part_modules[name].load_inputs(items)
        except (OSError, ValueError) as err:
            raise ValueError(f"{index}: column {name!r}: {err}") from err
        return TensorSplit({**batch, PRESENT: torch.tensor([bool(c) for c in cells])})

    # ---------------------------------------------------------------- batches
    def loader(self, split: str, shuffle: bool = False) -> DataLoader:
        pairing = self.split(split)
        size = self.hparams.batch_size if shuffle else (self.hparams.eval_batch_size or self.hparams.batch_size)
        return DataLoader(
            range(len(pairing)),
            batch_size=size,
            shuffle=shuffle,
            collate_fn=pairing.batch,
            num_workers=self.hparams.num_workers,
        )

    def examples(self, name: str, indices: Sequence[int]) -> JointBatch:
        pairing = self.split(name)
        if max(indices) >= len(pairing):
            raise ValueError(f"asked for {max(indices) + 1} examples but the {name} split has {len(pairing)} tuples")
        return pairing.batch(indices)

    def batches(self, name: str, max_examples: int, size: int) -> Iterator[JointBatch]:
        pairing = self.split(name)
        rows = torch.randperm(len(pairing), generator=torch.Generator().manual_seed(self.hparams.seed))
        for chunk in rows[:max_examples].sort().values.split(size):
            yield pairing.batch(chunk.tolist())

    def keep_first(self, name: str, count: int) -> None:
        self.split(name).count = min(count, len(self.split(name)))

    def collate(self, batch: Any, split: str) -> Any:
        return batch  # each part's data module collated its own examples

    def on_after_batch_transfer(self, batch: JointBatch, dataloader_idx: int) -> JointBatch:
        """Each part's device-side transform (dynamic binarisation, log-mels) on its own batch."""
        out = {}
        for name, part_batch in batch.items():
            module = self.part_modules[name]
            module.trainer = self.trainer
            out[name] = module.on_after_batch_transfer(part_batch, dataloader_idx)
        return out

    def load_part_inputs(self, name: str, items: list[str]) -> JointBatch:
        """User inputs of one modality (`--from audio --input clip.wav`) as a joint batch holding only it."""
        if name not in self.part_modules:
            raise ValueError(f"--from {name!r}: the model's modalities are {list(self.part_modules)}")
        return {name: self.part_modules[name].load_inputs(items)}
