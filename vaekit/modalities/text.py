"""Text modality: a GRU sentence VAE (Bowman et al. 2016) with the usual defences against posterior collapse.

Sentences are tokenised by a ``transformers`` fast tokenizer (trained on the corpus with ``tokenizers``,
or loaded), stored in the checkpoint, and batched by length. The decoder is conditioned on z twice
(initial state and every input step); word dropout, KL annealing, free bits and an autoencoder
pre-training phase (Li et al. 2019) keep the latent in use.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler, SequentialSampler

from vaekit.core.data import VAEDataModule
from vaekit.core.io import write_text
from vaekit.core.module import VAE, Batch, OnnxGraph
from vaekit.core.schema import shorten
from vaekit.core.storage import ROW, Rows, Split, StreamSplit, file_stats, fingerprint
from vaekit.modalities.registry import Modality

SPLIT_NAMES = {"train": ("train",), "val": ("valid", "val", "validation", "dev"), "test": ("test",)}
SPECIALS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}

# --------------------------------------------------------------------------- tokenizer


@dataclass(frozen=True)
class TextSpec:
    """What the text data tells the model; stored in every checkpoint, tokenizer included.

    Two specs are equal when their vocabularies are (``vocab_digest``), whatever folder they came from.
    """

    vocab_size: int
    vocab_digest: str
    max_length: int
    pad_token: str
    bos_token: str
    eos_token: str
    unk_token: str
    tokenizer_source: str = field(default="", compare=False)
    tokenizer_json: str = field(default="", repr=False, compare=False)


def is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def vocab_digest(tokenizer: Any) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def tokenizer_from_spec(spec: TextSpec) -> Any:
    """The ``PreTrainedTokenizerFast`` a checkpoint was trained with, rebuilt from its JSON."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    try:
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer.from_str(spec.tokenizer_json),
            pad_token=spec.pad_token,
            bos_token=spec.bos_token,
            eos_token=spec.eos_token,
            unk_token=spec.unk_token,
        )
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as err:  # a malformed file can make the Rust parser panic, which is a BaseException
        raise ValueError(
            f"the saved tokenizer (tokenizer.json) does not load ({type(err).__name__}: {shorten(str(err))}); "
            "re-export the model"
        ) from None
    size = max(tokenizer.get_vocab().values(), default=-1) + 1
    if size != spec.vocab_size or vocab_digest(tokenizer) != spec.vocab_digest:
        raise ValueError(
            f"the saved tokenizer (tokenizer.json) has a vocabulary of {size} ids that is not the model's "
            f"({spec.vocab_size} ids, digest {spec.vocab_digest}); the file was altered or belongs to another model"
        )
    return tokenizer


