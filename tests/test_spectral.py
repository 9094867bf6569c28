"""vaekit's own spectrogram transforms against librosa and against what vaekit 0.2 computed with torchaudio;
models saved by 0.2 load and give the same features and likelihoods; the CLI starts without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import librosa
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TESTS, vaekit
from vaekit.checkpoint import load_model
from vaekit.modalities.audio import spectral_convergence
from vaekit.modalities.audio.spectral import GriffinLim, InverseMelScale, MelSpectrogram, Spectrogram, mel_filterbank

V0_2 = TESTS / "fixtures" / "v0_2"  # written by vaekit 0.2 on torchaudio 2.11: tests/fixtures/make_v0_2.py
SR, N_FFT, HOP, N_MELS = 8000, 256, 64, 32


@pytest.fixture(scope="module")
def clips() -> torch.Tensor:
    """Two real spoken digits from the demo data, their first 0.25 s."""
    paths = sorted((Path(__file__).parents[1] / "vaekit" / "demo" / "audio").glob("*_0.flac"))[:2]
    return torch.stack([torch.from_numpy(librosa.load(p, sr=SR)[0][:2000]) for p in paths])


def test_spectrogram_equals_librosa_stft(clips):
    ours = Spectrogram(N_FFT, HOP)(clips)
    reference = np.abs(librosa.stft(clips.numpy(), n_fft=N_FFT, hop_length=HOP, window="hann", pad_mode="reflect"))
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-4, atol=1e-5)


def test_mel_spectrogram_equals_librosa_within_float32(clips):
    """Tolerance: 1e-4 relative, 1e-5 absolute (float32 STFT against librosa's float32 STFT and float64 filters)."""
    ours = MelSpectrogram(SR, N_FFT, HOP, N_MELS, 0.0, SR / 2)(clips)
    reference = librosa.feature.melspectrogram(
        y=clips.numpy(), sr=SR, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS, power=1.0, htk=True, norm=None,
        pad_mode="reflect",
    )  # fmt: skip
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-4, atol=1e-5)
    # Batched over any leading dimensions, as the data module and the joint model call it.
    assert torch.allclose(MelSpectrogram(SR, N_FFT, HOP, N_MELS, 0.0, SR / 2)(clips.view(2, 1, -1))[:, 0], ours)


