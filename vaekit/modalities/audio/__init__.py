"""Audio modality: a 2-D convolutional VAE over log-mel spectrograms, Griffin-Lim back to sound.

Waveforms stay waveforms in the data splits; the data module turns each batch into the model's
features (normalised log-mel, ``batch["mel"]``) on the device, once per batch, so the
importance-weighted estimator repeats features rather than recomputing them. Generation inverts
the mel scale and runs Griffin-Lim (``spectral``), batched, and writes 16-bit WAVs with a
spectrogram PNG per clip.

``features`` (spec, log-mel, spectral distances), ``spectral`` (STFT, mel filters, inverse mel,
Griffin-Lim on torch), ``files`` (reading and writing audio), ``data`` (the data module), ``model``.
"""

from vaekit.modalities.audio.data import AudioDataModule, Clip
from vaekit.modalities.audio.features import AudioSpec, LogMel, log_spectral_distance, spectral_convergence
from vaekit.modalities.audio.files import read_audio, write_wav
from vaekit.modalities.audio.model import AudioGenerationOptions, AudioVAE
from vaekit.modalities.registry import Modality

MODALITY = Modality(
    name="audio",
    model=AudioVAE,
    datamodule=AudioDataModule,
    former_names={
        "vaekit.modalities.audio.AudioVAE": AudioVAE,
        "vaekit.modalities.audio.AudioDataModule": AudioDataModule,
    },
)

__all__ = [
    "MODALITY",
    "AudioDataModule",
    "AudioGenerationOptions",
    "AudioSpec",
    "AudioVAE",
    "Clip",
    "LogMel",
    "log_spectral_distance",
    "read_audio",
    "spectral_convergence",
    "write_wav",
]
