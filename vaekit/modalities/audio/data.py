"""Recordings from a folder or a hub dataset: decoded, resampled, windowed; held-out speakers for validation and test."""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import librosa
import numpy as np
import torch
from torch import Tensor

from vaekit.core.data import VAEDataModule
from vaekit.core.module import Batch
from vaekit.core.storage import Rows, Split, canonical_split, file_stats, fingerprint, split_batches
from vaekit.modalities.audio.features import AudioSpec, LogMel
from vaekit.modalities.audio.files import read_audio

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au", ".caf"})
FSDD_PATTERN = r"^(?P<label>\d+)_(?P<speaker>[^_]+)_\d+$"

# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Clip:
    """One audio file before decoding: where its bytes are, and what its name or folder says about it."""

    source: str | bytes
    where: str
    split: str | None = None
    label: str | None = None
    speaker: str | None = None


@dataclass(frozen=True)
class HubColumns:
    """Which columns of a hub dataset hold the audio, the label (and its class names) and the speaker."""

    audio: str
    label: str | None
    names: list[str] | None
    speaker: str | None


def _raise(message: str) -> None:
    raise ValueError(message)


def _folder_label(root: Path, path: str, split: str) -> str | None:
    """The folder a file sits in, below the root and below a split folder (train/...), if any."""
    folders = Path(path).relative_to(root).parts[:-1]
    if folders and canonical_split(folders[0]) == canonical_split(str(split)):  # the split's own folder
        folders = folders[1:]
    return folders[-1] if folders else None


def _natural_key(name: str) -> tuple[int, int | str]:
    return (0, int(name)) if name.isdigit() else (1, name)


