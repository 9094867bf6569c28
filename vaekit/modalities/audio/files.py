"""Reading recordings with soundfile, writing 16-bit WAVs and spectrogram pictures."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image
from torch import Tensor

from vaekit.core.io import atomic_path

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