def train_tokenizer(kind: Literal["word", "bpe"], texts: Iterable[str], vocab_size: int, min_frequency: int) -> Any:
    """A tokenizer trained on the training sentences: word-level for pre-tokenised text, byte-level BPE for raw."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIALS.values())
    if kind == "word":
        backend = Tokenizer(models.WordLevel(unk_token=SPECIALS["unk_token"]))
        backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials)
    else:
        backend = Tokenizer(models.BPE(unk_token=SPECIALS["unk_token"]))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **SPECIALS)


def load_tokenizer(name: str) -> Any:
    """A saved tokenizer (a local folder or hub id), given any of pad/BOS/EOS/unknown tokens it lacks."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"tokenizer {name!r} could not be loaded ({err}); pass a folder written by save_pretrained "
            "(with tokenizer.json), a hub id, or 'word'/'bpe' to train one on the corpus"
        ) from err
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise ValueError(f"tokenizer {name!r} is not a fast (tokenizers-backed) tokenizer; vaekit needs tokenizer.json")
    missing = {key: token for key, token in SPECIALS.items() if getattr(tokenizer, key) is None}
    if missing:
        tokenizer.add_special_tokens(missing)
    return tokenizer


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
    for name in SPLIT_NAMES[split]:
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
        for split in SPLIT_NAMES:
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
        for split, names in SPLIT_NAMES.items():
            name = next((n for n in names if n in dataset), None)
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
        """Token ids -> BOS + ids (cut at ``max_length``) + EOS, padded to this batch's longest sentence."""
        tok = self.tokenizer
        lengths = batch["length"].clamp(max=self.hparams.max_length)
        width = int(lengths.max()) if len(lengths) else 0
        ids = batch["ids"][:, :width].long()
        inside = torch.arange(width) < lengths[:, None]
        x = torch.full((len(lengths), width + 2), tok.pad_token_id, dtype=torch.long)
        x[:, 0] = tok.bos_token_id
        x[:, 1:-1] = ids.masked_fill(~inside, tok.pad_token_id)
        x[torch.arange(len(lengths)), lengths + 1] = tok.eos_token_id
        mask = torch.arange(width + 2) < (lengths + 2)[:, None]
        return {"x": x, "mask": mask, "lengths": lengths + 2, **{k: v for k, v in batch.items() if k in ("label", ROW)}}

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
    def loader(self, split: str, shuffle: bool = False, sort_by_length: bool = False) -> DataLoader:
        if not (shuffle or sort_by_length) or isinstance(self.split(split), StreamSplit):
            return super().loader(split)
        hp = self.hparams
        dataset = self.split(split)
        batch_size = hp.batch_size if shuffle else (hp.eval_batch_size or hp.batch_size)
        sampler = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
        batches = BucketBatchSampler(
            sampler,
            batch_size,
            drop_last=False,
            lengths=dataset["length"].clamp(max=hp.max_length),
            pool_batches=hp.bucket_pool if shuffle else 0,
            shuffle=shuffle,
        )
        collate = functools.partial(self.collate, split=split)
        return DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=hp.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val", sort_by_length=True)

    def test_dataloader(self) -> DataLoader:
        return self.loader(self.eval_split, sort_by_length=True)


# --------------------------------------------------------------------------- networks


