"""The everyday workflows: anomaly scoring, embeddings, a CLI that explains itself, training you can watch."""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import fit_args, install_plugin, vaekit, vaekit_subprocess
from vaekit.checkpoint import load_datamodule, load_model
from vaekit.cli.parser import _add_options
from vaekit.cli.session import Session
from vaekit.modalities.audio import AudioDataModule
from vaekit.modalities.image import ImageDataModule
from vaekit.modalities.text import TextDataModule, TextVAE
from vaekit.recipes import list_recipes, resolve_config
from vaekit.scoring import anomaly_score, auroc

TINY = "configs/image/tiny.yaml"
DEMO = Path(__file__).parents[1] / "vaekit" / "demo"


def _events(root: Path) -> dict[str, list[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = next(root.glob("lightning_logs/version_*"))
    events = EventAccumulator(str(folder), size_guidance={"images": 0, "audio": 0, "histograms": 0, "tensors": 0})
    events.Reload()
    return events.Tags()


# ------------------------------------------------------------------ anomaly detection


def test_label_filters_keep_or_drop_classes_for_training_only():
    kept = ImageDataModule(root="demo:image", labels=[0, 1])
    kept.setup("fit")
    assert set(kept.splits["train"]["label"].tolist()) == {0, 1}
    assert set(kept.splits["val"]["label"].tolist()) <= {0, 1}
    assert len(set(kept.splits["test"]["label"].tolist())) == 10, "the test split keeps every class"

    dropped = ImageDataModule(root="demo:image", exclude_labels=["9"])
    dropped.setup("fit")
    assert 9 not in dropped.splits["train"]["label"].tolist()
    everything = ImageDataModule(root="demo:image")
    everything.setup("fit")
    expected = int((everything.splits["train"]["label"] != 9).sum())
    assert len(dropped.splits["train"]["label"]) == expected

    with pytest.raises(ValueError, match=r"no label\(s\) \['11'\]"):
        ImageDataModule(root="demo:image", labels=[11]).setup("fit")


def test_label_filters_need_labels(tmp_path):
    with pytest.raises(ValueError, match="need labelled data"):
        TextDataModule(root="demo:text", labels=["a"]).setup("fit")


def test_fit_on_normal_classes_then_score_with_per_label_auroc(tmp_path, capsys):
    vaekit(*fit_args(TINY, tmp_path, "--data.exclude_labels", "[9]", "--trainer.max_epochs", "1", "--samples.num", "0"))
    vaekit(
        "score", tmp_path / "checkpoints" / "last.ckpt", "--normal", *map(str, range(9)), "--out", tmp_path / "s.csv"
    )
    printed = capsys.readouterr().out
    assert "normal labels" in printed and "label 9 vs normal:" in printed
    labels = {row["label"] for row in csv.DictReader((tmp_path / "s.csv").read_text().splitlines())}
    assert "9" in labels, "the test split still holds the excluded class"


def _image_folder(root: Path, images: np.ndarray) -> Path:
    folder = root / "test" / "odd"
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return root


def test_ood_root_is_scored_beside_the_test_split(image_ckpt, tmp_path, capsys):
    noise = np.random.default_rng(0).integers(0, 256, (40, 28, 28), dtype=np.uint8)
    ood = _image_folder(tmp_path / "noise", noise)
    vaekit("score", image_ckpt, "--ood-root", ood, "--out", tmp_path / "s.csv")
    rows = list(csv.DictReader((tmp_path / "s.csv").read_text().splitlines()))
    assert sum(r["set"] == "ood" for r in rows) == 40 and any(r["set"] == "in" for r in rows)
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("AUROC in-distribution")]
    assert float(printed[0].rsplit(" ", 1)[1]) > 0.95, "uniform noise is far from any digit"


def test_score_corrections():
    score = torch.tensor([10.0, 20.0, 30.0])
    assert torch.equal(anomaly_score(score, "typicality", typical=20.0), torch.tensor([10.0, 0.0, 10.0]))
    bits = torch.tensor([5.0, 5.0, 5.0])
    assert torch.allclose(anomaly_score(score, "complexity", complexity_bits=bits), score / math.log(2) - 5)
    assert auroc(torch.tensor([0.1, 0.2, 0.9]), torch.tensor([0, 0, 1])) == 1.0
    assert auroc(torch.tensor([0.1, 0.2]), torch.tensor([0, 0])) is None


def test_complexity_is_the_png_size(image_ckpt):
    model, _ = load_model(image_ckpt)
    blank = torch.zeros(1, 1, 28, 28)
    noise = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    bits = model.complexity_bits({"x": torch.cat([blank, noise])})
    assert bits[0] < 1000 and bits[1] > 784 * 8, bits  # a blank PNG is tiny; random bytes do not compress


def test_checkpoint_commands_need_only_the_split_they_read(image_ckpt, tmp_path):
    test_only = tmp_path / "mnist-test"
    test_only.mkdir()
    for path in (DEMO / "image").glob("t10k-*"):
        shutil.copy(path, test_only / path.name)
    vaekit("evaluate", image_ckpt, "--data-root", test_only, "--iw-samples", "2", "--out", tmp_path / "e.json")
    assert (tmp_path / "e.json").is_file()
    with pytest.raises(SystemExit) as raised:
        vaekit("evaluate", image_ckpt, "--data-root", tmp_path / "nowhere", "--out", tmp_path / "x.json")
    assert "--data-root" in str(raised.value) and "--data.root" not in str(raised.value)


def test_text_commands_read_a_folder_with_only_test_sentences(text_ckpt, tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "test.txt").write_text("the dog reads a book .\nthe cat sleeps .\n")
    vaekit("evaluate", text_ckpt, "--data-root", folder, "--iw-samples", "2", "--out", tmp_path / "e.json")
    assert json.loads((tmp_path / "e.json").read_text())["num_examples"] == 2


# ------------------------------------------------------------------ embeddings


@pytest.mark.parametrize("projection", ["pca", "tsne", "umap"])
def test_encode_projections(image_ckpt, tmp_path, projection):
    out = tmp_path / "z.npz"
    vaekit("encode", image_ckpt, "--out", out, "--plot", tmp_path / "z.png", "--projection", projection)
    arrays = np.load(out)
    assert arrays["projection"].shape == (len(arrays["mean"]), 2)
    assert np.isfinite(arrays["projection"]).all() and (tmp_path / "z.png").stat().st_size > 1000


# ------------------------------------------------------------------ a CLI that explains itself


@pytest.fixture(scope="module")
def text_ckpt(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("text")
    vaekit(*fit_args("configs/text/tiny.yaml", root, "--trainer.max_epochs", "2", "--samples.num", "0"))
    return root / "checkpoints" / "last.ckpt"


def test_generation_help_lists_the_model_flags(text_ckpt, capsys):
    with pytest.raises(SystemExit):
        vaekit("sample", text_ckpt, "--help")
    shown = " ".join(capsys.readouterr().out.split())
    assert "text options" in shown and "--strategy" in shown and "--top-p" in shown
    assert "sample within the nucleus of this probability mass (1.0)" in shown


def test_boolean_options_parse_false():
    @dataclass
    class Options:
        noise: bool = field(default=True, metadata={"help": "add noise"})

    parser = argparse.ArgumentParser()
    _add_options(parser, Options, "demo")
    assert parser.parse_args(["--noise", "false"]).noise is False
    assert parser.parse_args(["--noise", "true"]).noise is True
    with pytest.raises(SystemExit):
        parser.parse_args(["--noise", "maybe"])


def test_unused_options_and_bad_counts_are_rejected(text_ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit):
        vaekit("evaluate", text_ckpt, "--out", tmp_path / "e.json", "--strategy", "beam")
    assert "unrecognized arguments: --strategy beam" in capsys.readouterr().err
    for flag in ("0", "-3"):
        with pytest.raises(SystemExit):
            vaekit("sample", text_ckpt, "--num", flag, "--out", tmp_path / "s")
        assert "must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_options_reach_save_outputs(text_ckpt, tmp_path, monkeypatch):
    seen = []
    original = TextVAE.save_outputs

    def recording(self, data, out_dir, stem, nrow=None, **options):
        seen.append(options)
        return original(self, data, out_dir, stem, nrow, **options)

    monkeypatch.setattr(TextVAE, "save_outputs", recording)
    vaekit("sample", text_ckpt, "--num", "2", "--out", tmp_path / "s", "--strategy", "beam", "--beam-width", "2")
    assert seen[0]["strategy"] == "beam" and seen[0]["beam_width"] == 2


def test_text_reconstructions_are_deterministic_unless_asked(text_ckpt, tmp_path):
    def run(seed: int, *extra: str) -> str:
        out = tmp_path / f"r{seed}{len(extra)}"
        vaekit("reconstruct", text_ckpt, "--num", "8", "--seed", str(seed), "--out", out, *extra)
        return (out / "reconstructions.txt").read_text()

    assert run(1) == run(2)
    assert run(1, "--strategy", "sample") != run(2, "--strategy", "sample")


def test_audio_reconstruct_beyond_the_test_split_says_how_many(tmp_path):
    ckpt = tmp_path / "a"
    vaekit(*fit_args("configs/audio/tiny.yaml", ckpt, "--trainer.max_steps", "2", "--samples.num", "0"))
    with pytest.raises(SystemExit, match=r"the test split has \d+; pass --num \d+ or less"):
        vaekit("reconstruct", ckpt / "checkpoints" / "last.ckpt", "--num", "999", "--out", tmp_path / "r")


def test_speaker_recipe_on_other_data_names_the_flag():
    data = AudioDataModule(
        root="demo:audio", name_pattern=r"^(?P<label>\d+)_(?P<speaker>[^_]+)_\d+$", test_speakers=["nobody"]
    )
    with pytest.raises(ValueError, match=r"--data.test_speakers null"):
        data.setup("fit")


def test_plugins_ship_recipes(tmp_path, monkeypatch):
    install_plugin(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    recipes = {r.name: r for r in list_recipes()}
    assert "vector/rows" in recipes and "image/tiny" in recipes
    assert Path(resolve_config("vector/rows")) == recipes["vector/rows"].path


def test_evaluate_batches_follow_the_iw_chunk_so_the_bar_moves(image_ckpt):
    model, record = load_model(image_ckpt)
    datamodule = load_datamodule(model, record)
    args = argparse.Namespace(iw_samples=100, split="test", batch_size=None, max_examples=None, device="cpu")
    Session(model, record, args, {}, Path("unused"), datamodule).evaluation_trainer(datamodule, "test")
    datamodule.setup("test")
    assert datamodule.hparams.eval_batch_size == model.hparams.iw_max_rows // 100
    size = len(datamodule.splits["test"])
    assert len(datamodule.test_dataloader()) == math.ceil(size / datamodule.hparams.eval_batch_size)


# ------------------------------------------------------------------ training you can watch


def test_fit_starts_without_noise(tmp_path):
    proc = vaekit_subprocess(*fit_args(TINY, tmp_path, "--trainer.max_steps", "2", "--samples.num", "0"))
    output = proc.stdout + proc.stderr
    for noise in ("litlogger", "FLOPs", "args parameter is intended", "LeafSpec", "Warning"):
        assert noise not in output, f"{noise!r} in:\n{output}"


@pytest.mark.parametrize(
    ("config", "kind", "tags"),
    [
        (TINY, "images", {"samples/prior", "samples/val_inputs", "samples/val_reconstructions"}),
        ("configs/audio/tiny.yaml", "audio", {"samples/prior/0", "samples/val_reconstructions/0"}),
        (
            "configs/text/tiny.yaml",
            "tensors",
            {"samples/prior/text_summary", "samples/val_reconstructions/text_summary"},
        ),
    ],
)
def test_tensorboard_shows_samples_and_kl_per_dim(config, kind, tags, tmp_path):
    extra = ("--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1", "--samples.num", "0")
    vaekit(*fit_args(config, tmp_path, *extra))
    found = _events(tmp_path)
    assert tags <= set(found[kind]), found[kind]
    assert "val/kl_per_dim" in found["histograms"]
    assert next(tmp_path.glob("lightning_logs/version_*/metrics.csv")).is_file(), "CSV stays beside TensorBoard"


def test_a_used_root_is_refused_and_a_resume_keeps_one_best(tmp_path):
    common = ("--trainer.limit_train_batches", "5", "--samples.num", "0")
    vaekit(*fit_args(TINY, tmp_path, "--trainer.max_epochs", "1", *common))
    with pytest.raises(SystemExit, match="already holds checkpoints of an earlier run"):
        vaekit(*fit_args(TINY, tmp_path, "--trainer.max_epochs", "1", *common))
    last = tmp_path / "checkpoints" / "last.ckpt"
    vaekit(*fit_args(TINY, tmp_path, "--trainer.max_epochs", "4", "--ckpt_path", str(last), *common))
    bests = sorted(p.name for p in (tmp_path / "checkpoints").glob("best-*.ckpt"))
    assert len(bests) == 1, bests
    assert bests[0] != "best-000-000005.ckpt", "training improved after the resume, so the old best was replaced"


def test_end_of_fit_samples_hold_inputs_beside_reconstructions(image_ckpt):
    samples = image_ckpt.parent.parent / "samples"
    inputs, reconstructions = sorted(samples.glob("inputs_*.png")), sorted(samples.glob("reconstructions_*.png"))
    assert inputs and len(inputs) == len(reconstructions)
    assert (samples / "inputs.png").is_file() and (samples / "prior.png").is_file()
