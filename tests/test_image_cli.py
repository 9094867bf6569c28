"""The image recipe and every command of the CLI, end to end from the checkpoint alone."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import vaekit
from vaekit.checkpoint import load_datamodule, load_model
from vaekit.modalities.image import ImageDataModule, make_grid


def _png(path):
    with Image.open(path) as image:
        return np.asarray(image)


def test_fit_writes_last_checkpoint_and_samples(image_ckpt):
    assert image_ckpt.is_file()
    checkpoint = torch.load(image_ckpt, weights_only=True)
    assert checkpoint["vaekit"]["modality"] == "image"
    assert checkpoint["vaekit"]["spec"]["height"] == 28
    samples = image_ckpt.parent.parent / "samples"
    assert (samples / "prior.png").is_file() and (samples / "reconstructions.png").is_file()


def test_sample_writes_a_grid_and_single_pngs(image_ckpt, tmp_path):
    vaekit("sample", image_ckpt, "--num", 6, "--out", tmp_path, "--seed", 3)
    singles = sorted(tmp_path.glob("samples_*.png"))
    assert len(singles) == 6
    assert _png(singles[0]).shape == (28, 28)
    grid = _png(tmp_path / "samples.png")
    assert grid.shape == (2 + 2 * 30, 2 + 3 * 30)  # 2 rows x 3 columns of 28 + 2 padding
    vaekit("sample", image_ckpt, "--num", 6, "--out", tmp_path / "again", "--seed", 3)
    again = _png(tmp_path / "again" / "samples_0000.png")
    assert np.array_equal(_png(singles[0]), again), "the same seed must give the same samples"


def test_reconstruct_test_split_and_given_files(image_ckpt, tmp_path):
    vaekit("reconstruct", image_ckpt, "--num", 4, "--out", tmp_path / "split")
    assert len(list((tmp_path / "split").glob("reconstructions_*.png"))) == 4
    assert len(list((tmp_path / "split").glob("inputs_*.png"))) == 4
    inputs = [tmp_path / "split" / "inputs_0000.png", tmp_path / "split" / "inputs_0001.png"]
    vaekit("reconstruct", image_ckpt, "--input", *inputs, "--out", tmp_path / "given")
    assert len(list((tmp_path / "given").glob("reconstructions_*.png"))) == 2


def test_interpolate_ends_match_reconstructions(image_ckpt, tmp_path):
    vaekit("interpolate", image_ckpt, "--steps", 5, "--out", tmp_path / "i")
    vaekit("reconstruct", image_ckpt, "--num", 2, "--out", tmp_path / "r")
    path = [_png(tmp_path / "i" / f"interpolation_{k:04d}.png").astype(int) for k in range(5)]
    ends = [_png(tmp_path / "r" / f"reconstructions_{k:04d}.png").astype(int) for k in range(2)]
    assert np.abs(path[0] - ends[0]).max() <= 1 and np.abs(path[-1] - ends[1]).max() <= 1
    assert np.abs(path[2] - path[0]).mean() > 0  # the middle differs from the ends


def test_interpolate_between_given_files(image_ckpt, tmp_path):
    vaekit("sample", image_ckpt, "--num", 2, "--out", tmp_path / "s")
    a, b = tmp_path / "s" / "samples_0000.png", tmp_path / "s" / "samples_0001.png"
    vaekit("interpolate", image_ckpt, "--a", a, "--b", b, "--steps", 4, "--out", tmp_path / "i")
    assert len(list((tmp_path / "i").glob("interpolation_*.png"))) == 4


def test_traverse_sweeps_the_requested_dims(image_ckpt, tmp_path):
    vaekit("traverse", image_ckpt, "--dims", 0, 3, "--steps", 5, "--span", 2.0, "--out", tmp_path)
    assert len(list(tmp_path.glob("traversal_*.png"))) == 10
    assert json.loads((tmp_path / "traversal.json").read_text()) == {"dims": [0, 3], "span": 2.0, "steps": 5}
    with pytest.raises(SystemExit, match="out of range"):
        vaekit("traverse", image_ckpt, "--dims", 99, "--out", tmp_path / "bad")
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad*")), "a failed command writes nothing"


def test_evaluate_reports_the_contract_keys_in_nats(image_ckpt, tmp_path):
    out = tmp_path / "eval.json"
    vaekit("evaluate", image_ckpt, "--split", "test", "--iw-samples", 20, "--out", out)
    result = json.loads(out.read_text())
    for key in ("elbo", "rec", "kl", "nll", "active_units", "mutual_info", "bits_per_dim"):
        assert key in result and math.isfinite(result[key]), key
    assert result["num_examples"] == 500
    assert result["elbo"] == pytest.approx(-(result["rec"] + result["kl"]), rel=1e-6)
    assert result["nll"] <= -result["elbo"]
    assert result["bits_per_dim"] == pytest.approx(result["nll"] / (784 * math.log(2)), rel=1e-6)
    assert 0 <= result["active_units"] <= 8 and result["kl"] > 0


def test_encode_writes_embeddings_and_a_plot(image_ckpt, tmp_path):
    vaekit("encode", image_ckpt, "--split", "val", "--out", tmp_path / "z.npz", "--plot", tmp_path / "z.png")
    data = np.load(tmp_path / "z.npz")
    assert data["mean"].shape == (200, 8) and data["logvar"].shape == (200, 8)
    assert set(np.unique(data["label"])) <= set(range(10)) and len(np.unique(data["label"])) > 5
    assert _png(tmp_path / "z.png").ndim == 3


def test_score_writes_one_row_per_example_and_prints_auroc(image_ckpt, tmp_path, capsys):
    vaekit("score", image_ckpt, "--out", tmp_path / "s.csv", "--normal", *map(str, range(9)))
    with open(tmp_path / "s.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 500 and all(float(r["neg_elbo"]) > 0 for r in rows)
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("AUROC"))
    assert 0.0 <= float(line.rsplit(" ", 1)[1]) <= 1.0


def test_checkpoint_alone_is_enough(image_ckpt):
    """Model and data module come back from the .ckpt without the YAML."""
    model, checkpoint = load_model(image_ckpt)
    datamodule = load_datamodule(model, checkpoint)
    assert isinstance(datamodule, ImageDataModule) and datamodule.spec == model.spec
    assert model.hparams.latent_dim == 8 and not model.training


def test_make_grid_layout():
    images = torch.arange(3, dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 1, 2, 2).contiguous()
    grid = make_grid(images, nrow=2, pad=1)
    assert grid.shape == (1, 7, 7)
    assert grid[0, 1, 1] == 0 and grid[0, 1, 4] == 1 and grid[0, 4, 1] == 2 and grid[0, 4, 4] == 255


def test_dynamic_binarisation_is_fresh_for_training_and_fixed_for_eval(tmp_path):
    datamodule = ImageDataModule(root="demo:image", batch_size=16)
    datamodule.setup("fit")
    size = len(datamodule.splits["test"])
    test_x = datamodule.examples("test", range(size))["x"]
    assert set(test_x.unique().tolist()) == {0, 255}, "eval splits are binarised"
    alone = torch.cat([datamodule.examples("test", [i])["x"] for i in (5, 0, 3)])
    assert torch.equal(alone, test_x[[5, 0, 3]]), "each image's draw is fixed, whatever its batch"
    grey_test = datamodule.splits["test"]["x"]
    assert (test_x.float().mean() - grey_test.float().mean()).abs() < 5, "a draw of p = grey / 255 keeps the mean"
    grey = {"x": datamodule.splits["train"]["x"][:16]}
    assert len(grey["x"].unique()) > 2, "training images stay grey until batch time"

    class _Training:
        training = True

    datamodule.trainer = _Training()
    first = datamodule.on_after_batch_transfer(grey, 0)["x"]
    second = datamodule.on_after_batch_transfer(grey, 0)["x"]
    assert set(first.unique().tolist()) == {0.0, 1.0} and not torch.equal(first, second)


def test_colour_images_with_a_gaussian_likelihood(tmp_path):
    root = tmp_path / "rgb"
    rng = np.random.default_rng(0)
    for i in range(24):
        folder = root / ("red" if i % 2 else "blue")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (rng.random((16, 16, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels, mode="RGB").save(folder / f"{i:02d}.png")
    run = tmp_path / "run"
    vaekit(
        "fit", "--config", "configs/image/tiny.yaml", "--trainer.default_root_dir", run,
        "--trainer.enable_progress_bar", "false", "--trainer.max_steps", "3",
        "--data.root", root, "--data.binarize", "false", "--model.likelihood", "gaussian",
        "--model.channels", "[8, 8]", "--samples.num", "0",
    )  # fmt: skip
    ckpt = run / "checkpoints" / "last.ckpt"
    spec = torch.load(ckpt, weights_only=True)["vaekit"]["spec"]
    assert (spec["channels"], spec["height"], spec["label_names"]) == (3, 16, ["blue", "red"])
    vaekit("sample", ckpt, "--num", 2, "--out", tmp_path / "out")
    assert _png(tmp_path / "out" / "samples_0000.png").shape == (16, 16, 3)


def test_hub_dataset_ids_reach_datasets_and_fail_clearly_offline():
    # offline through conftest's HF_HUB_OFFLINE: the error must be the offline one, not a network attempt's
    datamodule = ImageDataModule(root="someone/no-such-dataset")
    assert datamodule.source.hub_id == "someone/no-such-dataset"
    with pytest.raises(FileNotFoundError, match=r"neither a local folder nor a loadable hub dataset.*OfflineMode"):
        datamodule.setup("fit")