class AudioDataModule(VAEDataModule):
    """Recordings from a folder (any layout, optional ``train``/``test`` subfolders) or a hub dataset id.

    Every file is decoded with soundfile, resampled to ``sample_rate`` and down-mixed to mono with
    librosa (``resample``/``downmix`` false turn a mismatch into an error instead), then cropped or
    zero-padded to ``duration`` seconds; ``long_files: windows`` cuts long files into consecutive
    windows instead. Labels come from ``name_pattern``'s ``label`` group, else from the folder names.
    When ``name_pattern`` also gives speakers, validation and test are held-out speakers
    (``val_speakers``/``test_speakers``, else one each chosen with ``seed``); otherwise files are
    split at random with ``val_fraction``/``test_fraction``.
    """

    DEVICE_COLLATE = True  # waveforms as they are; the features are computed on the device

    def __init__(
        self,
        root: str,
        sample_rate: int = 8000,
        duration: float = 0.768,
        n_fft: int = 256,
        hop_length: int = 64,
        n_mels: int = 64,
        f_min: float = 0.0,
        f_max: float | None = None,
        log_floor: float = 1e-5,
        long_files: Literal["crop", "windows"] = "crop",
        resample: bool = True,
        downmix: bool = True,
        name_pattern: str | None = None,
        val_speakers: list[str] | None = None,
        test_speakers: list[str] | None = None,
        **common: Any,
    ) -> None:
        super().__init__(root, **common)
        self.pattern = re.compile(name_pattern) if name_pattern else None
        self.num_samples = round(duration * sample_rate)
        if self.num_samples < n_fft:
            raise ValueError(f"duration {duration}s is {self.num_samples} samples, shorter than n_fft={n_fft}")
        self._features: LogMel | None = None

    # ---------------------------------------------------------------- listing files
    def _list_clips(self) -> list[Clip]:
        if self.source.local is None:
            return self._hub_clips()
        from datasets.data_files import DataFilesDict, get_data_patterns

        root = self.source.local
        if root.is_file():
            raise ValueError(f"--data.root {root} is a file; pass the folder that holds the recordings")
        files = DataFilesDict.from_patterns(get_data_patterns(str(root)), base_path=str(root))
        single = len(files) == 1
        clips = [
            Clip(source=path, where=path, split=None if single else str(split), label=_folder_label(root, path, split))
            for split, paths in files.items()
            for path in sorted(paths)
            if Path(path).suffix.lower() in AUDIO_EXTENSIONS
        ]
        if not clips:
            raise FileNotFoundError(
                f"{root}: no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}) found; "
                "point --data.root at the folder holding your recordings"
            )
        if len({c.label for c in clips}) < 2:  # one folder says nothing about the class
            clips = [Clip(c.source, c.where, c.split) for c in clips]
        return [self._named(c) for c in clips]

    def _hub_columns(self) -> tuple[Any, HubColumns]:
        import datasets

        dataset = self.hub_dataset()
        features = next(iter(dataset.values())).features
        audio = next((name for name, f in features.items() if isinstance(f, datasets.Audio)), None)
        if audio is None:
            raise ValueError(f"{self.source}: no audio column in {features}")
        label = next((c for c in ("label", "labels") if c in features), None)
        names = getattr(features[label], "names", None) if label else None
        speaker = next((c for c in ("speaker_id", "speaker", "client_id") if c in features), None)
        return dataset.cast_column(audio, datasets.Audio(decode=False)), HubColumns(audio, label, names, speaker)

    def _hub_clip(self, row: dict[str, Any], split: str, columns: HubColumns, index: int | None = None) -> Clip:
        audio = row[columns.audio]
        label = row[columns.label] if columns.label else None
        clip = Clip(
            source=audio["bytes"] or audio["path"],
            where=f"{self.source} {split}{'' if index is None else f'[{index}]'} ({audio.get('path') or 'bytes'})",
            split=str(split),
            label=None if label is None else (columns.names[label] if columns.names else str(label)),
            speaker=str(row[columns.speaker]) if columns.speaker else None,
        )
        return self._named(clip, audio.get("path"))

    def _hub_clips(self) -> list[Clip]:
        dataset, columns = self._hub_columns()
        return [self._hub_clip(row, split, columns, i) for split, rows in dataset.items() for i, row in enumerate(rows)]

    def _hub_examples(self, row: dict[str, Any], split: str, columns: HubColumns) -> list[dict[str, Any]]:
        return self.clip_examples(self._hub_clip(row, split, columns))

    def _streamed_splits(self) -> dict[str, Rows]:
        """Each hub split as a stream (speakers cannot be held out of a stream: its own splits are used)."""
        dataset, columns = self._hub_columns()
        if self.spec is None:
            self.label_names = list(columns.names or [])
        splits = {}
        for split, rows in dataset.items():
            name = canonical_split(str(split)) or str(split)
            decode = functools.partial(self._hub_examples, split=split, columns=columns)
            splits[name] = Rows(rows, decode, fingerprint(self.source.hub_id, split))
        return splits

    def _named(self, clip: Clip, name: str | None = None) -> Clip:
        """Label and speaker from the file name (``name``, else the source path), when ``name_pattern`` matches it."""
        name = name or (None if isinstance(clip.source, bytes) else clip.source)
        if self.pattern is None or name is None:
            return clip
        match = self.pattern.match(Path(name).stem)
        if match is None:
            return clip
        groups = match.groupdict()
        return Clip(clip.source, clip.where, clip.split, groups.get("label", clip.label), groups.get("speaker"))

    # ---------------------------------------------------------------- decoding
    def decode(self, clip: Clip, strict: bool = False) -> np.ndarray | None:
        """One file as mono float32 at ``sample_rate``; None when it is bad and skipping is on (never if ``strict``)."""
        hp = self.hparams
        reject = _raise if strict else self.skip_or_raise
        try:
            data, rate = read_audio(clip.source, clip.where)
        except ValueError as err:
            reject(f"{err}; delete or replace the file")
            return None
        if data.shape[0] > 1:
            if not hp.downmix:
                reject(
                    f"{clip.where}: {data.shape[0]} channels but the recipe takes mono and forbids down-mixing; "
                    "set --data.downmix true or convert the file to mono"
                )
                return None
            data = librosa.to_mono(data)
        else:
            data = data[0]
        if rate != hp.sample_rate:
            if not hp.resample:
                reject(
                    f"{clip.where}: sampled at {rate} Hz but the recipe takes {hp.sample_rate} Hz and forbids "
                    "resampling; set --data.resample true or resample the file"
                )
                return None
            data = librosa.resample(data, orig_sr=rate, target_sr=hp.sample_rate)
        return data.astype(np.float32)

    def windows(self, data: np.ndarray) -> list[tuple[np.ndarray, int]]:
        """Fixed-length pieces with their real (unpadded) lengths: one cropped, or all consecutive windows."""
        size = self.num_samples
        starts = range(0, len(data), size) if self.hparams.long_files == "windows" else range(1)
        pieces = []
        for start in starts:
            piece = data[start : start + size]
            pieces.append((np.pad(piece, (0, size - len(piece))), len(piece)))
        return pieces

    def clip_examples(self, clip: Clip) -> list[dict[str, Any]]:
        """A file's training examples: its window(s), with real lengths and the label index."""
        data = self.decode(clip)
        if data is None:
            return []
        label = self.label_names.index(clip.label) if clip.label in self.label_names else -1
        return [{"x": piece, "length": length, "label": label} for piece, length in self.windows(data)]

    def rows(self, clips: list[Clip]) -> Rows:
        hp = self.hparams
        options = (hp.sample_rate, self.num_samples, hp.long_files, hp.resample, hp.downmix, self.label_names)
        files = [(c.where, len(c.source)) if isinstance(c.source, bytes) else file_stats([c.source])[0] for c in clips]
        return Rows(clips, self.clip_examples, fingerprint(files, options), count=len(clips))

    # ---------------------------------------------------------------- splits
    def _assign_splits(self, clips: list[Clip]) -> dict[str, list[Clip]]:
        hp = self.hparams
        named = {c.split for c in clips} - {None}
        given = {(canonical_split(s) or s): [c for c in clips if c.split == s] for s in named}
        pool = given.pop("train", [c for c in clips if c.split is None])
        if not pool and given and self.spec is not None:  # a checkpoint command reading, say, only test files
            return given
        held_out = [name for name in ("val", "test") if name not in given]
        speakers = sorted({c.speaker for c in pool if c.speaker is not None})
        if held_out and pool and all(c.speaker is not None for c in pool) and len(speakers) > len(held_out):
            chosen = self._held_out_speakers(speakers, held_out)
            for name in held_out:
                given[name] = [c for c in pool if c.speaker in chosen[name]]
            pool = [c for c in pool if not any(c.speaker in chosen[n] for n in held_out)]
        elif hp.val_speakers or hp.test_speakers:
            raise ValueError(
                f"{self.source}: --data.val_speakers/--data.test_speakers need a speaker for every training file, "
                "and more speakers than held-out splits; give --data.name_pattern a (?P<speaker>...) group"
            )
        else:
            fractions = {"test": hp.test_fraction, "val": hp.val_fraction}
            order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(hp.seed)).tolist()
            start = 0
            for name in held_out:
                count = max(1, round(len(pool) * fractions[name]))
                given[name] = [pool[i] for i in sorted(order[start : start + count])]
                start += count
            pool = [pool[i] for i in sorted(order[start:])]
        if not pool:
            raise ValueError(f"{self.source}: no recordings left for training after holding out validation and test")
        return {"train": pool, **given}

    def _held_out_speakers(self, speakers: list[str], held_out: list[str]) -> dict[str, set[str]]:
        hp = self.hparams
        asked = {"val": hp.val_speakers, "test": hp.test_speakers}
        for name, chosen in asked.items():
            unknown = sorted(set(chosen or ()) - set(speakers))
            if unknown:
                raise ValueError(
                    f"--data.{name}_speakers {unknown} not among the speakers found in {self.source}: {speakers}; "
                    f"name one of them with --data.{name}_speakers, or pass --data.{name}_speakers null to hold "
                    "out one chosen at random"
                )
        free = [s for s in speakers if not any(s in (a or ()) for a in asked.values())]
        free = [free[i] for i in torch.randperm(len(free), generator=torch.Generator().manual_seed(hp.seed))]
        chosen = {}
        for name in held_out:
            if not asked[name] and not free:
                raise ValueError(
                    f"no speaker left to hold out for {name} among {speakers}; name one with --data.{name}_speakers"
                )
            chosen[name] = set(asked[name]) if asked[name] else {free.pop(0)}
        if chosen.get("val", set()) & chosen.get("test", set()):
            raise ValueError("--data.val_speakers and --data.test_speakers share a speaker; hold out different ones")
        return chosen

    def load_splits(self) -> dict[str, Rows]:
        if self.hparams.streaming:
            return self._streamed_splits()
        clips = self._list_clips()
        labels = {c.label for c in clips if c.label is not None}
        self.label_names = self.spec.label_names if self.spec is not None else sorted(labels, key=_natural_key)
        return {name: self.rows(group) for name, group in self._assign_splits(clips).items()}

    def make_spec(self, train: Split) -> AudioSpec:
        """Sizes from the config; per-mel-bin mean and std of the training log-mel, for normalisation."""
        hp = self.hparams
        n_mels = hp.n_mels
        spec = AudioSpec(
            sample_rate=hp.sample_rate,
            num_samples=self.num_samples,
            n_fft=hp.n_fft,
            hop_length=hp.hop_length,
            n_mels=n_mels,
            f_min=float(hp.f_min),
            f_max=float(hp.f_max if hp.f_max is not None else hp.sample_rate / 2),
            log_floor=hp.log_floor,
            mel_mean=[0.0] * n_mels,
            mel_std=[1.0] * n_mels,
            label_names=self.label_names,
        )
        features = LogMel(spec)
        total = torch.zeros(n_mels, dtype=torch.float64)
        squares = torch.zeros(n_mels, dtype=torch.float64)
        count = 0
        with torch.no_grad():
            for batch in split_batches(train, 256):
                log_mel = features.log_mel(batch["x"]).double()
                total += log_mel.sum((0, 2))
                squares += log_mel.pow(2).sum((0, 2))
                count += log_mel.shape[0] * log_mel.shape[2]
        mean = total / count
        std = (squares / count - mean.pow(2)).clamp(min=1e-6).sqrt()
        return dataclasses.replace(spec, mel_mean=mean.tolist(), mel_std=std.tolist())

    def load_inputs(self, items: list[str]) -> dict[str, Tensor]:
        """User files (`reconstruct --input`, `interpolate --a/--b`): decoded as the training data; the first window."""
        for item in items:
            if not Path(item).is_file():
                raise FileNotFoundError(f"{item}: no such audio file")
        waves, lengths = [], []
        for item in items:
            decoded = self.decode(Clip(source=item, where=item), strict=True)
            piece, length = self.windows(decoded)[0]
            waves.append(piece)
            lengths.append(length)
        return {
            "x": torch.from_numpy(np.stack(waves)),
            "length": torch.tensor(lengths),
            "label": torch.full((len(items),), -1),
        }

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        """Add the model's features, ``mel``, computed on the batch's device."""
        if self._features is None:
            self._features = LogMel(self.spec)
        self._features = self._features.to(batch["x"].device)
        return {**batch, "mel": self._features(batch["x"])}
