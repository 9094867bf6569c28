"""Sentences from files or a hub dataset, decoded once, batched by length."""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import BatchSampler, RandomSampler, Sampler, SequentialSampler

from vaekit.core.data import VAEDataModule
from vaekit.core.module import Batch
from vaekit.core.schema import shorten
from vaekit.core.storage import ROW, SPLITS, Rows, Split, StreamSplit, file_stats, fingerprint, split_aliases
from vaekit.modalities.text.tokenizer import (
    TextSpec,
    is_utf8,
    load_tokenizer,
    tokenizer_from_spec,
    train_tokenizer,
    vocab_digest,
)

# --------------------------------------------------------------------------- data


@dataclass
class LoadReport:
    """What reading and tokenising a split left out or changed, counted rather than silently lost."""

    blank: int = 0
    bad_lines: int = 0
    truncated: int = 0
    dropped: int = 0


def iter_lines(path: Path, datamodule: VAEDataModule, report: LoadReport) -> Iterator[str]:
    """One sentence per line, read lazily; non-UTF-8 lines are errors naming file and line (or counted skips),
    blanks are skipped and counted."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                text = line.decode("utf-8").strip()
            except UnicodeDecodeError as err:
                report.bad_lines += 1
                datamodule.skip_or_raise(
                    f"{path}, line {number}: not valid UTF-8 (byte 0x{line[err.start]:02x} at column {err.start + 1}); "
                    "re-encode the file as UTF-8, e.g. iconv -f latin1 -t utf-8"
                )
                continue
            if text:
                yield text
            else:
                report.blank += 1


def has_sentence(path: Path) -> bool:
    """Whether the file holds a non-blank line (reads only up to the first one)."""
    with open(path, "rb") as handle:
        return any(line.strip() for line in handle)


def read_lines(path: Path, datamodule: VAEDataModule, report: LoadReport) -> list[str]:
    """All sentences of a (small) file, e.g. ``--input``; an empty file is an error naming it."""
    lines = list(iter_lines(path, datamodule, report))
    if not lines:
        datamodule.skip_or_raise(f"{path}: the file is empty (no non-blank lines); put one sentence per line in it")
    return lines


def chunks(lines: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    chunk: list[str] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def find_split_file(folder: Path, split: str) -> Path | None:
    """``train.txt``, ``ptb.train.txt``, ``valid.txt``... in ``folder``; an ambiguous match is an error."""
    found: list[Path] = []
    for name in split_aliases(split):
        exact = folder / f"{name}.txt"
        found += ([exact] if exact.is_file() else []) + sorted(folder.glob(f"*.{name}.txt"))
    if len(found) > 1:
        raise ValueError(f"{folder}: several {split} files ({', '.join(p.name for p in found)}); keep one")
    return found[0] if found else None


class BucketBatchSampler(BatchSampler):
    """Batches of sentences of similar length, so padding does not dominate.

    The sampler's order is cut into pools of ``pool_batches`` batches, each pool sorted by length and cut
    into batches; ``shuffle`` then shuffles the batch order. ``pool_batches=0`` sorts everything (evaluation).
    Lightning re-creates it around a ``DistributedSampler`` under DDP (it takes ``sampler`` first).
    """

    def __init__(
        self,
        sampler: Sampler[int],
        batch_size: int,
        drop_last: bool = False,
        lengths: Tensor | None = None,
        pool_batches: int = 50,
        shuffle: bool = True,
    ) -> None:
        super().__init__(sampler, batch_size, drop_last)
        if lengths is None:
            raise ValueError("BucketBatchSampler needs the sentence lengths")
        self.lengths = lengths.tolist()
        self.pool_batches = pool_batches
        self.shuffle = shuffle

    def _batches(self) -> list[list[int]]:
        indices = list(self.sampler)
        pool = self.pool_batches * self.batch_size or len(indices) or 1
        batches = []
        for start in range(0, len(indices), pool):
            chunk = sorted(indices[start : start + pool], key=self.lengths.__getitem__)
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches)).tolist()]
        return batches

    def __iter__(self):
        yield from self._batches()

    def __len__(self) -> int:
        count = len(self.sampler)
        pool = self.pool_batches * self.batch_size or count or 1
        full, rest = divmod(count, pool)
        per_pool = pool // self.batch_size if self.drop_last else math.ceil(pool / self.batch_size)
        last = rest // self.batch_size if self.drop_last else math.ceil(rest / self.batch_size)
        return full * per_pool + last


class TextDataModule(VAEDataModule):
    """Sentences (one per line) from local ``train/valid/test`` text files or a hub dataset id.

    ``root``: a folder with ``train.txt`` (or ``*.train.txt``) and optionally ``valid.txt``/``test.txt``
    (missing ones are split off the training data), or a hub id. ``tokenizer``: ``word`` (word-level,
    for pre-tokenised text such as PTB), ``bpe`` (byte-level BPE, for raw text), or a saved tokenizer
    folder / hub id. ``max_length`` caps tokens per sentence (BOS/EOS not counted); longer ones are
    truncated or dropped (``overlong``) and counted. Token ids are cached (the base data module's Arrow
    cache); BOS, EOS, the length cap and padding are applied per batch.
    Training batches are length-bucketed; evaluation batches are length-sorted; prediction
    (`encode`/`score`) keeps the file order.
    """

    TOKENIZER_LINES_STREAMED = 200_000
    DEVICE_COLLATE = True
    HOST_COLUMNS = ("length",)  # the padding width and the GRU's packing read lengths as numbers

    def __init__(
        self,
        root: str,
        tokenizer: str = "word",
        vocab_size: int = 30000,
        min_frequency: int = 1,
        max_length: int = 64,
        overlong: Literal["truncate", "drop"] = "truncate",
        text_column: str = "text",
        bucket_pool: int = 50,
        **common: Any,
    ) -> None:
        super().__init__(root, **common)
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.tokenizer: Any = None
        self.report = LoadReport()

    # ---------------------------------------------------------------- spec
    def adopt_spec(self, spec: TextSpec) -> None:
        super().adopt_spec(spec)
        self.tokenizer = tokenizer_from_spec(spec)

    def make_spec(self, train: Split) -> TextSpec:
        tok = self.tokenizer
        source = (
            self.hparams.tokenizer
            if self.hparams.tokenizer not in ("word", "bpe")
            else f"trained:{self.hparams.tokenizer}"
        )
        return TextSpec(
            vocab_size=max(tok.get_vocab().values()) + 1,  # ids may have gaps (a special token also in the corpus)
            vocab_digest=vocab_digest(tok),
            max_length=self.hparams.max_length,
            pad_token=tok.pad_token,
            bos_token=tok.bos_token,
            eos_token=tok.eos_token,
            unk_token=tok.unk_token,
            tokenizer_source=source,
            tokenizer_json=tok.backend_tokenizer.to_str(),
        )

    # ---------------------------------------------------------------- loading
    def load_splits(self) -> dict[str, Rows]:
        hub = self._hub_splits() if self.source.local is None else {}
        if self.source.local is not None:
            sentences = self._local_sentences(self.source.local)
        else:
            sentences = {
                name: (functools.partial(self._hub_lines, rows, column), getattr(rows, "_fingerprint", None))
                for name, (rows, column) in hub.items()
            }
        if "train" not in sentences and self.spec is None:
            raise ValueError(
                f"{self.source}: no training sentences (a train.txt or *.train.txt file, or a train split)"
            )
        hp = self.hparams
        if self.tokenizer is None and hp.tokenizer in ("word", "bpe"):
            train_lines = sentences["train"][0](LoadReport())  # counted when the split is decoded, not here
            if hp.streaming:  # a stream may be endless: the vocabulary comes from its start
                train_lines = itertools.islice(train_lines, self.TOKENIZER_LINES_STREAMED)
            self.tokenizer = train_tokenizer(hp.tokenizer, train_lines, hp.vocab_size, hp.min_frequency)
        elif self.tokenizer is None:
            self.tokenizer = load_tokenizer(hp.tokenizer)
        if hp.streaming:
            return {
                name: Rows(rows, functools.partial(self._encode_row, column=column), "")
                for name, (rows, column) in hub.items()
            }
        digest = vocab_digest(self.tokenizer)
        return {
            name: Rows(chunks(lines(self.report)), self._encode, fingerprint(origin, digest))
            for name, (lines, origin) in sentences.items()
        }

    def _encode(self, lines: list[str]) -> list[dict[str, Any]]:
        """Token ids of a chunk of sentences, without BOS/EOS (those, and the length cap, come per batch)."""
        ids = self.tokenizer(lines, add_special_tokens=False)["input_ids"]
        return [{"ids": np.asarray(row, dtype=np.int32), "length": len(row), "label": -1} for row in ids]

    def _local_sentences(self, folder: Path) -> dict[str, tuple[Callable[[LoadReport], Iterator[str]], Any]]:
        """Per split: a function that reads its sentences afresh (counting into a report), and the file's stats."""
        if folder.is_file():
            raise ValueError(f"{folder}: --data.root must be a folder holding train.txt (and valid.txt, test.txt)")
        sentences = {}
        for split in SPLITS:
            path = find_split_file(folder, split)
            if path is None:
                continue
            if not has_sentence(path):
                self.skip_or_raise(f"{path}: the file is empty (no non-blank lines); put one sentence per line in it")
                continue
            sentences[split] = (functools.partial(iter_lines, path, self), file_stats([path]))
        return sentences

    def _hub_splits(self) -> dict[str, tuple[Any, str]]:
        """Each split of the hub dataset (downloaded or streamed), with its text column."""
        dataset = self.hub_dataset()
        splits = {}
        for split in SPLITS:
            name = next((n for n in split_aliases(split) if n in dataset), None)
            if name is not None:
                splits[split] = (dataset[name], self._text_column(dataset[name].features))
        return splits

    def _encode_row(self, row: dict[str, Any], column: str) -> list[dict[str, Any]]:
        """One streamed row's sentence (none if blank)."""
        return [example for line in self._hub_lines([row], column, self.report) for example in self._encode([line])]

    @staticmethod
    def _hub_lines(rows: Iterable[dict[str, Any]], column: str, report: LoadReport) -> Iterator[str]:
        for row in rows:
            text = str(row[column]).strip()
            if text:
                yield text
            else:
                report.blank += 1

    def store(self, name: str, value: Rows | dict[str, Tensor]) -> Split:
        """The cached token ids, less the sentences over ``max_length`` when ``overlong`` drops them (counted)."""
        split = super().store(name, value)
        if isinstance(split, StreamSplit):  # a stream is cut per batch; dropping needs the cached lengths
            return split
        over = split["length"] > self.hparams.max_length
        if self.hparams.overlong == "drop":
            self.report.dropped += int(over.sum())
            split = split.select((~over).nonzero().squeeze(1))
            if len(split) == 0:
                raise ValueError(
                    f"{self.source}: every {name} sentence is longer than max_length={self.hparams.max_length}; raise --data.max_length"
                )
        else:
            self.report.truncated += int(over.sum())
        return split

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            super().setup(stage)
            self._warn_report()

    def _text_column(self, features: Any) -> str:
        if self.hparams.text_column in features:
            return self.hparams.text_column
        strings = [name for name, f in features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
        if len(strings) != 1:
            raise ValueError(
                f"{self.source}: no {self.hparams.text_column!r} column and {len(strings)} text columns "
                f"({', '.join(strings)}); choose one with --data.text_column"
            )
        return strings[0]

    def collate(self, batch: Batch, split: str) -> Batch:
        """Token ids -> BOS + ids (cut at ``max_length``) + EOS, padded to this batch's longest sentence, on
        the batch's device; the lengths also as a host copy (``host_lengths``), which packing reads."""
        tok = self.tokenizer
        host_lengths = batch.get("host_length", batch["length"]).clamp(max=self.hparams.max_length)
        lengths = batch["length"].clamp(max=self.hparams.max_length)
        width = int(host_lengths.max()) if len(host_lengths) else 0
        ids = batch["ids"][:, :width].long()
        device = ids.device
        inside = torch.arange(width, device=device) < lengths[:, None]
        x = torch.full((len(lengths), width + 2), tok.pad_token_id, dtype=torch.long, device=device)
        x[:, 0] = tok.bos_token_id
        x[:, 1:-1] = ids.masked_fill(~inside, tok.pad_token_id)
        x[torch.arange(len(lengths), device=device), lengths + 1] = tok.eos_token_id
        mask = torch.arange(width + 2, device=device) < (lengths + 2)[:, None]
        kept = {k: v for k, v in batch.items() if k in ("label", ROW)}
        return {"x": x, "mask": mask, "lengths": lengths + 2, "host_lengths": host_lengths + 2, **kept}

    def _warn_report(self) -> None:
        r = self.report
        parts = [
            f"{r.blank} blank line(s) skipped" if r.blank else "",
            f"{r.bad_lines} non-UTF-8 line(s) skipped" if r.bad_lines else "",
            f"{r.truncated} sentence(s) truncated to {self.hparams.max_length} tokens" if r.truncated else "",
            f"{r.dropped} sentence(s) over {self.hparams.max_length} tokens dropped" if r.dropped else "",
        ]
        if any(parts):
            rank_zero_warn(f"{self.source}: " + "; ".join(p for p in parts if p))

    def load_inputs(self, items: list[str]) -> dict[str, Tensor]:
        """Each item is a file (one sentence per line) if such a file exists, else a sentence itself."""
        lines: list[str] = []
        for item in items:
            path = Path(item)
            if len(item) < 4096 and path.is_file():  # longer is no file name, only a (long) sentence
                lines += read_lines(path, self, self.report)
            elif not is_utf8(item):  # undecodable bytes of the command line arrive as lone surrogates
                raise ValueError(f"{shorten(item)} is not UTF-8 text; pass sentences in UTF-8, or a file of them")
            elif item.strip():
                lines.append(item.strip())
            else:
                raise ValueError("an empty sentence was given; pass a sentence or a file with one per line")
        if not lines:
            raise ValueError(f"no sentences in {', '.join(items)}")
        examples = self._encode(lines)
        ids = pad_sequence([torch.from_numpy(e["ids"]) for e in examples], batch_first=True)
        batch = {
            "ids": ids,
            "length": torch.tensor([e["length"] for e in examples]),
            "label": torch.full((len(lines),), -1),
        }
        return self.collate(batch, "inputs")

    # ---------------------------------------------------------------- batches
    def batch_sampler(self, split: str, shuffle: bool, sort_by_length: bool = False) -> Sampler[list[int]] | None:
        """Training batches bucketed by length, evaluation batches sorted by it; in file order otherwise."""
        if not (shuffle or sort_by_length):
            return None
        dataset = self.split(split)
        return BucketBatchSampler(
            RandomSampler(dataset) if shuffle else SequentialSampler(dataset),
            self.batch_size(shuffle),
            drop_last=False,
            lengths=dataset["length"].clamp(max=self.hparams.max_length),
            pool_batches=self.hparams.bucket_pool if shuffle else 0,
            shuffle=shuffle,
        )

    def val_dataloader(self) -> Any:
        return self.loader("val", sort_by_length=True)

    def test_dataloader(self) -> Any:
        return self.loader(self.eval_split, sort_by_length=True)
