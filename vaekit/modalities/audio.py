"""Audio modality: a 2-D convolutional VAE over log-mel spectrograms, Griffin-Lim back to sound.

Waveforms stay waveforms in the data splits; the data module turns each batch into the model's
features (normalised log-mel, ``batch["mel"]``) on the device, once per batch, so the
importance-weighted estimator repeats features rather than recomputing them. Generation inverts
the mel scale and runs Griffin-Lim (``vaekit.modalities.spectral``), batched, and writes 16-bit WAVs
with a spectrogram PNG per clip.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import librosa
import numpy as np
import soundfile as sf
import torch
from PIL import Image
from torch import Tensor, nn

from vaekit.core.data import VAEDataModule
from vaekit.core.io import atomic_path
from vaekit.core.likelihoods import Gaussian, Laplace
from vaekit.core.module import VAE, Batch, ELBOTerms
from vaekit.core.networks import ConvDecoder, ConvEncoder
from vaekit.core.storage import Rows, Split, file_stats, fingerprint, split_batches
from vaekit.modalities.registry import Modality
from vaekit.modalities.spectral import GriffinLim, InverseMelScale, MelSpectrogram, Spectrogram

# Formats libsndfile reads (MP3 and Opus with libsndfile >= 1.1); others are not audio to us.
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au", ".caf"})
FSDD_PATTERN = r"^(?P<label>\d+)_(?P<speaker>[^_]+)_\d+$"

# --------------------------------------------------------------------------- features


@dataclass(frozen=True)
class AudioSpec:
    """What the audio data tells the model; stored in every checkpoint.

    ``mel_mean``/``mel_std`` are per-mel-bin statistics of the training set's log-mel, so a
    checkpoint normalises new audio exactly as in training.
    """

    sample_rate: int
    num_samples: int
    n_fft: int
    hop_length: int
    n_mels: int
    f_min: float
    f_max: float
    log_floor: float
    mel_mean: list[float]
    mel_std: list[float]
    label_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Bounds that keep a saved spec from sizing filters or windows absurdly before any weight is compared."""
        if not (0 < self.sample_rate <= 384_000 and 2 <= self.n_fft <= 65_536 and 0 < self.hop_length <= self.n_fft):
            raise ValueError(
                f"audio spec out of range: sample_rate {self.sample_rate}, n_fft {self.n_fft}, hop {self.hop_length}"
            )
        if not (self.n_fft <= self.num_samples <= 3600 * self.sample_rate and 0 < self.n_mels <= self.n_fft // 2 + 1):
            raise ValueError(
                f"audio spec out of range: {self.num_samples} samples, {self.n_mels} mel bins for n_fft {self.n_fft}"
            )
        if len(self.mel_mean) != self.n_mels or len(self.mel_std) != self.n_mels or min(self.mel_std) <= 0:
            raise ValueError(
                f"the normalisation statistics (normalisation.json) give {len(self.mel_mean)} means and "
                f"{len(self.mel_std)} positive standard deviations for {self.n_mels} mel bins; re-export the model"
            )

    @property
    def num_frames(self) -> int:
        return self.num_samples // self.hop_length + 1  # centred STFT frames

    @property
    def n_stft(self) -> int:
        return self.n_fft // 2 + 1


class LogMel(nn.Module):
    """Waveform (B, samples) -> normalised log-mel magnitude (B, n_mels, frames), and back to a linear mel.

    The single definition of the features: the data module uses it for batches, the model for the
    Griffin-Lim ceiling and spectrogram pictures.
    """

    def __init__(self, spec: AudioSpec) -> None:
        super().__init__()
        self.floor = spec.log_floor
        self.mel = MelSpectrogram(spec.sample_rate, spec.n_fft, spec.hop_length, spec.n_mels, spec.f_min, spec.f_max)
        self.register_buffer("mean", torch.tensor(spec.mel_mean).view(-1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.mel_std).view(-1, 1), persistent=False)

    def log_mel(self, waveform: Tensor) -> Tensor:
        return self.mel(waveform).clamp(min=self.floor).log()

    def forward(self, waveform: Tensor) -> Tensor:
        return (self.log_mel(waveform) - self.mean) / self.std

    def to_mel(self, normalised: Tensor) -> Tensor:
        """Normalised log-mel -> linear mel magnitude."""
        return (normalised * self.std + self.mean).exp()


def log_spectral_distance(reference: Tensor, estimate: Tensor, frames: Tensor, floor: float) -> Tensor:
    """Per-example LSD in dB between magnitude spectrograms (B, F, T), over the frames marked in ``frames`` (B, T).

    sqrt of the mean over frequency of the squared dB difference, averaged over the marked frames;
    magnitudes below ``floor`` count as the floor, so two silences agree.
    """
    diff = 20 * (reference.clamp(min=floor).log10() - estimate.clamp(min=floor).log10())
    per_frame = diff.pow(2).mean(1).sqrt()
    return (per_frame * frames).sum(1) / frames.sum(1).clamp(min=1)


def spectral_convergence(reference: Tensor, estimate: Tensor, frames: Tensor) -> Tensor:
    """Per-example ||S - S_hat||_F / ||S||_F over the marked frames (Arik et al. 2019)."""
    mask = frames.unsqueeze(1)
    error = ((reference - estimate) * mask).flatten(1).norm(dim=1)
    return error / (reference * mask).flatten(1).norm(dim=1).clamp(min=1e-12)


# --------------------------------------------------------------------------- reading and writing audio


def _truncated_riff(head: bytes, size: int) -> bool:
    """A RIFF/WAVE header that promises more bytes than the file holds (libsndfile reads such files silently)."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return False
    declared = int.from_bytes(head[4:8], "little")
    return declared not in (0, 0xFFFFFFFF) and declared + 8 > size


def read_audio(source: str | Path | bytes, where: str) -> tuple[np.ndarray, int]:
    """Decode a file (or its bytes) with soundfile: float32 (channels, samples) and the file's rate.

    Raises ValueError naming ``where`` for anything that is not complete, non-empty audio.
    """
    if isinstance(source, bytes):
        head, size, handle = source[:12], len(source), io.BytesIO(source)
    else:
        with open(source, "rb") as f:
            head = f.read(12)
        size, handle = os.path.getsize(source), source
    if size == 0:
        raise ValueError(f"{where}: the file is empty (0 bytes)")
    if _truncated_riff(head, size):
        raise ValueError(f"{where}: the WAV file is truncated (its header promises more data than the file holds)")
    try:
        data, rate = sf.read(handle, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise ValueError(f"{where}: not a readable audio file ({err})") from err
    if data.shape[0] == 0:
        raise ValueError(f"{where}: the audio holds no samples")
    if not np.isfinite(data).all():
        raise ValueError(f"{where}: the audio holds NaN or infinite samples")
    return np.ascontiguousarray(data.T), int(rate)


def write_wav(path: str | Path, waveform: Tensor, sample_rate: int) -> Path:
    """16-bit PCM WAV, written atomically; a clip louder than full scale is scaled down, not clipped."""
    samples = waveform.detach().float().cpu().numpy()
    peak = float(np.abs(samples).max(initial=0.0))
    if peak > 1.0:
        samples = samples / peak
    with atomic_path(path) as tmp:
        sf.write(tmp, samples, sample_rate, subtype="PCM_16", format="WAV")
    return Path(path)


def spectrogram_image(log_mel: Tensor, top: float, range_db: float = 80.0, zoom: int = 3) -> Image.Image:
    """A (n_mels, frames) natural-log magnitude mel as an RGB picture: time left to right, low bins at the bottom."""
    import matplotlib

    db = 20 * log_mel.detach().float().cpu() / math.log(10)
    level = ((db - (top - range_db)) / range_db).clamp(0, 1).flip(0).numpy()
    rgb = (matplotlib.colormaps["magma"](level)[..., :3] * 255).astype(np.uint8)
    return Image.fromarray(rgb).resize((rgb.shape[1] * zoom, rgb.shape[0] * zoom), Image.Resampling.NEAREST)


def _save_image(image: Image.Image, path: Path) -> Path:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def _grid(images: list[Image.Image], nrow: int, pad: int = 4) -> Image.Image:
    width, height = images[0].size
    rows = math.ceil(len(images) / nrow)
    grid = Image.new("RGB", (nrow * (width + pad) + pad, rows * (height + pad) + pad), "white")
    for i, image in enumerate(images):
        r, c = divmod(i, nrow)
        grid.paste(image, (pad + c * (width + pad), pad + r * (height + pad)))
    return grid


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
    if folders and folders[0].lower() in (str(split), "valid", "val", "dev", "eval"):
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
            name = "val" if split in ("validation", "valid", "dev") else str(split)
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
        given = {("val" if s == "validation" else s): [c for c in clips if c.split == s] for s in named}
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


@dataclass(frozen=True)
class AudioGenerationOptions:
    """Flags of the generation commands, e.g. ``vaekit sample CKPT --griffin-lim-iters 200``."""

    griffin_lim_iters: int = field(
        default=0, metadata={"help": "Griffin-Lim iterations per clip (0: the model's griffin_lim_iters)"}
    )


class AudioVAE(VAE):
    """Convolutional VAE over the normalised log-mel; Gaussian or Laplace likelihood per mel bin.

    The likelihood's scale is learned per mel bin unless ``scale`` fixes it. Waveforms come back
    through the inverse mel filterbank and ``griffin_lim_iters`` Griffin-Lim iterations.
    """

    modality = "audio"
    spec_type = AudioSpec
    generation_options = AudioGenerationOptions
    eval_extras = ("lsd_db", "spectral_convergence", "griffin_lim_lsd_db", "griffin_lim_spectral_convergence")
    spec_assets: ClassVar[dict[str, tuple[str, ...]]] = {"normalisation.json": ("mel_mean", "mel_std")}

    def __init__(
        self,
        latent_dim: int = 32,
        channels: list[int] = [32, 64, 128],  # noqa: B006 - jsonargparse needs a literal default
        blocks_per_stage: int = 0,
        hidden: int = 512,
        likelihood: Literal["gaussian", "laplace"] = "gaussian",
        scale: float | None = None,
        griffin_lim_iters: int = 64,
        **core: Any,
    ) -> None:
        super().__init__(latent_dim=latent_dim, **core)

    def build(self, spec: AudioSpec) -> None:
        hp = self.hparams
        size, stages = (spec.n_mels, spec.num_frames), list(hp.channels)
        # The shared 2-D networks see a log-mel (B, n_mels, frames) as a one-channel image.
        self.encoder = nn.Sequential(
            nn.Unflatten(1, (1, spec.n_mels)),
            ConvEncoder(1, size, stages, hp.blocks_per_stage, hp.hidden, hp.latent_dim),
        )
        self.decoder = nn.Sequential(
            ConvDecoder(1, size, stages, hp.blocks_per_stage, hp.hidden, hp.latent_dim), nn.Flatten(1, 2)
        )
        self.likelihood = (Gaussian if hp.likelihood == "gaussian" else Laplace)(spec.n_mels, hp.scale)
        self.features = LogMel(spec)
        self.inverse_mel = InverseMelScale(self.features.mel.fb)
        if self.inverse_mel.rank < spec.n_mels:  # else the least-squares inverse is not unique
            raise ValueError(
                f"{spec.n_mels} mel bins are too many for n_fft={spec.n_fft} at {spec.sample_rate} Hz (some mel filters "
                "overlap the same FFT bins); lower --data.n_mels or raise --data.n_fft"
            )
        self.griffin_lim = GriffinLim(spec.n_fft, spec.hop_length, spec.num_samples)
        self.spectrogram = Spectrogram(spec.n_fft, spec.hop_length)
        self._register_load_state_dict_pre_hook(_drop_derived_buffers)

    # ---------------------------------------------------------------- the likelihood on features
    def encode_params(self, batch: Batch) -> tuple[Tensor, Tensor]:
        return self.encoder(batch["mel"])

    def log_likelihood(self, params: Tensor, batch: Batch) -> Tensor:
        return self.likelihood.log_prob(params, batch["mel"])

    def compressed_sizes(self, batch: Batch) -> list[int]:
        """FLAC size of each clip's real (unpadded) samples at 16 bits."""
        sizes = []
        for waveform, length in zip(batch["x"], batch["length"].tolist(), strict=True):
            buffer = io.BytesIO()
            samples = waveform[:length].detach().float().cpu().clamp(-1, 1).numpy()
            sf.write(buffer, samples, self.spec.sample_rate, format="FLAC", subtype="PCM_16")
            sizes.append(len(buffer.getvalue()))
        return sizes

    def encoder_example(self) -> Tensor:
        """The encoder reads the normalised log-mel (B, n_mels, frames); waveform features stay outside ONNX."""
        return torch.zeros(2, self.spec.n_mels, self.spec.num_frames, device=self.device)

    def num_units(self, batch: Batch) -> Tensor:
        return torch.full((batch["mel"].shape[0],), batch["mel"][0].numel(), device=batch["mel"].device)

    # ---------------------------------------------------------------- back to sound
    def to_waveform(self, normalised: Tensor, griffin_lim_iters: int = 0) -> Tensor:
        """Normalised log-mel (B, n_mels, frames) -> waveform (B, num_samples): inverse mel, then Griffin-Lim."""
        magnitude = self.inverse_mel(self.features.to_mel(normalised))
        return self.griffin_lim(magnitude, griffin_lim_iters or self.hparams.griffin_lim_iters)

    def generate(self, z: Tensor, griffin_lim_iters: int = 0, **options: Any) -> Tensor:
        """Waveforms (B, num_samples) from the likelihood's mean log-mel."""
        return self.to_waveform(self.likelihood.mean(self.decoder(z)), griffin_lim_iters)

    def spectrograms(self, waveforms: Tensor) -> list[Image.Image]:
        """Log-mel pictures of clips, on one shared dB scale."""
        log_mel = self.features.log_mel(waveforms.detach().float().to(self.device))
        top = float(20 * log_mel.max() / math.log(10))
        return [spectrogram_image(m, top) for m in log_mel]

    def log_media(self, writer: Any, tag: str, data: Tensor, step: int) -> None:
        images = self.spectrograms(data)
        grid = np.asarray(_grid(images, max(1, math.ceil(math.sqrt(len(images))))).convert("RGB"))
        writer.add_image(f"{tag}/spectrograms", grid, step, dataformats="HWC")
        for i, waveform in enumerate(data[:4]):
            clip = waveform.detach().float().cpu().clamp(-1, 1).unsqueeze(0)
            writer.add_audio(f"{tag}/{i}", clip, step, sample_rate=self.spec.sample_rate)

    def save_outputs(
        self, data: Tensor, out_dir: Path, stem: str, nrow: int | None = None, **options: Any
    ) -> list[Path]:
        """``stem``_0000.wav and ``stem``_0000.png (its log-mel spectrogram) per clip, and ``stem``.png, a grid of them."""
        waveforms = data.detach().float()
        images = self.spectrograms(waveforms)
        nrow = nrow or max(1, math.ceil(math.sqrt(len(images))))
        paths = [_save_image(_grid(images, nrow), Path(out_dir) / f"{stem}.png")]
        for i, (waveform, image) in enumerate(zip(waveforms, images, strict=True)):
            paths.append(write_wav(Path(out_dir) / f"{stem}_{i:04d}.wav", waveform, self.spec.sample_rate))
            paths.append(_save_image(image, Path(out_dir) / f"{stem}_{i:04d}.png"))
        return paths

    # ---------------------------------------------------------------- evaluation
    def evaluation_extras(self, batch: Batch, terms: ELBOTerms) -> dict[str, Tensor]:
        """LSD (dB) and spectral convergence of reconstructions, and of a plain Griffin-Lim round trip (the ceiling).

        Both go through the same inverse mel and Griffin-Lim; only frames of real (unpadded) audio count.
        """
        reference = self.spectrogram(batch["x"])
        frames = (torch.arange(reference.shape[-1], device=reference.device) * self.spec.hop_length).unsqueeze(0)
        frames = (frames < batch["length"].unsqueeze(1)).to(reference.dtype)
        results = {}
        for prefix, mel in (
            ("", self.likelihood.mean(self.decoder(terms.posterior.mode()))),
            ("griffin_lim_", batch["mel"]),
        ):
            estimate = self.spectrogram(self.to_waveform(mel))
            results[f"{prefix}lsd_db"] = log_spectral_distance(reference, estimate, frames, self.spec.log_floor)
            results[f"{prefix}spectral_convergence"] = spectral_convergence(reference, estimate, frames)
        return results


# Filter and window buffers that vaekit 0.2 saved (torchaudio's transforms kept them persistent); they are
# derived from the spec, so older checkpoints load without them and recompute them.
_DERIVED_BUFFERS = (
    "features.mel.spectrogram.window",
    "features.mel.mel_scale.fb",
    "inverse_mel.fb",
    "griffin_lim.window",
    "spectrogram.window",
)


def _drop_derived_buffers(state: dict[str, Any], prefix: str, *args: Any) -> None:
    for name in _DERIVED_BUFFERS:
        state.pop(prefix + name, None)


MODALITY = Modality(name="audio", model=AudioVAE, datamodule=AudioDataModule)
