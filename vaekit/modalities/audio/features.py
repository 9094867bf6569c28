"""What the audio data tells the model (its spec) and the features: normalised log-mel, spectral distances."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from vaekit.modalities.audio.spectral import MelSpectrogram

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
