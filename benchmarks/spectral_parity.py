"""vaekit's spectrogram transforms against librosa and, where it still loads, torchaudio: same features,
Griffin-Lim convergence at equal iterations, and speed, on real recordings.

    OMP_NUM_THREADS=1 python -m benchmarks.spectral_parity --clips ../shared/data/fsdd/recordings --num 64

Settings are the FSDD recipe's (8 kHz, 0.768 s, n_fft 256, hop 64, 48 mels). torchaudio is optional: run it in
an environment that has torchaudio 2.11 beside torch 2.11 (its last working pair) for the baseline columns.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import librosa
import numpy as np
import torch

from benchmarks.audio_griffinlim import seconds
from vaekit.modalities.audio import spectral_convergence
from vaekit.modalities.audio.spectral import GriffinLim, InverseMelScale, MelSpectrogram, Spectrogram

RATE, SAMPLES, N_FFT, HOP, N_MELS = 8000, 6144, 256, 64, 48


def load_clips(folder: Path, num: int) -> torch.Tensor:
    paths = sorted(folder.glob("*.wav"))[:num]
    clips = [librosa.util.fix_length(librosa.load(p, sr=RATE)[0], size=SAMPLES) for p in paths]
    return torch.from_numpy(np.stack(clips))


def convergence(invert, magnitude: torch.Tensor, n_iter: int, seeds: int = 5) -> float:
    """Mean spectral convergence over seeds of ``invert(magnitude, n_iter, seed)`` (a waveform)."""
    spectrogram, frames = Spectrogram(N_FFT, HOP), torch.ones(magnitude.shape[0], magnitude.shape[-1])
    runs = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        waveform = invert(magnitude, n_iter, seed)
        runs.append(spectral_convergence(magnitude, spectrogram(waveform), frames).mean().item())
    return sum(runs) / len(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=Path, default=Path(__file__).parents[1] / "vaekit" / "demo" / "audio")
    parser.add_argument("--num", type=int, default=64)
    args = parser.parse_args()
    x = load_clips(args.clips, args.num)
    ours_mel = MelSpectrogram(RATE, N_FFT, HOP, N_MELS, 0.0, RATE / 2)
    inverse, griffin_lim = InverseMelScale(ours_mel.fb), GriffinLim(N_FFT, HOP, SAMPLES)
    magnitude = Spectrogram(N_FFT, HOP)(x)
    reference = librosa.feature.melspectrogram(
        y=x.numpy(), sr=RATE, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS, power=1.0, htk=True, norm=None,
        pad_mode="reflect",
    )  # fmt: skip
    mel = ours_mel(x)
    result: dict = {
        "clips": len(x),
        "torch": torch.__version__,
        "mel_max_relative_difference_vs_librosa": float((mel - torch.from_numpy(reference)).abs().max() / mel.max()),
    }

    def ours(magnitude: torch.Tensor, n_iter: int, seed: int) -> torch.Tensor:
        return griffin_lim(magnitude, n_iter)

    def with_librosa(magnitude: torch.Tensor, n_iter: int, seed: int) -> torch.Tensor:
        waveform = librosa.griffinlim(
            magnitude.numpy(), n_iter=n_iter, hop_length=HOP, n_fft=N_FFT, length=SAMPLES, pad_mode="reflect",
            random_state=seed,
        )  # fmt: skip
        return torch.from_numpy(waveform)

    inverters = {"vaekit": ours, "librosa": with_librosa}
    try:
        import torchaudio
        import torchaudio.transforms as T

        ta_mel = T.MelSpectrogram(RATE, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS, power=1.0)
        result["torchaudio"] = torchaudio_version = torchaudio.__version__
        result["mel_max_relative_difference_vs_torchaudio"] = float((mel - ta_mel(x)).abs().max() / mel.max())
        ta_inverse = T.InverseMelScale(N_FFT // 2 + 1, N_MELS, RATE, 0.0, RATE / 2)
        ta_griffin_lim = T.GriffinLim(n_fft=N_FFT, hop_length=HOP, power=1.0, length=SAMPLES)

        def with_torchaudio(magnitude: torch.Tensor, n_iter: int, seed: int) -> torch.Tensor:
            ta_griffin_lim.n_iter = n_iter
            return ta_griffin_lim(magnitude)

        inverters[f"torchaudio {torchaudio_version}"] = with_torchaudio
        mel_of = mel.clone()
        result["seconds_mel_inverse_and_64_iterations"] = {
            "vaekit": seconds(lambda: griffin_lim(inverse(mel_of), 64), 3),
            "torchaudio": seconds(lambda: with_torchaudio(ta_inverse(mel_of), 64, 0), 3),
        }
    except (ImportError, OSError):
        result["seconds_mel_inverse_and_64_iterations"] = {"vaekit": seconds(lambda: griffin_lim(inverse(mel), 64), 3)}
    result["griffin_lim_spectral_convergence"] = {
        name: {n: round(convergence(invert, magnitude, n), 4) for n in (8, 32, 64)}
        for name, invert in inverters.items()
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
