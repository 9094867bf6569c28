"""Audio modality: file I/O, features and their inverse, checkpointed statistics, the CLI end to end, bad input."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from vaekit.checkpoint import load_datamodule, load_model
from vaekit.cli import main
from vaekit.modalities.audio import AudioDataModule, AudioSpec, AudioVAE, Clip, LogMel, spectral_convergence, write_wav

DEMO = Path(__file__).resolve().parents[1] / "vaekit" / "demo" / "audio"
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "audio" / "tiny.yaml"
RATE = 8000
NUM_SAMPLES = 6144  # tiny.yaml: 0.768 s at 8 kHz


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(signal: np.ndarray, rate: int) -> float:
    return float(np.abs(np.fft.rfft(signal)).argmax() * rate / len(signal))


def plain_spec(n_mels: int = 48) -> AudioSpec:
    return AudioSpec(RATE, NUM_SAMPLES, 256, 64, n_mels, 0.0, 4000.0, 1e-5, [0.0] * n_mels, [1.0] * n_mels)


# --------------------------------------------------------------------------- files and features


def test_wav_round_trip_keeps_rate_length_and_samples(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    signal = np.clip(tone(440, 0.5, RATE) + 0.1 * rng.standard_normal(4000).astype(np.float32), -0.99, 0.99)
    path = write_wav(tmp_path / "x.wav", torch.from_numpy(signal), RATE)
    info = sf.info(path)
    assert (info.samplerate, info.frames, info.channels, info.subtype) == (RATE, 4000, 1, "PCM_16")
    back, rate = sf.read(path, dtype="float32")
    assert rate == RATE and back.shape == signal.shape
    assert np.abs(back - signal).max() <= 1 / 32768 + 1e-7  # one 16-bit step


def test_resample_and_downmix_give_mono_at_the_recipe_rate(tmp_path: Path) -> None:
    left, right = tone(440, 1.0, 44100, 0.6), tone(440, 1.0, 44100, 0.2)
    sf.write(tmp_path / "stereo.wav", np.stack([left, right], 1), 44100, subtype="PCM_16")
    stereo = Clip(source=str(tmp_path / "stereo.wav"), where=str(tmp_path / "stereo.wav"))
    data = AudioDataModule(str(tmp_path), sample_rate=RATE).decode(stereo)
    assert data.shape == (RATE,) and data.dtype == np.float32
    assert abs(peak_hz(data, RATE) - 440) <= 1.0
    assert abs(np.sqrt(np.mean(data[100:-100] ** 2)) - 0.4 / math.sqrt(2)) < 0.01  # mean of the channels
    pieces = AudioDataModule(str(tmp_path), sample_rate=RATE, duration=0.3, long_files="windows").windows(data)
    assert [len(p) for p, _ in pieces] == [2400] * 4 and [n for _, n in pieces] == [2400, 2400, 2400, 800]
    for forbid in ({"resample": False}, {"downmix": False}):
        with pytest.raises(ValueError, match=r"stereo\.wav"):
            AudioDataModule(str(tmp_path), sample_rate=RATE, **forbid).decode(stereo)


def test_mel_and_griffin_lim_round_trip_a_tone() -> None:
    """A 1 kHz tone through log-mel, inverse mel and Griffin-Lim: SC <= 0.3, RMS within 10%, pitch within 10 Hz.

    Griffin-Lim starts from random phases, so the pitch is checked as the mean error over eight seeds rather
    than one draw (single draws range over 3-12 Hz: the inverse mel spreads a tone over its filter's band).
    """
    torch.manual_seed(0)
    model = AudioVAE(latent_dim=2, griffin_lim_iters=32)
    model.attach_spec(plain_spec())
    x = torch.from_numpy(tone(1000, NUM_SAMPLES / RATE, RATE)).unsqueeze(0)
    y = model.to_waveform(model.features(x))
    assert y.shape == x.shape and torch.isfinite(y).all()
    frames = torch.ones(1, model.spectrogram(x).shape[-1])
    assert spectral_convergence(model.spectrogram(x), model.spectrogram(y), frames).item() <= 0.3
    assert abs(y.pow(2).mean().sqrt().item() / x.pow(2).mean().sqrt().item() - 1) <= 0.1
    errors = []
    for seed in range(8):
        torch.manual_seed(seed)
        errors.append(abs(peak_hz(model.to_waveform(model.features(x))[0].numpy(), RATE) - 1000))
    assert sum(errors) / len(errors) <= 10


def test_features_normalise_and_invert_exactly() -> None:
    spec = dataclasses.replace(plain_spec(8), mel_mean=[float(i) for i in range(8)], mel_std=[2.0] * 8)
    features = LogMel(spec)
    x = torch.from_numpy(tone(300, NUM_SAMPLES / RATE, RATE)).unsqueeze(0)
    normalised = features(x)
    mel = features.mel(x).clamp(min=spec.log_floor)
    assert torch.allclose(normalised, (mel.log() - torch.arange(8.0).view(-1, 1)) / 2, atol=1e-5)
    assert torch.allclose(features.to_mel(normalised), mel, rtol=1e-4)


# --------------------------------------------------------------------------- CLI end to end


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("audio-fit")
    args = ["--trainer.default_root_dir", str(root), "--trainer.max_steps", "25", "--trainer.max_epochs", "-1"]
    main(["fit", "--config", str(CONFIG), *args, "--trainer.enable_progress_bar", "false", "--samples.num", "2"])
    return root / "checkpoints" / "last.ckpt"


def _check_wavs(folder: Path, stem: str, count: int) -> None:
    wavs = sorted(folder.glob(f"{stem}_*.wav"))
    assert len(wavs) == count
    for wav in wavs:
        data, rate = sf.read(wav, dtype="float32")
        assert rate == RATE and data.shape == (NUM_SAMPLES,)
        assert np.isfinite(data).all() and np.sqrt(np.mean(data**2)) > 1e-4  # not silent
        assert wav.with_suffix(".png").is_file()
    assert (folder / f"{stem}.png").is_file()


def test_normalisation_statistics_survive_the_checkpoint(trained: Path) -> None:
    model, checkpoint = load_model(trained)
    datamodule = AudioDataModule(
        "demo:audio",
        n_fft=256,
        hop_length=128,
        n_mels=32,
        name_pattern=r"^(?P<label>\d+)_(?P<speaker>[^_]+)_\d+$",
        val_speakers=["nicolas"],
        test_speakers=["theo"],
    )
    datamodule.setup()
    log_mel = model.features.log_mel(datamodule.splits["train"]["x"])
    assert np.allclose(model.spec.mel_mean, log_mel.mean((0, 2)).numpy(), atol=1e-3)
    assert np.allclose(model.spec.mel_std, log_mel.std((0, 2), unbiased=False).numpy(), atol=1e-3)
    assert model.spec == datamodule.spec
    assert torch.equal(model.features.mean.flatten(), torch.tensor(datamodule.spec.mel_mean))
    assert load_datamodule(model, checkpoint).spec is model.spec


def test_cli_end_to_end_from_the_checkpoint_alone(trained: Path, tmp_path: Path) -> None:
    ckpt = str(trained)
    main(["sample", ckpt, "--num", "3", "--out", str(tmp_path / "s"), "--griffin-lim-iters", "8"])
    _check_wavs(tmp_path / "s", "samples", 3)
    main(["reconstruct", ckpt, "--num", "2", "--out", str(tmp_path / "r")])
    _check_wavs(tmp_path / "r", "inputs", 2)
    _check_wavs(tmp_path / "r", "reconstructions", 2)
    a, b = DEMO / "3_theo_0.flac", DEMO / "5_george_0.flac"
    main(["interpolate", ckpt, "--steps", "3", "--out", str(tmp_path / "i"), "--a", str(a), "--b", str(b)])
    _check_wavs(tmp_path / "i", "interpolation", 3)
    main(["traverse", ckpt, "--dims", "0", "1", "--steps", "3", "--out", str(tmp_path / "t")])
    _check_wavs(tmp_path / "t", "traversal", 6)

    main(["evaluate", ckpt, "--iw-samples", "4", "--out", str(tmp_path / "e.json")])
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["num_examples"] == 100  # one held-out speaker, ten takes of ten digits
    for key in ("elbo", "rec", "kl", "nll", "mutual_info", *AudioVAE.eval_extras):
        assert math.isfinite(result[key]), key
    assert result["kl"] >= 0 and 1 <= result["active_units"] <= 8
    assert 0 < result["griffin_lim_lsd_db"] < result["lsd_db"]

    main(["encode", ckpt, "--split", "val", "--out", str(tmp_path / "z.npz")])
    encoded = np.load(tmp_path / "z.npz")
    assert encoded["mean"].shape == (100, 8) and sorted(encoded["label"].tolist()) == sorted(list(range(10)) * 10)
    main(["score", ckpt, "--out", str(tmp_path / "scores.csv")])
    rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
    assert len(rows) == 100 and all(math.isfinite(float(r["neg_elbo"])) for r in rows)


# --------------------------------------------------------------------------- bad input


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "clips"
    folder.mkdir()
    for path in sorted(DEMO.glob("*_george_0.flac"))[:6]:
        shutil.copy(path, folder)
    return folder


def _truncated(path: Path) -> None:
    clip = io.BytesIO()
    sf.write(clip, *sf.read(DEMO / "2_jackson_0.flac", dtype="int16"), format="WAV", subtype="PCM_16")
    path.write_bytes(clip.getvalue()[:3000])


BAD_FILES = {
    "truncated": (_truncated, "truncated"),
    "empty": (lambda p: p.write_bytes(b""), "empty"),
    "text": (lambda p: p.write_text("not audio\n"), "not a readable audio file"),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_file_is_named_or_skipped(tmp_path: Path, kind: str) -> None:
    folder = _folder(tmp_path)
    make, message = BAD_FILES[kind]
    make(folder / "bad.wav")
    with pytest.raises(ValueError, match=rf"bad\.wav.*{message}|{message}.*bad\.wav"):
        AudioDataModule(str(folder)).setup()
    datamodule = AudioDataModule(str(folder), skip_bad_files=True)
    datamodule.setup()
    assert len(datamodule.skipped) == 1 and "bad.wav" in datamodule.skipped[0]
    assert sum(len(split["x"]) for split in datamodule.splits.values()) == 6


def test_stereo_44k_file_among_8k_mono_is_converted_or_refused(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    sf.write(folder / "loud_stereo.wav", np.stack([tone(440, 0.5, 44100)] * 2, 1), 44100)
    datamodule = AudioDataModule(str(folder), sample_rate=RATE, duration=0.5, val_fraction=0.2, test_fraction=0.2)
    datamodule.setup()
    assert sum(len(split["x"]) for split in datamodule.splits.values()) == 7
    assert all(split["x"].shape[1] == 4000 for split in datamodule.splits.values())
    with pytest.raises(ValueError, match=r"loud_stereo\.wav: sampled at 44100 Hz"):
        AudioDataModule(str(folder), sample_rate=RATE, resample=False).setup()


def test_cli_names_a_bad_input_file(trained: Path, tmp_path: Path) -> None:
    bad = tmp_path / "oops.wav"
    bad.write_text("not audio")
    with pytest.raises(SystemExit, match=r"oops\.wav: not a readable audio file"):
        main(["reconstruct", str(trained), "--out", str(tmp_path / "r"), "--input", str(bad)])


def test_labels_from_folders_and_split_folders_are_kept(tmp_path: Path) -> None:
    for split, speaker, count in (("train", "george", 5), ("test", "theo", 1)):
        for label in ("dog", "cat"):
            (tmp_path / split / label).mkdir(parents=True)
        for path in sorted(DEMO.glob(f"*_{speaker}_0.flac"))[:count]:
            shutil.copy(path, tmp_path / split / "dog" / path.name)
            shutil.copy(path, tmp_path / split / "cat" / path.name)
    datamodule = AudioDataModule(str(tmp_path), val_fraction=0.2)
    datamodule.setup()
    assert datamodule.label_names == ["cat", "dog"]
    assert datamodule.splits["test"]["label"].tolist() == [0, 1]
    assert len(datamodule.splits["train"]) + len(datamodule.splits["val"]) == 10


def test_hub_dataset_is_decoded_by_vaekit_with_its_labels_and_speakers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub-id path, fed a local DatasetDict with an Audio column (bytes), as `datasets` would return it."""
    import datasets

    def split(paths: list[Path]) -> datasets.Dataset:
        rows = {
            "audio": [{"bytes": p.read_bytes(), "path": p.name} for p in paths],
            "label": [int(p.name[0]) for p in paths],
            "speaker_id": [p.name.split("_")[1] for p in paths],
        }
        features = {"audio": datasets.Audio(), "label": datasets.ClassLabel(names=list("0123456789"))}
        return datasets.Dataset.from_dict(rows).cast(
            datasets.Features({**features, "speaker_id": datasets.Value("string")})
        )

    files = sorted(DEMO.glob("*_0.flac"))  # take 0: 60 clips
    train = [p for p in files if "_theo_" not in p.name]
    hub = datasets.DatasetDict({"train": split(train), "test": split([p for p in files if "_theo_" in p.name])})
    monkeypatch.setattr("vaekit.core.data.load_hub_dataset", lambda hub_id: hub)
    datamodule = AudioDataModule("someone/spoken-digits", val_speakers=["nicolas"])
    datamodule.setup()
    assert datamodule.label_names == list("0123456789")
    assert sorted(datamodule.splits["test"]["label"].tolist()) == list(range(10))
    assert len(datamodule.splits["val"]) == 10 and len(datamodule.splits["train"]) == 40
