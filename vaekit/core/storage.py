"""Where a split's examples live: tensors in memory, a memory-mapped Arrow cache read per batch, or a stream.

A plugin describes a split as ``Rows`` (items such as files or lines, and how to decode one). The examples
are decoded once into an Arrow file (written by ``datasets``, opened memory-mapped by every process and
data-loader worker), so the same cache serves a laptop run held in RAM and a cluster run that never holds
more than a batch; a hub dataset may instead be streamed and decoded as it arrives. The map-style splits
answer the same calls: ``len``, a whole small column (labels, lengths), a batch by indices (``take``, which
``DataLoader`` calls as ``__getitems__``) and ``select`` (sub-splits by index).

Over 400 lines on purpose: the three forms answer one interface, and reading them side by side is how
one keeps them answering it alike.
"""

from __future__ import annotations

import functools
import hashlib
import json
import mmap
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from vaekit.core.io import atomic_folder

Example = dict[str, "np.ndarray | int | float"]
ROW = "row"  # every batch says which rows of its cache it holds (stable example ids)
_WRITE_CHUNK = 1000


@dataclass(frozen=True)
class Rows:
    """A split not decoded yet: ``decode(item)`` turns one item (a file, a line) into zero or more examples.

    An example is a dict of numpy arrays (one dtype and trailing shape per column; the first dimension may
    vary, as with sentences, and is zero-padded in batches) and numbers. ``fingerprint`` must change whenever
    the decoded examples would (file sizes and times, decoding options): it names the cache.
    """

    items: Iterable[Any]
    decode: Callable[[Any], Iterable[Example]]
    fingerprint: str
    count: int | None = None  # how many items, for the progress bar


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (options, file stats)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def file_stats(paths: Iterable[str | Path]) -> list[tuple[str, int, int]]:
    """(path, size, modification time) of each file: what a cache of their decoded contents depends on."""
    stats = []
    for path in paths:
        info = os.stat(path)
        stats.append((str(path), info.st_size, info.st_mtime_ns))
    return stats


# Every name a split goes by in datasets, folders and file names -> vaekit's name for it: one table for all plugins.
SPLIT_ALIASES = {
    "train": "train",
    "valid": "val",
    "val": "val",
    "validation": "val",
    "dev": "val",
    "eval": "val",
    "test": "test",
}


SPLITS = ("train", "val", "test")


def canonical_split(name: str) -> str | None:
    """vaekit's name (train, val, test) for a split, folder or file-name part; None if it names no split."""
    return SPLIT_ALIASES.get(name.lower())


def split_aliases(split: str) -> tuple[str, ...]:
    """The names ``split`` (train, val, test) goes by, in the order files are looked for."""
    return tuple(alias for alias, canonical in SPLIT_ALIASES.items() if canonical == split)


def walk_files(folder: Path, extensions: set[str]) -> Iterator[Path]:
    """Files with these extensions under ``folder``, in a stable (sorted) order, listed lazily."""
    entries = sorted(os.scandir(folder), key=lambda e: e.name)
    for entry in entries:
        if entry.is_dir():
            yield from walk_files(Path(entry.path), extensions)
        elif os.path.splitext(entry.name)[1].lower() in extensions:
            yield Path(entry.path)


