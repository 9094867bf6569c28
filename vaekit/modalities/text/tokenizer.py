"""Text specs and tokenizers: trained from the corpus with ``tokenizers``, or loaded from ``transformers``; stored in the checkpoint."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from vaekit.core.schema import shorten

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