def test_inverse_mel_is_the_minimum_norm_least_squares_solution_clipped_at_zero():
    fb = mel_filterbank(SR, N_FFT, N_MELS, 0.0, SR / 2)
    mel = fb @ torch.rand(2, N_FFT // 2 + 1, 5)
    inverse = InverseMelScale(fb)
    solution = np.linalg.lstsq(fb.double().numpy(), mel[0].double().numpy(), rcond=None)[0]
    np.testing.assert_allclose(inverse(mel)[0].numpy(), np.maximum(solution, 0), rtol=1e-4, atol=1e-5)
    assert inverse.rank == N_MELS
    # Too many mel bins for the FFT size: empty filters lower the rank, which the audio model refuses.
    assert InverseMelScale(mel_filterbank(SR, 64, 64, 0.0, SR / 2)).rank < 64


def test_saved_0_2_model_gives_the_same_features_from_checkpoint_and_export():
    reference = load_file(V0_2 / "features.safetensors")
    for source in (V0_2 / "audio.ckpt", V0_2 / "audio-export"):
        model, _ = load_model(source)
        torch.testing.assert_close(model.features(reference["x"]), reference["mel"], rtol=1e-5, atol=1e-5)
        # The filters and windows are derived, not saved: nothing of them is written any more.
        assert not any("window" in key or key.endswith(".fb") for key in model.state_dict())


def test_saved_0_2_model_evaluates_to_the_same_nats(tmp_path, demo_of_0_2):
    vaekit(
        "evaluate", V0_2 / "audio.ckpt", "--iw-samples", "16", "--max-examples", "8", "--seed", "0",
        "--data-root", "demo:audio",  # the fixture records where 0.2 ran
        "--out", tmp_path / "eval.json",
    )  # fmt: skip
    now, before = (
        json.loads((tmp_path / "eval.json").read_text()),
        json.loads((V0_2 / "audio-evaluate.json").read_text()),
    )
    for key in ("elbo", "rec", "kl", "nll"):
        assert now[key] == pytest.approx(before[key], rel=1e-5, abs=1e-4), key


def _mean_convergence(griffin_lim: GriffinLim, magnitude: torch.Tensor, n_iter: int, reference=None) -> float:
    """Spectral convergence of Griffin-Lim (or ``reference(magnitude, n_iter, seed)``), the mean over seeds 0-4."""
    spectrogram, frames = griffin_lim.stft, torch.ones(magnitude.shape[0], magnitude.shape[-1])
    runs = []
    for seed in range(5):
        torch.manual_seed(seed)
        waveform = griffin_lim(magnitude, n_iter) if reference is None else reference(magnitude, n_iter, seed)
        runs.append(spectral_convergence(magnitude, spectrogram(waveform), frames).mean().item())
    return sum(runs) / len(runs)


@pytest.mark.parametrize("n_iter", [8, 32])
def test_griffin_lim_converges_no_worse_than_0_2_and_librosa(n_iter):
    reference = load_file(V0_2 / "features.safetensors")
    model, _ = load_model(V0_2 / "audio.ckpt")
    magnitude = model.spectrogram(reference["x"])
    spec = model.spec
    ours = _mean_convergence(model.griffin_lim, magnitude, n_iter)
    before = json.loads((V0_2 / "griffin_lim.json").read_text())["spectral_convergence"][str(n_iter)]

    def librosa_griffin_lim(magnitude: torch.Tensor, n_iter: int, seed: int) -> torch.Tensor:
        waveform = librosa.griffinlim(
            magnitude.numpy(), n_iter=n_iter, hop_length=spec.hop_length, n_fft=spec.n_fft,
            length=spec.num_samples, pad_mode="reflect", random_state=seed,
        )  # fmt: skip
        return torch.from_numpy(waveform)

    theirs = _mean_convergence(model.griffin_lim, magnitude, n_iter, librosa_griffin_lim)
    assert ours <= before and ours <= theirs * 1.01, (ours, before, theirs)
    # It converges: more iterations, a closer spectrogram.
    assert _mean_convergence(model.griffin_lim, magnitude, 4 * n_iter) < ours


def test_griffin_lim_repeats_with_the_seed_and_keeps_leading_dimensions():
    griffin_lim = GriffinLim(N_FFT, HOP, length=4000)
    magnitude = torch.rand(2, 3, N_FFT // 2 + 1, 4000 // HOP + 1)
    torch.manual_seed(1)
    first = griffin_lim(magnitude, 2)
    torch.manual_seed(1)
    assert first.shape == (2, 3, 4000) and torch.equal(first, griffin_lim(magnitude, 2))


def _modules_after(code: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", f"import sys\n{code}\nprint(' '.join(sys.modules))"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return set(result.stdout.split())


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["recipes"], ["sample"], ["sample", "--help"]],
    ids=["help", "recipes", "argument-error", "command-help"],
)
def test_cli_answers_without_importing_torch_lightning_or_plugins(argv):
    code = f"from vaekit.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    loaded = _modules_after(code)
    assert "vaekit.cli" in loaded
    assert not {"torch", "pytorch_lightning", "lightning_fabric", "vaekit.modalities.image"} & loaded


def test_no_vaekit_module_imports_torchaudio():
    loaded = _modules_after(
        "import vaekit.cli.commands, vaekit.cli.fit, vaekit.modalities.audio, vaekit.modalities.multimodal"
    )
    assert "vaekit.modalities.audio" in loaded and "torchaudio" not in loaded
