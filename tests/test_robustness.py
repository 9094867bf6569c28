"""Resume, DDP, bad input, every shipped config and a plugin from outside the package."""

from __future__ import annotations

import csv
import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from tests.conftest import TESTS, fit_args, install_plugin, vaekit, vaekit_subprocess
from vaekit.checkpoint import load_datamodule, load_model
from vaekit.core.io import atomic_path
from vaekit.modalities.registry import available

TINY = "configs/image/tiny.yaml"


def _global_step(ckpt: Path) -> int:
    return torch.load(ckpt, weights_only=True)["global_step"]


# ------------------------------------------------------------------ resume


@pytest.mark.slow
def test_resume_after_a_kill_ends_at_the_same_step(tmp_path):
    common = (
        "--trainer.max_epochs", "3",
        "--trainer.limit_train_batches", "10",
        "--trainer.limit_val_batches", "1",
        "--checkpoint.every_n_train_steps", "5",
        "--samples.num", "0",
    )  # fmt: skip
    vaekit(*fit_args(TINY, tmp_path / "whole", *common))
    expected = _global_step(tmp_path / "whole" / "checkpoints" / "last.ckpt")

    killed = tmp_path / "killed"
    crash = ("--trainer.callbacks+=helpers.KillAtStep", "--trainer.callbacks.step", "17")
    proc = vaekit_subprocess(*fit_args(TINY, killed, *common, *crash), env={"PYTHONPATH": str(TESTS)}, check=False)
    assert proc.returncode == -9, proc.stderr[-2000:]
    checkpoints = sorted((killed / "checkpoints").iterdir())
    assert checkpoints, "a checkpoint was written before the kill"
    for path in checkpoints:  # every file is a whole checkpoint: no partial writes, no temp files
        assert path.suffix == ".ckpt", path
        torch.load(path, weights_only=True)
    assert _global_step(killed / "checkpoints" / "last.ckpt") == 15

    vaekit(*fit_args(TINY, killed, *common, "--ckpt_path", str(killed / "checkpoints" / "last.ckpt")))
    assert _global_step(killed / "checkpoints" / "last.ckpt") == expected


def test_last_checkpoint_is_the_final_state_even_without_improvement(tmp_path):
    """last.ckpt must follow training, not the best checkpoint (Lightning's save_last alone does not)."""
    vaekit(*fit_args(TINY, tmp_path, "--trainer.max_epochs", "3", "--trainer.limit_train_batches", "4",
                     "--model.lr", "0.0", "--samples.num", "0",
                     "--best_checkpoint.monitor", "val/active_units"))  # fmt: skip
    # With lr 0 the active units (deterministic at fixed weights) never improve: the best stays at step 4.
    assert [p.name for p in (tmp_path / "checkpoints").glob("best-*.ckpt")] == ["best-000-000004.ckpt"]
    assert _global_step(tmp_path / "checkpoints" / "last.ckpt") == 12


# ------------------------------------------------------------------ DDP


def _last_logged(metrics_csv: Path, key: str) -> float:
    with open(metrics_csv) as handle:
        rows = [r for r in csv.DictReader(handle) if r.get(key)]
    return float(rows[-1][key])


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_reduces_validation_metrics(tmp_path):
    ddp = ("--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu")
    vaekit_subprocess(*fit_args(TINY, tmp_path, "--trainer.max_epochs", "1", "--samples.num", "0", *ddp))
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    metrics = next(tmp_path.glob("lightning_logs/version_*/metrics.csv"))
    logged_kl = _last_logged(metrics, "val/kl")
    logged_au = _last_logged(metrics, "val/active_units")

    # One process over the whole validation split: the analytic KL and the active units are
    # deterministic, so the DDP figures match only if both ranks' halves were reduced.
    model, checkpoint = load_model(ckpt)
    datamodule = load_datamodule(model, checkpoint)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    single = trainer.validate(model, datamodule=datamodule, verbose=False)[0]
    assert logged_kl == pytest.approx(single["val/kl"], rel=1e-4)
    assert logged_au == single["val/active_units"]
    datamodule.setup("validate")
    half = datamodule.examples("val", range(0, len(datamodule.splits["val"]), 2))
    with torch.no_grad():
        half_kl = model.posterior(datamodule.on_after_batch_transfer(half, 0)).kl_to_standard_normal().mean().item()
    assert abs(half_kl - logged_kl) > 1e-3, "the logged KL would equal one rank's half if it were not reduced"


# ------------------------------------------------------------------ a plugin from outside vaekit


def test_a_plugin_outside_vaekit_trains_and_samples_through_the_cli(tmp_path, monkeypatch):
    site, data = tmp_path / "site", tmp_path / "data"
    install_plugin(site)
    data.mkdir()
    rng = np.random.default_rng(0)
    for name, count in (("train", 300), ("test", 50)):
        angle = rng.uniform(0, 2 * np.pi, count)
        rows = np.stack([np.cos(angle), np.sin(angle), 0.1 * rng.normal(size=count)], 1)
        np.savetxt(data / f"{name}.csv", rows, delimiter=",")
    monkeypatch.syspath_prepend(str(site))  # as if pip-installed: importable, entry point discoverable
    assert "vector" in available()
    config = TESTS / "plugin_example" / "vector.yaml"
    vaekit(*fit_args(str(config), tmp_path / "run", "--data.root", str(data)))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    vaekit("sample", ckpt, "--num", "7", "--out", tmp_path / "out")
    samples = np.loadtxt(tmp_path / "out" / "samples.csv", delimiter=",")
    assert samples.shape == (7, 3) and np.isfinite(samples).all()
    vaekit("evaluate", ckpt, "--iw-samples", "5", "--out", tmp_path / "eval.json")
    assert json.loads((tmp_path / "eval.json").read_text())["num_examples"] == 50


