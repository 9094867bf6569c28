"""Tables as the model sees them: reading files, inferring column types, the fitted transforms (the spec),
and turning rows into tensors and back.

A row becomes one float vector: the numeric columns standardised with the training split's mean and
standard deviation, then the categorical columns as category indices; a missing cell is NaN, which the
likelihood masks out (it is never imputed). The spec holds everything needed to go back to the original
units and category names, as plain lists, so a checkpoint or an exported folder carries it.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

TABLE_EXTENSIONS = (".csv", ".parquet", ".npz")
LABEL_MISSING = -1  # the label of a row whose label cell is empty or unknown to the model
# A column read as text is a numeric column with bad cells (rather than a categorical one) when at least this
# share of its filled cells are numbers.
NUMERIC_SHARE = 0.9


@dataclass(frozen=True)
class TableSpec:
    """The columns and the transforms fitted on the training split; stored in every checkpoint.

    Numeric columns are standardised by ``means``/``stds``; ``integer`` columns are rounded and every numeric
    output is kept within the training ``minimum``/``maximum``. ``categories[i]`` lists the categories of
    ``categorical[i]`` (a value's index is its code). ``constant`` columns held one value in training: the model
    ignores them and writes them back as they were. ``order`` is the column order of written tables.
    """

    numeric: list[str]
    means: list[float]
    stds: list[float]
    integer: list[bool]
    minimum: list[float]
    maximum: list[float]
    categorical: list[str]
    categories: list[list[str]]
    order: list[str]
    constant: dict[str, str] = field(default_factory=dict)
    label: str | None = None
    label_names: list[str] = field(default_factory=list)
    # The labels of normal rows: `vaekit score` reports its AUROC of finding the others.
    normal_labels: list[str] = field(default_factory=list)

    @property
    def columns(self) -> int:
        return len(self.numeric) + len(self.categorical)

    @property
    def vocab_sizes(self) -> list[int]:
        return [len(c) for c in self.categories]


@dataclass(frozen=True)
class ColumnChoices:
    """The data module's per-column overrides (``--data.numeric``, ``--data.categorical``, ``--data.ignore``)."""

    numeric: list[str]
    categorical: list[str]
    ignore: list[str]
    label: str | None
    max_categories: int


class TableError(ValueError):
    """A table vaekit cannot use as it is; the message names the file, the column and the fix."""


# --------------------------------------------------------------------------- reading


def read_table(path: Path) -> pd.DataFrame:
    """A CSV, Parquet or ``.npz`` (``X``, optional ``y`` as the column ``label``) file as a data frame."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        _check_rectangular(path)
        try:
            return pd.read_csv(path, low_memory=False)
        except (pd.errors.ParserError, UnicodeDecodeError) as err:
            raise TableError(f"{path}: not a readable CSV ({err}); save it again as UTF-8 CSV") from err
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as arrays:
            if "X" not in arrays:
                raise TableError(f"{path}: a table .npz needs an array X (rows x columns), it has {list(arrays)}")
            x = arrays["X"]
            if x.ndim != 2:
                raise TableError(f"{path}: X has shape {x.shape}; a table is 2-D (rows x columns)")
            frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])])
            if "y" in arrays:
                frame["label"] = arrays["y"]
            return frame
    raise TableError(f"{path}: not a table file; vaekit reads {', '.join(TABLE_EXTENSIONS)}")


def _check_rectangular(path: Path) -> None:
    """Every CSV line holds as many fields as the header: pandas would silently pad short lines."""
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header:
            raise TableError(f"{path}: empty CSV; the first line must name the columns")
        for row in reader:
            if row and len(row) != len(header):
                raise TableError(
                    f"{path}: line {reader.line_num} has {len(row)} fields but the header names {len(header)} "
                    "columns (a ragged CSV); fix that line, or quote the cells that contain commas"
                )


# --------------------------------------------------------------------------- fitting the spec


def _category_text(value: object) -> str:
    """A category as text; whole-number floats as integers, so 3 and 3.0 (a column with gaps) are one category."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _as_numbers(column: pd.Series, where: str) -> pd.Series:
    """A column of numbers; a cell that is not one is an error naming it (missing cells stay missing)."""
    numbers = pd.to_numeric(column, errors="coerce")
    bad = numbers.isna() & column.notna() & (column.astype(str).str.strip() != "")
    if bad.any():
        row = bad.idxmax()
        raise TableError(
            f"{where}: column {column.name!r} is numeric but row {row} (counted from 0 after the header) holds {column[row]!r} "
            f"({int(bad.sum())} such cell(s)); fix or empty those cells (an empty cell is a missing value), "
            f"or declare the column categorical with --data.categorical [{column.name}]"
        )
    return numbers.astype(np.float64)


def _is_numeric(column: pd.Series, choices: ColumnChoices, where: str) -> bool:
    if column.name in choices.categorical:
        return False
    if column.name in choices.numeric or pd.api.types.is_bool_dtype(column):
        return column.name in choices.numeric
    if pd.api.types.is_numeric_dtype(column):
        return True
    filled = column.dropna()
    filled = filled[filled.astype(str).str.strip() != ""]
    share = pd.to_numeric(filled, errors="coerce").notna().mean() if len(filled) else 0.0
    if share >= NUMERIC_SHARE:
        _as_numbers(column, where)  # raises, naming the text cells, if any
        return True
    return False


def fit_spec(frame: pd.DataFrame, choices: ColumnChoices, where: str) -> tuple[TableSpec, list[str]]:
    """Column types and transforms from the training rows; also the constant columns' names (for a warning)."""
    unknown = [c for c in [*choices.numeric, *choices.categorical, *choices.ignore] if c not in frame.columns]
    if unknown:
        raise TableError(f"{where}: no column(s) {unknown}; its columns are {list(frame.columns)}")
    label = choices.label if choices.label in frame.columns else None
    used = [c for c in frame.columns if c != label and c not in choices.ignore]
    if not used:
        raise TableError(f"{where}: no columns to model (all are ignored or the label)")
    numeric: dict[str, pd.Series] = {}
    categorical: dict[str, list[str]] = {}
    constant: dict[str, str] = {}
    for name in used:
        column = frame[name]
        if _is_numeric(column, choices, where):
            values = _as_numbers(column, where).dropna()
            if values.nunique() <= 1:
                constant[name] = _category_text(values.iloc[0]) if len(values) else ""
            else:
                numeric[name] = values
        else:
            seen = sorted({_category_text(v) for v in column.dropna()})
            if len(seen) > choices.max_categories:
                raise TableError(
                    f"{where}: column {name!r} has {len(seen)} distinct values, more than --data.max_categories "
                    f"{choices.max_categories}, so it looks like an identifier or free text; leave it out with "
                    f"--data.ignore [{name}], declare it --data.numeric [{name}], or raise --data.max_categories"
                )
            if len(seen) <= 1:
                constant[name] = seen[0] if seen else ""
            else:
                categorical[name] = seen
    if not numeric and not categorical:
        raise TableError(f"{where}: every column holds a single value; there is nothing to model")
    labels = _label_names(frame[label]) if label else []
    spec = TableSpec(
        numeric=list(numeric),
        means=[float(v.mean()) for v in numeric.values()],
        stds=[float(v.std(ddof=0)) for v in numeric.values()],
        integer=[bool(np.all(np.mod(v.to_numpy(), 1) == 0)) for v in numeric.values()],
        minimum=[float(v.min()) for v in numeric.values()],
        maximum=[float(v.max()) for v in numeric.values()],
        categorical=list(categorical),
        categories=list(categorical.values()),
        order=[c for c in used if c not in constant] + list(constant),
        constant=constant,
        label=label,
        label_names=labels,
        normal_labels=_normal_labels(frame[label], labels) if label else [],
    )
    return spec, list(constant)


def _label_names(column: pd.Series) -> list[str]:
    names = sorted({_category_text(v) for v in column.dropna()})
    numbers = pd.to_numeric(pd.Series(names), errors="coerce")
    return [names[i] for i in np.argsort(numbers.to_numpy(), kind="stable")] if numbers.notna().all() else names


def _normal_labels(column: pd.Series, names: list[str]) -> list[str]:
    """``0`` where the labels are 0/1 (anomaly flags), else the most frequent label."""
    if "0" in names:
        return ["0"]
    return [column.dropna().map(_category_text).mode().iloc[0]] if names else []


# --------------------------------------------------------------------------- rows <-> tensors


@dataclass
class EncodedTable:
    """A table as tensors: ``x`` (rows, columns; NaN = missing), ``label`` (rows,), and the rows kept."""

    x: Tensor
    label: Tensor
    rows: Tensor
    skipped: list[str]


def encode_table(frame: pd.DataFrame, spec: TableSpec, where: str, skip_unseen: bool, fix: str) -> EncodedTable:
    """Rows in the model's form. An unseen category is an error naming it and ``fix``, or (``skip_unseen``)
    drops the row."""
    missing = [c for c in [*spec.numeric, *spec.categorical] if c not in frame.columns]
    if missing:
        raise TableError(
            f"{where}: lacks the column(s) {missing} the model was trained on; its columns are {list(frame.columns)}"
        )
    x = np.full((len(frame), spec.columns), np.nan, dtype=np.float64)
    for i, name in enumerate(spec.numeric):
        x[:, i] = (_as_numbers(frame[name], where).to_numpy() - spec.means[i]) / spec.stds[i]
    keep = np.ones(len(frame), dtype=bool)
    skipped: list[str] = []
    for j, (name, categories) in enumerate(zip(spec.categorical, spec.categories, strict=True)):
        codes = {c: k for k, c in enumerate(categories)}
        cells = frame[name]
        filled = cells.notna().to_numpy()
        text = cells[filled].map(_category_text)
        known = text.isin(codes.keys()).to_numpy()
        if not known.all():
            first = text[~known].iloc[0]
            message = (
                f"{where}: column {name!r} holds {first!r} (and {int((~known).sum()) - 1} more unseen cell(s)), a "
                f"category the model never saw in training (it knows {categories[:10]}{'...' if len(categories) > 10 else ''})"
            )
            if not skip_unseen:
                raise TableError(f"{message}; {fix}")
            skipped.append(message)
            rows_bad = np.flatnonzero(filled)[~known]
            keep[rows_bad] = False
        column = np.full(len(frame), np.nan)
        column[np.flatnonzero(filled)[known]] = text[known].map(codes).to_numpy(dtype=np.float64)
        x[:, len(spec.numeric) + j] = column
    label = np.full(len(frame), LABEL_MISSING, dtype=np.int64)
    if spec.label is not None and spec.label in frame.columns:
        index = {name: k for k, name in enumerate(spec.label_names)}
        label = frame[spec.label].map(
            lambda v: index.get(_category_text(v), LABEL_MISSING) if pd.notna(v) else LABEL_MISSING
        )
        label = label.to_numpy(dtype=np.int64)
    return EncodedTable(
        x=torch.from_numpy(x[keep]).float(),
        label=torch.from_numpy(label[keep]),
        rows=torch.from_numpy(np.flatnonzero(keep)),
        skipped=skipped,
    )


def decode_table(x: Tensor, spec: TableSpec) -> pd.DataFrame:
    """Model rows back in the original units and category names (NaN stays an empty cell)."""
    values = x.detach().double().cpu().numpy()
    columns: dict[str, object] = {}
    for i, name in enumerate(spec.numeric):
        column = np.clip(values[:, i] * spec.stds[i] + spec.means[i], spec.minimum[i], spec.maximum[i])
        columns[name] = pd.array(np.round(column), dtype="Int64") if spec.integer[i] else column
    for j, (name, categories) in enumerate(zip(spec.categorical, spec.categories, strict=True)):
        codes = values[:, len(spec.numeric) + j]
        columns[name] = [
            None if math.isnan(c) else categories[min(max(round(c), 0), len(categories) - 1)] for c in codes
        ]
    for name, value in spec.constant.items():
        columns[name] = [value] * len(values)
    return pd.DataFrame(columns)[spec.order]
