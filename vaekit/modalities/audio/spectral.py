"""Spectrograms and their inversion on ``torch.stft``/``torch.istft``, with librosa's mel filters.

vaekit's own replacement for the four torchaudio transforms it used (torchaudio froze at torch 2.11).
Each one computes what its torchaudio namesake computed with the arguments vaekit passed, so models
trained before keep their features: a centred, reflect-padded STFT with a periodic Hann window of
``n_fft`` samples, magnitudes (power 1), HTK mel filters without area normalisation. Everything is
batched over leading dimensions and runs on the input's device. The filters and windows are derived
from the sizes, so they are non-persistent buffers: nothing of them is saved with a model.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn


def _batched(x: Tensor, trailing: int) -> tuple[Tensor, torch.Size]:
    """``x`` flattened to (batch, *last ``trailing`` dims), and the leading shape to restore."""
    lead = x.shape[: x.dim() - trailing]
    return x.reshape(-1, *x.shape[x.dim() - trailing :]), lead


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> Tensor:
    """(n_mels, n_fft // 2 + 1) triangular HTK-mel filters without normalisation (librosa's, as torchaudio's)."""
    import librosa

    with warnings.catch_warnings():  # empty filters are caught by the callers' rank check, with a fix to suggest
        warnings.simplefilter("ignore", UserWarning)
        fb = librosa.filters.mel(
            sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max, htk=True, norm=None, dtype="float64"
        )
    return torch.from_numpy(fb).float()


class Spectrogram(nn.Module):
    """Waveform (..., samples) -> STFT magnitude (..., n_fft // 2 + 1, frames), raised to ``power``."""

    def __init__(self, n_fft: int, hop_length: int, power: float = 1.0) -> None:
        super().__init__()
        self.n_fft, self.hop_length, self.power = n_fft, hop_length, power
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def stft(self, waveform: Tensor) -> Tensor:
        return torch.stft(
            waveform,
            self.n_fft,
            self.hop_length,
            window=self.window,
            center=True,
            pad_mode="reflect",
            onesided=True,
            return_complex=True,
        )

    def istft(self, spectrum: Tensor, length: int) -> Tensor:
        return torch.istft(spectrum, self.n_fft, self.hop_length, window=self.window, center=True, length=length)

    def forward(self, waveform: Tensor) -> Tensor:
        flat, lead = _batched(waveform, 1)
        magnitude = self.stft(flat).abs()
        if self.power != 1.0:
            magnitude = magnitude.pow(self.power)
        return magnitude.reshape(*lead, *magnitude.shape[-2:])


class MelSpectrogram(nn.Module):
    """Waveform (..., samples) -> mel spectrogram (..., n_mels, frames): the STFT magnitude (``power`` 1) or power
    (2) through the filters."""

    def __init__(
        self, sample_rate: int, n_fft: int, hop_length: int, n_mels: int, f_min: float, f_max: float, power: float = 1.0
    ) -> None:
        super().__init__()
        self.spectrogram = Spectrogram(n_fft, hop_length, power)
        self.register_buffer("fb", mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max), persistent=False)

    def forward(self, waveform: Tensor) -> Tensor:
        return self.fb @ self.spectrogram(waveform)


class InverseMelScale(nn.Module):
    """Mel magnitude (..., n_mels, frames) -> STFT magnitude (..., n_fft // 2 + 1, frames).

    The minimum-norm least-squares solution of ``fb @ S = mel`` (the filters have fewer rows than
    columns), clipped at zero. The pseudo-inverse is computed once, in float64, so inversion is one
    matrix product; it equals torchaudio's per-call ``lstsq`` when the filters have full row rank,
    which ``rank`` reports so callers can refuse a configuration with empty or duplicate filters.
    """

    def __init__(self, fb: Tensor) -> None:
        super().__init__()
        self.rank = int(torch.linalg.matrix_rank(fb.double()))
        self.register_buffer("pinv", torch.linalg.pinv(fb.double()).float(), persistent=False)

    def forward(self, mel: Tensor) -> Tensor:
        return (self.pinv @ mel).clamp(min=0)


class GriffinLim(nn.Module):
    """STFT magnitude (..., n_fft // 2 + 1, frames) -> waveform (..., length), by fast Griffin-Lim.

    Perraudin et al. (2013)'s accelerated iteration with momentum 0.99, as torchaudio and librosa run it,
    from random phases drawn with torch's global generator (so ``--seed`` repeats a clip). All clips of a
    batch iterate together on the magnitude's device.
    """

    def __init__(self, n_fft: int, hop_length: int, length: int, momentum: float = 0.99) -> None:
        super().__init__()
        if not 0 <= momentum < 1:
            raise ValueError(f"Griffin-Lim momentum must be in [0, 1), got {momentum}")
        self.stft = Spectrogram(n_fft, hop_length)
        self.length, self.momentum = length, momentum

    def forward(self, magnitude: Tensor, n_iter: int) -> Tensor:
        flat, lead = _batched(magnitude, 2)
        phase = torch.rand(flat.shape, dtype=flat.dtype, device=flat.device) * (2 * torch.pi)
        angles = torch.polar(torch.ones_like(flat), phase)
        previous = torch.zeros_like(angles)
        for _ in range(n_iter):
            rebuilt = self.stft.stft(self.stft.istft(flat * angles, self.length))
            angles = rebuilt - previous * (self.momentum / (1 + self.momentum))
            angles = angles / (angles.abs() + 1e-16)
            previous = rebuilt
        waveform = self.stft.istft(flat * angles, self.length)
        return waveform.reshape(*lead, waveform.shape[-1])