class GRUEncoder(nn.Module):
    """Embeds the sentence, reads it with a (bi)GRU over packed sequences; last hidden state(s) -> (mean, logvar)."""

    def __init__(
        self, vocab: int, embed: int, hidden: int, layers: int, bidirectional: bool, latent: int, pad_id: int
    ) -> None:
        super().__init__()
        self.directions = 2 if bidirectional else 1
        self.embed = nn.Embedding(vocab, embed, padding_idx=pad_id)
        self.rnn = nn.GRU(embed, hidden, layers, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(hidden * self.directions, 2 * latent)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        packed = pack_padded_sequence(self.embed(x), lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, last = self.rnn(packed)  # (layers * directions, B, H), in batch order
        top = last[-self.directions :].transpose(0, 1).reshape(x.shape[0], -1)
        mean, logvar = self.head(top).chunk(2, dim=-1)
        return mean, logvar


class GRUDecoder(nn.Module):
    """GRU language model conditioned on z: z sets the initial state and is concatenated to every input.

    The output layer turns the GRU's features into next-token log-probabilities: a full softmax (its weights
    optionally tied to the input embedding, Press & Wolf 2017) or an adaptive softmax (Grave et al. 2017),
    an exact distribution over the whole vocabulary that spends most of its compute on the frequent words.
    ``forward`` returns features, not logits, so training scores only the tokens that are there.
    """

    def __init__(
        self,
        vocab: int,
        embed: int,
        hidden: int,
        layers: int,
        latent: int,
        pad_id: int,
        dropout: float,
        softmax: Literal["full", "adaptive"] = "full",
        cutoffs: tuple[int, ...] = (),
        tie_embeddings: bool = False,
    ) -> None:
        super().__init__()
        self.layers, self.hidden = layers, hidden
        self.embed = nn.Embedding(vocab, embed, padding_idx=pad_id)
        self.init_state = nn.Linear(latent, layers * hidden)
        self.rnn = nn.GRU(embed + latent, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.out: nn.Linear | nn.AdaptiveLogSoftmaxWithLoss
        if softmax == "adaptive":
            cutoffs = tuple(c for c in cutoffs if c < vocab)  # a small vocabulary may need fewer clusters
            self.out = nn.AdaptiveLogSoftmaxWithLoss(hidden, vocab, list(cutoffs) or [vocab // 2], div_value=4.0)
        else:
            self.out = nn.Linear(hidden, vocab)
            if tie_embeddings:
                self.out.weight = self.embed.weight

    def initial_state(self, z: Tensor) -> Tensor:
        return torch.tanh(self.init_state(z)).view(-1, self.layers, self.hidden).transpose(0, 1).contiguous()

    def forward(self, inputs: Tensor, lengths: Tensor, z: Tensor, packed: bool = True) -> Tensor:
        """Features (B, T, H) for the next token at each input position; positions past ``lengths`` are padding."""
        steps = inputs.shape[1]
        feed = torch.cat([self.dropout(self.embed(inputs)), z.unsqueeze(1).expand(-1, steps, -1)], dim=-1)
        if packed:
            seq = pack_padded_sequence(feed, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, _ = self.rnn(seq, self.initial_state(z))
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=steps)
        else:
            out, _ = self.rnn(feed, self.initial_state(z))
        return self.dropout(out)

    def log_probs(self, features: Tensor) -> Tensor:
        """Next-token log-probabilities (..., V) over the whole vocabulary."""
        if isinstance(self.out, nn.AdaptiveLogSoftmaxWithLoss):
            return self.out.log_prob(features.reshape(-1, features.shape[-1])).view(*features.shape[:-1], -1)
        return self.out(features).log_softmax(-1)

    def token_log_probs(self, features: Tensor, targets: Tensor) -> Tensor:
        """log p(target) for rows of features (N, H) and their targets (N,), without all V log-probabilities
        where the adaptive softmax can avoid them."""
        if isinstance(self.out, nn.AdaptiveLogSoftmaxWithLoss):
            return self.out(features, targets).output
        return -F.cross_entropy(self.out(features), targets, reduction="none")

    def step(self, tokens: Tensor, state: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """One decoding step: next-token log-probabilities (B, V) and the new state."""
        feed = torch.cat([self.embed(tokens), z], dim=-1).unsqueeze(1)
        out, state = self.rnn(feed, state)
        return self.log_probs(out[:, 0]), state


class _DecoderPart(nn.Module):
    """A method of the decoder as a module of its own, for ONNX export."""

    def __init__(self, decoder: GRUDecoder) -> None:
        super().__init__()
        self.decoder = decoder


class _InitialState(_DecoderPart):
    def forward(self, z: Tensor) -> Tensor:
        return self.decoder.initial_state(z)


class _DecoderStep(_DecoderPart):
    def forward(self, tokens: Tensor, state: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        return self.decoder.step(tokens, state, z)


# --------------------------------------------------------------------------- decoding


@dataclass
class TextGenerationOptions:
    """Decoding flags of `vaekit sample/reconstruct/interpolate/traverse` for text (``vaekit sample MODEL --help``)."""

    strategy: str = field(
        default="",
        metadata={"help": "sample, greedy or beam; default: greedy for reconstruct and interpolate, else sample"},
    )
    token_temperature: float = field(default=1.0, metadata={"help": "softmax temperature when sampling"})
    top_k: int = field(default=0, metadata={"help": "sample among the k likeliest tokens only (0: all)"})
    top_p: float = field(default=1.0, metadata={"help": "sample within the nucleus of this probability mass"})
    beam_width: int = field(default=4, metadata={"help": "beams for --strategy beam"})
    max_length: int = field(default=0, metadata={"help": "token cap per sentence, EOS included (0: training cap + 1)"})

    def __post_init__(self) -> None:
        if self.strategy not in ("", "sample", "greedy", "beam"):
            raise ValueError(f"--strategy must be sample, greedy or beam, not {self.strategy!r}")
        if self.token_temperature <= 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.beam_width < 1:
            raise ValueError("need --token-temperature > 0, 0 < --top-p <= 1, --top-k >= 0 and --beam-width >= 1")


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Logits with everything outside the top-k and outside the top-p nucleus set to -inf."""
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        outside = cumulative - sorted_logits.softmax(-1) >= top_p  # the mass before this token already reaches p
        logits = logits.masked_fill(outside.scatter(-1, order, outside), -math.inf)
    return logits


class TextVAE(VAE):
    """GRU sentence VAE.

    ``word_dropout``: probability of replacing a decoder input token by the unknown token while training
    (Bowman et al.), so the decoder must lean on z. ``pretrain_ae_steps``: the first N steps train an
    autoencoder (KL weight 0); at step N the decoder is re-initialised and the ``beta`` schedule starts
    from its step 0 (Li et al. 2019). ``packed``: run the decoder on packed sequences (skips padding; on
    GPUs with length-bucketed batches ``false`` can be faster, with identical results). ``softmax``:
    ``full``, or ``adaptive`` with clusters at ``adaptive_cutoffs`` (token ids ordered by frequency, as the
    word and BPE tokenizers trained here are); exact either way, the adaptive one several times cheaper for
    large vocabularies. ``tie_embeddings`` shares the full softmax's weights with the decoder's input
    embedding (needs ``embed_dim == hidden_dim``).
    """

    modality = "text"
    spec_type = TextSpec
    generation_options = TextGenerationOptions
    spec_assets: ClassVar[dict[str, tuple[str, ...]]] = {"tokenizer.json": ("tokenizer_json",)}

    def __init__(
        self,
        latent_dim: int = 32,
        embed_dim: int = 256,
        hidden_dim: int = 512,
        encoder_layers: int = 1,
        decoder_layers: int = 1,
        bidirectional: bool = True,
        dropout: float = 0.0,
        word_dropout: float = 0.0,
        pretrain_ae_steps: int = 0,
        packed: bool = False,
        softmax: Literal["full", "adaptive"] = "full",
        adaptive_cutoffs: tuple[int, ...] = (2000,),
        tie_embeddings: bool = False,
        **core: Any,
    ) -> None:
        super().__init__(latent_dim=latent_dim, **core)
        if not 0 <= word_dropout < 1:
            raise ValueError(f"word_dropout must be in [0, 1), got {word_dropout}")
        if tie_embeddings and (softmax != "full" or embed_dim != hidden_dim):
            raise ValueError(
                "tie_embeddings shares the full softmax's weights with the input embedding: it needs "
                f"--model.softmax full and embed_dim == hidden_dim (got {softmax}, {embed_dim} and {hidden_dim})"
            )
        if list(adaptive_cutoffs) != sorted(set(adaptive_cutoffs)) or min(adaptive_cutoffs, default=1) < 1:
            raise ValueError(f"adaptive_cutoffs must be increasing positive token ids, got {list(adaptive_cutoffs)}")
        if pretrain_ae_steps > 0:  # the KL schedule starts when the autoencoder phase ends
            self.beta = replace(self.beta, start_step=self.beta.start_step + pretrain_ae_steps)
        self._decoder_reset_step = -1

    def build(self, spec: TextSpec) -> None:
        hp = self.hparams
        self.tokenizer = tokenizer_from_spec(spec)
        self.pad_id, self.bos_id = self.tokenizer.pad_token_id, self.tokenizer.bos_token_id
        self.eos_id, self.unk_id = self.tokenizer.eos_token_id, self.tokenizer.unk_token_id
        vocab = spec.vocab_size
        self.encoder = GRUEncoder(
            vocab, hp.embed_dim, hp.hidden_dim, hp.encoder_layers, hp.bidirectional, hp.latent_dim, self.pad_id
        )
        self.decoder = GRUDecoder(
            vocab,
            hp.embed_dim,
            hp.hidden_dim,
            hp.decoder_layers,
            hp.latent_dim,
            self.pad_id,
            hp.dropout,
            softmax=hp.softmax,
            cutoffs=tuple(hp.adaptive_cutoffs),
            tie_embeddings=hp.tie_embeddings,
        )

    # ---------------------------------------------------------------- hooks
    def encode_params(self, batch: Batch) -> tuple[Tensor, Tensor]:
        return self.encoder(batch["x"], batch["lengths"])

    def decoder_inputs(self, batch: Batch) -> Tensor:
        """Teacher forcing: BOS..last word (EOS dropped); word dropout replaces non-BOS tokens while training."""
        inputs = batch["x"][:, :-1]
        rate = self.hparams.word_dropout
        if self.training and rate > 0:
            drop = torch.rand(inputs.shape, device=inputs.device) < rate
            drop[:, 0] = False
            inputs = inputs.masked_fill(drop & batch["mask"][:, :-1].bool(), self.unk_id)
        return inputs

    def decode_params(self, z: Tensor, batch: Batch) -> Tensor:
        return self.decoder(self.decoder_inputs(batch), batch["lengths"] - 1, z, packed=self.hparams.packed)

    def log_likelihood(self, params: Tensor, batch: Batch) -> Tensor:
        """Sum of log p(token) over each sentence's tokens after BOS (EOS included). ``params`` are the
        decoder's features; only the real tokens' positions are scored, so padding costs neither time nor nats.
        """
        real = batch["mask"][:, 1:].bool()
        per_token = params.new_zeros(real.shape)
        per_token[real] = self.decoder.token_log_probs(params[real], batch["x"][:, 1:][real]).to(params.dtype)
        return per_token.sum(1)

    def num_units(self, batch: Batch) -> Tensor:
        return batch["lengths"] - 1

    def summary_metrics(self, nll_sum: float, units_sum: float) -> dict[str, float]:
        return {"ppl": math.exp(nll_sum / units_sum)}

    def compressed_sizes(self, batch: Batch) -> list[int]:
        """zlib size of each sentence's text (padding and special tokens left out)."""
        return [len(zlib.compress(text.encode("utf-8"), 9)) for text in self.as_outputs(batch)]

    def onnx_graphs(self) -> dict[str, OnnxGraph]:
        """The decoder's two parts a decoding loop needs: z -> initial state, and one step (any search runs outside)."""
        z = torch.zeros(2, self.hparams.latent_dim, device=self.device)
        state = self.decoder.initial_state(z)
        tokens = torch.full((2,), self.bos_id, dtype=torch.long, device=self.device)
        return {
            "decoder_init": OnnxGraph(_InitialState(self.decoder), (z,), ("z",), ("state",)),
            "decoder_step": OnnxGraph(
                _DecoderStep(self.decoder),
                (tokens, state, z),
                ("tokens", "state", "z"),
                ("logits", "next_state"),
                (0, 1, 0),
            ),
        }

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        """End of the autoencoder phase: a fresh decoder (and fresh Adam moments for it) learns with the KL on."""
        step = self.hparams.pretrain_ae_steps
        if step > 0 and self.global_step == step and self._decoder_reset_step != step:
            self._decoder_reset_step = step
            for module in self.decoder.modules():
                if module is not self.decoder and hasattr(module, "reset_parameters"):
                    module.reset_parameters()
            optimizer = self.optimizers().optimizer
            for param in self.decoder.parameters():
                optimizer.state.pop(param, None)

    # ---------------------------------------------------------------- decoding
    def generate(self, z: Tensor, deterministic: bool = False, **options: Any) -> list[str]:
        opts = TextGenerationOptions(**options)
        opts = replace(opts, strategy=opts.strategy or ("greedy" if deterministic else "sample"))
        max_length = opts.max_length or self.spec.max_length + 1
        if opts.strategy == "beam":
            tokens = self.beam_search(z, opts.beam_width, max_length)
        else:
            tokens = self.decode_tokens(z, max_length, opts)
        return self.to_text(tokens)

    def decode_tokens(self, z: Tensor, max_length: int, opts: TextGenerationOptions) -> Tensor:
        """Greedy or ancestral decoding of a batch; (B, <= max_length) ids, padding after each EOS."""
        batch = z.shape[0]
        state = self.decoder.initial_state(z)
        tokens = torch.full((batch,), self.bos_id, dtype=torch.long, device=z.device)
        done = torch.zeros(batch, dtype=torch.bool, device=z.device)
        out = []
        for _ in range(max_length):
            log_probs, state = self.decoder.step(tokens, state, z)
            if opts.strategy == "greedy":
                tokens = log_probs.argmax(-1)
            else:
                logits = filter_logits(log_probs / opts.token_temperature, opts.top_k, opts.top_p)
                tokens = torch.multinomial(logits.softmax(-1), 1).squeeze(-1)
            tokens = tokens.masked_fill(done, self.pad_id)
            out.append(tokens)
            done = done | (tokens == self.eos_id)
            if bool(done.all()):
                break
        return torch.stack(out, dim=1)

    def beam_search(self, z: Tensor, width: int, max_length: int) -> Tensor:
        """Batched beam search on the summed log-probability; width 1 is greedy decoding."""
        batch, vocab = z.shape[0], self.spec.vocab_size
        zb = z.repeat_interleave(width, dim=0)
        state = self.decoder.initial_state(zb)
        tokens = torch.full((batch * width,), self.bos_id, dtype=torch.long, device=z.device)
        scores = torch.full((batch, width), -math.inf, device=z.device)
        scores[:, 0] = 0.0  # all beams start identical: expand only the first
        done = torch.zeros(batch * width, dtype=torch.bool, device=z.device)
        history = torch.empty(batch * width, 0, dtype=torch.long, device=z.device)
        offsets = (torch.arange(batch, device=z.device) * width).unsqueeze(1)
        for _ in range(max_length):
            logp, state = self.decoder.step(tokens, state, zb)
            # A finished beam continues only with padding, at no cost, so its score stays fixed.
            finished = torch.full_like(logp, -math.inf)
            finished[:, self.pad_id] = 0.0
            logp = torch.where(done.unsqueeze(1), finished, logp)
            candidates = (scores.view(-1, 1) + logp).view(batch, width * vocab)
            scores, index = candidates.topk(width, dim=-1)
            rows = (offsets + index // vocab).view(-1)
            tokens = (index % vocab).view(-1)
            state = state[:, rows]
            history = torch.cat([history[rows], tokens.unsqueeze(1)], dim=1)
            done = done[rows] | (tokens == self.eos_id)
            if bool(done.all()):
                break
        best = scores.argmax(-1) + offsets.squeeze(1)
        return history[best]

    def to_text(self, tokens: Tensor) -> list[str]:
        """Ids -> sentences: cut at the first EOS, drop BOS/padding, keep <unk> visible."""
        texts = []
        for row in tokens.tolist():
            if self.eos_id in row:
                row = row[: row.index(self.eos_id)]
            row = [t for t in row if t not in (self.bos_id, self.pad_id)]
            texts.append(self.tokenizer.decode(row, skip_special_tokens=False).strip())
        return texts

    def as_outputs(self, batch: Batch) -> list[str]:
        return self.to_text(batch["x"][:, 1:])

    def log_media(self, writer: Any, tag: str, data: list[str], step: int) -> None:
        writer.add_text(tag, "\n\n".join(f"{i}. {text}" for i, text in enumerate(data)), step)

    def save_outputs(
        self, data: list[str], out_dir: Path, stem: str, nrow: int | None = None, **options: Any
    ) -> list[Path]:
        """``stem``.txt (one sentence per line) and ``stem``.jsonl ({"index", "text"}, plus "row"/"step" in grids)."""
        records = []
        for i, text in enumerate(data):
            record: dict[str, Any] = {"index": i, "text": text}
            if nrow:
                record.update(row=i // nrow, step=i % nrow)
            records.append(json.dumps(record, ensure_ascii=False))
        out_dir = Path(out_dir)
        return [
            write_text(out_dir / f"{stem}.txt", "".join(f"{t}\n" for t in data)),
            write_text(out_dir / f"{stem}.jsonl", "".join(f"{r}\n" for r in records)),
        ]


MODALITY = Modality(name="text", model=TextVAE, datamodule=TextDataModule)