# ------------------------------------------------------------------ bad input


def _fit_error(tmp_path: Path, *extra: str) -> str:
    with pytest.raises(SystemExit) as raised:
        vaekit(*fit_args(TINY, tmp_path / "run", "--trainer.max_steps", "2", *extra))
    return str(raised.value)


def test_missing_data_folder_names_it(tmp_path):
    message = _fit_error(tmp_path, "--data.root", str(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in message and "--data.root" in message


def test_unknown_config_key_is_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit):
        vaekit(*fit_args(TINY, tmp_path, "--model.init_args.no_such_option", "3"))
    assert "no_such_option" in capsys.readouterr().err


def _image_folder(root: Path, sizes: list[tuple[int, int]]) -> Path:
    for i, (h, w) in enumerate(sizes):
        folder = root / ("even" if i % 2 == 0 else "odd")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.random.default_rng(i).random((h, w)) * 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return root


def test_corrupt_image_is_named_or_skipped_and_counted(tmp_path):
    root = _image_folder(tmp_path / "imgs", [(8, 8)] * 40)
    good = (root / "even" / "000.png").read_bytes()
    (root / "odd" / "001.png").write_bytes(good[: len(good) // 2])  # truncated
    message = _fit_error(tmp_path, "--data.root", str(root), "--model.channels", "[8]")
    assert "001.png" in message and "skip_bad_files" in message
    with pytest.warns(UserWarning, match="skipped 1 bad file"):
        vaekit(*fit_args(TINY, tmp_path / "skip", "--data.root", str(root), "--model.channels", "[8]",
                         "--data.skip_bad_files", "true", "--trainer.max_steps", "2", "--samples.num", "0"))  # fmt: skip
    assert (tmp_path / "skip" / "checkpoints" / "last.ckpt").is_file()


def test_mixed_image_sizes_are_named_and_resizing_fixes_them(tmp_path):
    root = _image_folder(tmp_path / "imgs", [(8, 8)] * 20 + [(12, 10)] + [(8, 8)] * 19)
    message = _fit_error(tmp_path, "--data.root", str(root), "--model.channels", "[8]")
    assert "020.png" in message and "--data.image_size" in message
    vaekit(*fit_args(TINY, tmp_path / "ok", "--data.root", str(root), "--model.channels", "[8]",
                     "--data.image_size", "[8, 8]", "--trainer.max_steps", "2", "--samples.num", "0"))  # fmt: skip
    assert torch.load(tmp_path / "ok" / "checkpoints" / "last.ckpt", weights_only=True)["vaekit"]["spec"]["height"] == 8


def test_image_size_not_divisible_by_the_downsampling_is_explained(tmp_path):
    root = _image_folder(tmp_path / "imgs", [(10, 10)] * 20)
    message = _fit_error(tmp_path, "--data.root", str(root))
    assert "10x10" in message and "divisible by 4" in message


def test_truncated_idx_file_is_named(tmp_path):
    root = tmp_path / "mnist"
    root.mkdir()
    demo = Path(__file__).parents[1] / "vaekit" / "demo" / "image"
    for path in demo.glob("*.gz"):
        raw = gzip.decompress(path.read_bytes())
        if path.name.startswith("train-images"):
            raw = raw[:-100]
        (root / path.name).write_bytes(gzip.compress(raw))
    message = _fit_error(tmp_path, "--data.root", str(root))
    assert "train-images-idx3-ubyte.gz" in message and "truncated" in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such checkpoint"),
        (b"hello", "not a PyTorch checkpoint"),
        ({"state_dict": {}}, "not a vaekit checkpoint"),
    ],
)
def test_bad_checkpoints_get_a_clear_error(tmp_path, content, expected):
    path = tmp_path / "model.ckpt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(SystemExit, match=expected):
        vaekit("sample", path, "--out", tmp_path / "out")
    assert not (tmp_path / "out").exists(), "nothing is written when the input is bad"


def test_checkpoint_of_another_modality_is_refused_on_resume(image_ckpt, tmp_path):
    checkpoint = torch.load(image_ckpt, weights_only=True)
    checkpoint["vaekit"]["modality"] = "audio"
    other = tmp_path / "audio.ckpt"
    torch.save(checkpoint, other)
    with pytest.raises(SystemExit, match="holds a 'audio' model but this config trains a 'image' model"):
        vaekit(*fit_args(TINY, tmp_path / "run", "--ckpt_path", str(other)))


def test_atomic_write_gives_normal_file_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "out.txt") as tmp:
            tmp.write_text("done")
    finally:
        os.umask(mask)
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o644


def test_failed_write_leaves_neither_file_nor_temp(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert os.listdir(tmp_path) == []