def scan_folder(folder: Path, extensions: set[str]) -> tuple[str, int]:
    """A digest of the folder's files (relative path, size, modification time) and their count, in one pass
    that keeps no list: what a cache of the decoded files depends on, cheap enough to check every run."""
    digest = hashlib.sha256()
    count = 0
    for path in walk_files(folder, extensions):
        info = path.stat()
        digest.update(f"{path.relative_to(folder)}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
        count += 1
    return digest.hexdigest()[:20], count


# --------------------------------------------------------------------------- in memory


class TensorSplit(torch.utils.data.Dataset):
    """Examples held as tensors; a batch is gathered with one index op per column."""

    def __init__(self, columns: dict[str, Tensor]) -> None:
        sizes = {k: len(v) for k, v in columns.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"columns differ in length: {sizes}")
        count = next(iter(sizes.values()))
        self.columns = columns if ROW in columns else {**columns, ROW: torch.arange(count)}

    def __len__(self) -> int:
        return len(self.columns[ROW])

    def __getitem__(self, column: str) -> Tensor:
        return self.columns[column]

    def take(self, indices: Sequence[int] | Tensor) -> dict[str, Tensor]:
        """The examples at ``indices`` as one batch."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return {k: v[index] for k, v in self.columns.items()}

    __getitems__ = take  # what DataLoader calls for a whole batch

    def select(self, indices: Sequence[int] | Tensor) -> TensorSplit:
        return TensorSplit(self.take(indices))


# --------------------------------------------------------------------------- on disk


@dataclass(frozen=True)
class ArrayColumn:
    """How an array column is stored: raw bytes per row, read back with this dtype and trailing shape."""

    dtype: str
    shape: tuple[int, ...]  # of one row, without the first dimension when ``ragged``
    ragged: bool


@dataclass(frozen=True)
class _OpenedCache:
    """One cache file as this process sees it: the Arrow table over a read-only mapping (its metadata, offsets
    and number columns are read from there), the open file the rows are read from, how array columns read
    back, and (filled on first use) per column where each chunk starts, its offsets and its data's place in
    the file."""

    table: Any
    file: Any  # open for the life of the process, like the mapping
    base: int  # the mapping's address: an Arrow buffer's address minus this is its place in the file
    arrays: dict[str, ArrayColumn]
    numbers: dict[str, np.ndarray]
    chunks: dict[str, tuple[np.ndarray, list[tuple[np.ndarray, int]]]]


@functools.cache
def _open_cache(folder: Path) -> _OpenedCache:
    """Open a cache file once per process: every split cut from it (train, val, a label filter) shares it."""
    import pyarrow as pa

    manifest = json.loads((folder / "manifest.json").read_text())
    arrays = {k: ArrayColumn(v["dtype"], tuple(v["shape"]), v["ragged"]) for k, v in manifest["arrays"].items()}
    file = open(folder / "data.arrow", "rb")  # noqa: SIM115 (kept open in the returned cache)
    mapped = pa.py_buffer(mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ))
    table = pa.ipc.open_stream(mapped).read_all()  # zero-copy: buffers point into the mapping
    numbers = {name: table.column(name).to_numpy() for name in manifest["numbers"]}
    return _OpenedCache(table, file, mapped.address, arrays, numbers, {})


class ArrowSplit(torch.utils.data.Dataset):
    """Examples in a memory-mapped Arrow cache; a batch reads only its own rows.

    Pickles as its path, so data-loader workers and DDP ranks open the same file (the page cache is shared).
    Number columns (labels, lengths) are read whole; array columns are read per batch, row by row, at the
    offsets the mapped Arrow table gives.
    """

    def __init__(self, folder: Path, rows: np.ndarray | None = None) -> None:
        self.folder = folder
        self.cache = _open_cache(folder)
        self.arrays, self.numbers = self.cache.arrays, self.cache.numbers
        self.rows = np.arange(self.cache.table.num_rows) if rows is None else rows

    def __getstate__(self) -> dict[str, Any]:
        return {"folder": self.folder, "rows": self.rows}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["folder"], state["rows"])

    def __len__(self) -> int:
        return len(self.rows)

    def _chunks(self, name: str) -> tuple[np.ndarray, list[tuple[np.ndarray, int]]]:
        """Where each Arrow chunk of a column starts, and per chunk its offsets and its data's file position."""
        chunks = self.cache.chunks
        if name not in chunks:
            column = self.cache.table.column(name).chunks
            starts = np.cumsum([0] + [len(c) for c in column])
            placed = []
            for chunk in column:
                _, offsets, data = chunk.buffers()
                offsets = np.frombuffer(offsets, dtype=np.int32)[chunk.offset : chunk.offset + len(chunk) + 1]
                placed.append((offsets, data.address - self.cache.base))
            chunks[name] = (starts, placed)
        return chunks[name]

    def _gather(self, name: str, rows: np.ndarray) -> Tensor:
        """The rows' arrays, read with ``pread``: the data pass through the page cache without being mapped into
        this process, so its resident memory stays the same however much of the cache an epoch reads."""
        column = self.arrays[name]
        starts, placed = self._chunks(name)
        which = np.searchsorted(starts, rows, side="right") - 1
        pieces = []
        for chunk, row in zip(which.tolist(), (rows - starts[which]).tolist(), strict=True):
            offsets, position = placed[chunk]
            start, end = int(offsets[row]), int(offsets[row + 1])
            piece = np.frombuffer(os.pread(self.cache.file.fileno(), end - start, position + start), dtype=column.dtype)
            pieces.append(piece.reshape(-1, *column.shape) if column.ragged else piece.reshape(column.shape))
        return stack(pieces)

    def take(self, indices: Sequence[int] | Tensor) -> dict[str, Tensor]:
        """The examples at ``indices`` as one batch (ragged arrays zero-padded to the longest)."""
        rows = self.rows[np.asarray(indices, dtype=np.int64)]
        batch = {name: self._gather(name, rows) for name in self.arrays}
        batch.update({name: torch.from_numpy(values[rows]) for name, values in self.numbers.items()})
        return {**batch, ROW: torch.from_numpy(rows)}

    __getitems__ = take

    def __getitem__(self, column: str) -> Tensor:
        """A whole column: cheap for numbers, reads every row for arrays."""
        if column in self.numbers:
            return torch.from_numpy(self.numbers[column][self.rows])
        if column == ROW:
            return torch.from_numpy(self.rows)
        return self._gather(column, self.rows)

    def select(self, indices: Sequence[int] | Tensor) -> ArrowSplit:
        return ArrowSplit(self.folder, self.rows[np.asarray(indices, dtype=np.int64)])

    def load(self) -> TensorSplit:
        """The same examples as tensors in memory (padded to the longest row in ragged columns)."""
        return TensorSplit(self.take(range(len(self))))

    @property
    def nbytes(self) -> int:
        """Bytes of the rows this split uses (a sub-split is a share of its cache file)."""
        table = self.cache.table
        return round(table.nbytes * len(self.rows) / max(1, table.num_rows))


def stack(arrays: list[np.ndarray]) -> Tensor:
    """One batch tensor from per-example arrays; a first dimension that varies is zero-padded to the longest."""
    if all(a.shape == arrays[0].shape for a in arrays):
        return torch.from_numpy(np.stack(arrays))
    batch = np.zeros((len(arrays), max(len(a) for a in arrays), *arrays[0].shape[1:]), dtype=arrays[0].dtype)
    for i, array in enumerate(arrays):
        batch[i, : len(array)] = array
    return torch.from_numpy(batch)


# --------------------------------------------------------------------------- streamed


class StreamSplit(torch.utils.data.IterableDataset):
    """Examples decoded as they stream in (a hub dataset with ``streaming=True``): nothing is downloaded whole.

    Each DDP rank reads its own share (``datasets.distributed.split_dataset_by_node``), data-loader workers
    split the rank's shards between them, and training streams are shuffled through a buffer, reseeded
    on every pass. ``ROW`` is an example's position in this process's stream.
    """

    def __init__(self, rows: Rows, shuffle: bool = False, seed: int = 0, labels: set[int] | None = None) -> None:
        self.rows, self.shuffle, self.seed, self.labels = rows, shuffle, seed, labels
        self.epoch = 0
        self.shuffle_buffer = 1000

    def _items(self) -> Any:
        from datasets.distributed import split_dataset_by_node

        items = self.rows.items
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
            items = split_dataset_by_node(items, rank=rank, world_size=world)
        if self.shuffle:  # a new order every pass (every epoch; each worker counts its own passes alike)
            items = items.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
            items.set_epoch(self.epoch)
            self.epoch += 1
        return items

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        position = 0
        for item in self._items():
            for example in self.rows.decode(item):
                if self.labels is not None and example.get("label") not in self.labels:
                    continue
                yield {**example, ROW: position}
                position += 1

    def with_labels(self, labels: set[int]) -> StreamSplit:
        return StreamSplit(self.rows, self.shuffle, self.seed, labels)

    def head(self, count: int) -> TensorSplit:
        """The first ``count`` examples in memory: what the spec (sizes, statistics) is computed from."""
        examples = [example for example, _ in zip(self, range(count), strict=False)]
        if not examples:
            raise ValueError("the stream holds no readable examples")
        return TensorSplit(collate_examples(examples))


def collate_examples(examples: list[dict[str, Any]]) -> dict[str, Tensor]:
    """Batch streamed examples: arrays stacked (padded where ragged), numbers as tensors."""
    return {
        name: stack([e[name] for e in examples])
        if isinstance(value, np.ndarray)
        else torch.tensor([e[name] for e in examples])
        for name, value in examples[0].items()
    }


Split = TensorSplit | ArrowSplit | StreamSplit


def split_batches(split: Split, size: int) -> Iterator[dict[str, Tensor]]:
    """A split in order, ``size`` examples at a time (statistics over the training data)."""
    for start in range(0, len(split), size):
        yield split.take(range(start, min(start + size, len(split))))


# --------------------------------------------------------------------------- writing a cache


def _describe(example: Example) -> tuple[dict[str, ArrayColumn], list[str]]:
    """Array and number columns, from the first example (array shapes are checked against it later)."""
    arrays = {k: ArrayColumn(v.dtype.str, v.shape, False) for k, v in example.items() if isinstance(v, np.ndarray)}
    return arrays, [name for name in example if name not in arrays]


def _check_shapes(arrays: dict[str, ArrayColumn], example: Example, desc: str) -> None:
    """Arrays keep their trailing shape; a first dimension that varies makes the column ragged (padded)."""
    for name, column in arrays.items():
        shape = example[name].shape
        if shape == column.shape:
            continue
        if len(shape) != len(column.shape) or not shape or shape[1:] != column.shape[1:]:
            raise ValueError(f"{desc}: column {name!r} of an example has shape {shape} but earlier ones {column.shape}")
        arrays[name] = ArrayColumn(column.dtype, column.shape, True)


def _features(example: Example, arrays: dict[str, ArrayColumn], numbers: list[str]) -> Any:
    import datasets

    features = {name: datasets.Value("binary") for name in arrays}
    for name in numbers:
        features[name] = datasets.Value("float64" if isinstance(example[name], float) else "int64")
    return datasets.Features(features)


def write_cache(folder: Path, rows: Rows, desc: str, skipped: list[str]) -> None:
    """Decode ``rows`` into ``folder`` (``data.arrow`` + ``manifest.json``), atomically, a chunk at a time.

    ``skipped`` collects the decoder's skip messages; they are kept in the manifest so a later run that reads
    the cache can still say what was left out.
    """
    from datasets.arrow_writer import ArrowWriter

    first_skipped = len(skipped)
    with atomic_folder(folder) as staging:
        writer: ArrowWriter | None = None
        arrays: dict[str, ArrayColumn] = {}
        numbers: list[str] = []
        chunk: list[Example] = []

        def flush() -> None:
            batch = {name: [e[name].tobytes() for e in chunk] for name in arrays}
            batch.update({name: [e[name] for e in chunk] for name in numbers})
            writer.write_batch(batch)
            chunk.clear()

        count = 0
        items = tqdm(rows.items, total=rows.count, desc=desc, unit="item", delay=2.0)  # shown if it takes a while
        for item in items:
            for example in rows.decode(item):
                if writer is None:
                    arrays, numbers = _describe(example)
                    # Big record batches: opening the file then touches few pages besides the data asked for.
                    path = str(staging / "data.arrow")
                    features = _features(example, arrays, numbers)
                    writer = ArrowWriter(features=features, path=path, writer_batch_size=_WRITE_CHUNK)
                _check_shapes(arrays, example, desc)
                chunk.append(example)
                count += 1
                if len(chunk) == _WRITE_CHUNK:
                    flush()
        if writer is None:
            raise ValueError(f"{desc}: nothing to decode (no readable examples)")
        if chunk:
            flush()
        writer.finalize()
        writer.close()
        manifest = {
            "rows": count,
            "arrays": {
                name: {"dtype": c.dtype, "shape": list(c.shape[1:] if c.ragged else c.shape), "ragged": c.ragged}
                for name, c in arrays.items()
            },
            "numbers": numbers,
            "skipped": skipped[first_skipped:],
        }
        (staging / "manifest.json").write_text(json.dumps(manifest))
