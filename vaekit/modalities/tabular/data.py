"""The table data module: CSV, Parquet or ``.npz`` files, or a hub dataset, as tensors of standardised rows."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor

from vaekit.core.data import VAEDataModule, split_off
from vaekit.core.storage import ROW, TensorSplit, canonical_split
from vaekit.modalities.tabular.table import (
    TABLE_EXTENSIONS,
    ColumnChoices,
    TableError,
    TableSpec,
    encode_table,
    fit_spec,
    read_table,
)


def _split_by_fraction(frame: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows the base data module's ``split_off`` would keep and hold out, with the same seed."""
    kept, held = split_off(TensorSplit({"index": torch.arange(len(frame))}), fraction, seed)
    return frame.iloc[kept["index"].numpy()], frame.iloc[held["index"].numpy()]


class TableDataModule(VAEDataModule):
    """Rows of a table: ``root`` is a CSV, Parquet or ``.npz`` file (``X``, optional ``y``), a folder holding one
    such file or one per split (``train.csv``, ``val.csv``, ``test.csv``), or a hub dataset id.

    Column types are inferred (numbers are numeric, text is categorical) unless ``numeric`` or ``categorical``
    names them; ``ignore`` leaves columns out; the column ``label`` (an ``.npz``'s ``y``) is used only to
    evaluate (`vaekit score` prints the AUROC of finding rows whose label is not ``normal_label``, by default
    ``0`` or else the most frequent label). Missing splits are held out by ``test_fraction``/``val_fraction``
    with the base module's seeds. The transforms are fitted on the whole training split, before the model
    sees a row, so the base's ``make_spec`` only hands the fitted spec over.
    """

    DEVICE_COLLATE = True  # rows are ready tensors; nothing to collate

    def __init__(
        self,
        root: str,
        numeric: list[str] | None = None,
        categorical: list[str] | None = None,
        ignore: list[str] | None = None,
        label: str | None = "label",
        normal_label: str | None = None,
        max_categories: int = 1000,
        **common: Any,
    ) -> None:
        super().__init__(root, **common)
        if self.hparams.streaming:
            raise ValueError("a table is read whole: --data.streaming is not supported for tables")
        self.choices = ColumnChoices(
            numeric=list(numeric or []),
            categorical=list(categorical or []),
            ignore=list(ignore or []),
            label=label,
            max_categories=max_categories,
        )
        self._fitted: TableSpec | None = None

    # ---------------------------------------------------------------- loading
    def table_files(self) -> dict[str, Path]:
        """The file of each split given as a file; ``{"all": path}`` for one table to split by fraction."""
        local = self.source.local
        if local.is_file():
            return {"all": local}
        tables = sorted(p for p in local.iterdir() if p.suffix.lower() in TABLE_EXTENSIONS and p.is_file())
        by_split = {canonical_split(p.stem): p for p in tables if canonical_split(p.stem)}
        if by_split:
            return by_split
        if len(tables) != 1:
            raise TableError(
                f"{local}: expected one table file ({', '.join(TABLE_EXTENSIONS)}) or files named by split "
                f"(train.csv, val.csv, test.csv), found {[p.name for p in tables] or 'none'}"
            )
        return {"all": tables[0]}

    def read_frames(self) -> dict[str, tuple[pd.DataFrame, str]]:
        """Each split as a data frame with where it came from (for messages)."""
        if self.source.local is None:
            dataset = self.hub_dataset()
            return {
                canonical_split(name): (dataset[name].to_pandas(), f"{self.source} {name}")
                for name in dataset
                if canonical_split(name)
            }
        return {split: (read_table(path), str(path)) for split, path in self.table_files().items()}

    def load_splits(self) -> dict[str, dict[str, Tensor]]:
        frames = self.read_frames()
        if "all" in frames:
            frame, where = frames.pop("all")
            frames["train"] = (frame, where)
        if "train" in frames and "test" not in frames:
            rest, held = _split_by_fraction(frames["train"][0], self.hparams.test_fraction, self.hparams.seed + 1)
            frames["train"], frames["test"] = (rest, frames["train"][1]), (held, frames["train"][1])
        if "train" in frames and "val" not in frames:
            rest, held = _split_by_fraction(frames["train"][0], self.hparams.val_fraction, self.hparams.seed)
            frames["train"], frames["val"] = (rest, frames["train"][1]), (held, frames["train"][1])
        spec = self.spec
        if spec is None:
            if "train" not in frames:
                raise TableError(f"{self.source}: no training rows (a train split, or one table)")
            spec, constant = fit_spec(frames["train"][0], self.choices, frames["train"][1])
            if constant:
                rank_zero_warn(
                    f"{frames['train'][1]}: {len(constant)} column(s) hold one value in the training rows and are "
                    f"left out of the model (written back as that value): {constant}"
                )
            if self.hparams.normal_label is not None:
                spec = replace(spec, normal_labels=[self.hparams.normal_label])
            self._fitted = spec
        self.label_names = list(spec.label_names)
        return {split: self.encode(frame, spec, where) for split, (frame, where) in frames.items()}

    def encode(self, frame: pd.DataFrame, spec: TableSpec, where: str) -> dict[str, Tensor]:
        fix = "empty those cells (a missing value is allowed), or set --data.skip_bad_files true to leave such rows out"
        table = encode_table(frame, spec, where, self.hparams.skip_bad_files, fix)
        self.skipped += table.skipped
        # The row's position in its file as the example's stable id (the base module's ``row``).
        return {"x": table.x, "label": table.label, ROW: torch.tensor(frame.index.to_numpy())[table.rows]}

    def make_spec(self, train: Any) -> TableSpec:
        return self._fitted

    def load_inputs(self, items: list[str]) -> dict[str, Tensor]:
        """Rows of table files (``--input rows.csv``), in file order, encoded with the model's transforms."""
        parts = []
        for item in items:
            path = Path(item)
            if not path.is_file():
                raise FileNotFoundError(f"{item}: no such table file")
            # Never skipped: each output row must stay the input row of the same index.
            fix = (
                "empty those cells (a missing value is allowed) or remove those rows, or retrain on data that has them"
            )
            parts.append(encode_table(read_table(path), self.spec, item, skip_unseen=False, fix=fix))
        return {"x": torch.cat([p.x for p in parts]), "label": torch.cat([p.label for p in parts])}
