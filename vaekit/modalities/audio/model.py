"""The audio VAE: a 2-D convolutional VAE over the normalised log-mel, Griffin-Lim back to sound."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import soundfile as sf
import torch
from PIL import Image
from torch import Tensor, nn

from vaekit.core.likelihoods import LIKELIHOODS
from vaekit.core.module import VAE, Batch, ELBOTerms
from vaekit.core.networks import ConvDecoder, ConvEncoder
from vaekit.modalities.audio.features import AudioSpec, LogMel, log_spectral_distance, spectral_convergence
from vaekit.modalities.audio.files import spectrogram_image, write_wav
from vaekit.modalities.audio.spectral import GriffinLim, InverseMelScale, Spectrogram
from vaekit.modalities.pictures import grid, save_png


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
        self.likelihood = LIKELIHOODS[hp.likelihood].for_data(spec.n_mels, hp.scale)
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
        picture = np.asarray(grid(images, pad=4).convert("RGB"))
        writer.add_image(f"{tag}/spectrograms", picture, step, dataformats="HWC")
        for i, waveform in enumerate(data[:4]):
            clip = waveform.detach().float().cpu().clamp(-1, 1).unsqueeze(0)
            writer.add_audio(f"{tag}/{i}", clip, step, sample_rate=self.spec.sample_rate)

    def save_outputs(
        self, data: Tensor, out_dir: Path, stem: str, nrow: int | None = None, **options: Any
    ) -> list[Path]:
        """``stem``_0000.wav and ``stem``_0000.png (its log-mel spectrogram) per clip, and ``stem``.png, a grid of them."""
        waveforms = data.detach().float()
        images = self.spectrograms(waveforms)
        paths = [save_png(grid(images, nrow, pad=4), Path(out_dir) / f"{stem}.png")]
        for i, (waveform, image) in enumerate(zip(waveforms, images, strict=True)):
            paths.append(write_wav(Path(out_dir) / f"{stem}_{i:04d}.wav", waveform, self.spec.sample_rate))
            paths.append(save_png(image, Path(out_dir) / f"{stem}_{i:04d}.png"))
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
