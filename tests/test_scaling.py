"""Past one machine: data on disk (the Arrow cache), mixed precision, and two nodes under torchrun."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from tests.conftest import TESTS, fit_args, vaekit
from vaekit.checkpoint import load_model
from vaekit.core.data import VAEDataModule
from vaekit.core.storage import ArrowSplit, TensorSplit
from vaekit.modalities.audio import AudioDataModule
from vaekit.modalities.image import ImageDataModule, read_idx
from vaekit.modalities.text import TextDataModule

REPO = TESTS.parent
DEMO = REPO / "vaekit" / "demo"
TINY = {"image": "configs/image/tiny.yaml", "audio": "configs/audio/tiny.yaml", "text": "configs/text/tiny.yaml"}


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("VAEKIT_CACHE", str(cache))
    return cache


def png_folder(root: Path, per_class: int = 6) -> Path:
    """A small imagefolder (root/<digit>/*.png) cut from the bundled MNIST subset."""
    images = read_idx(DEMO / "image", "train-images-idx3-ubyte", 2051)
    labels = read_idx(DEMO / "image", "train-labels-idx1-ubyte", 2049)
    for digit in range(3):
        folder = root / str(digit)
        folder.mkdir(parents=True)
        for i, index in enumerate(np.flatnonzero(labels == digit)[:per_class]):
            Image.fromarray(images[index]).save(folder / f"{i}.png")
    return root


def data_modules(kind: str, tmp_path: Path) -> list[VAEDataModule]:
    """The same data twice: held in memory, and read from the cache per batch."""
    if kind == "image-folder":
        root = png_folder(tmp_path / "pngs")
        return [ImageDataModule(str(root), in_memory=m, batch_size=5) for m in (True, False)]
    if kind == "mnist":
        return [ImageDataModule("demo:image", in_memory=m, batch_size=50) for m in (True, False)]
    if kind == "audio":
        return [AudioDataModule("demo:audio", in_memory=m, batch_size=8, name_pattern=r"(?P<label>\d)_(?P<speaker>[a-z]+)_\d+") for m in (True, False)]  # fmt: skip
    return [TextDataModule("demo:text", in_memory=m, batch_size=16, max_length=12) for m in (True, False)]


@pytest.mark.parametrize("kind", ["image-folder", "mnist", "audio", "text"])
def test_on_disk_batches_equal_in_memory_batches(kind: str, tmp_path: Path) -> None:
    memory, disk = data_modules(kind, tmp_path)
    for datamodule in (memory, disk):
        datamodule.setup("fit")
    assert memory.spec == disk.spec
    for name in ("train", "val", "test"):
        assert isinstance(memory.splits[name], TensorSplit) and isinstance(disk.splits[name], ArrowSplit)
        assert len(memory.splits[name]) == len(disk.splits[name]) > 0
        loaders = memory.loader(name), disk.loader(name)
        pairs = list(zip(*loaders, strict=True))
        assert len(pairs) == len(loaders[0])
        for left, right in pairs:
            assert left.keys() == right.keys()
            for key in left:
                assert torch.equal(left[key], right[key]), (name, key)


def test_in_memory_is_chosen_by_size_and_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    small = ImageDataModule("demo:image")
    with caplog.at_level("INFO"):
        small.setup("fit")
    assert isinstance(small.splits["train"], TensorSplit)
    assert "held in memory (--data.in_memory false reads it from disk per batch)" in caplog.text
    monkeypatch.setattr(VAEDataModule, "IN_MEMORY_BYTES", 1000)
    caplog.clear()
    large = ImageDataModule("demo:image")
    with caplog.at_level("INFO"):
        large.setup("fit")
    assert isinstance(large.splits["train"], ArrowSplit)
    assert "read from disk per batch" in caplog.text


def test_the_cache_is_reused_and_follows_changed_files(tmp_path: Path, _own_cache: Path, monkeypatch) -> None:
    root = png_folder(tmp_path / "pngs")
    first = ImageDataModule(str(root), in_memory=False)
    first.setup("fit")
    folders = sorted((_own_cache / "ImageDataModule").iterdir())
    assert [f.name.split("-")[0] for f in folders] == ["train"]

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the cache holds these files")

    with monkeypatch.context() as patch:
        patch.setattr(ImageDataModule, "_decode_one", no_decoding)
        again = ImageDataModule(str(root), in_memory=False)
        again.setup("fit")
    assert torch.equal(again.splits["train"]["x"], first.splits["train"]["x"])

    Image.fromarray(np.zeros((28, 28), np.uint8)).save(root / "0" / "0.png")  # an edited file
    os.utime(root / "0" / "0.png", ns=(1, 1))
    edited = ImageDataModule(str(root), in_memory=False)
    edited.setup("fit")
    assert len(list((_own_cache / "ImageDataModule").iterdir())) == 2, "an edited file makes a new cache"


def test_a_failed_decode_leaves_no_cache(tmp_path: Path, _own_cache: Path) -> None:
    root = png_folder(tmp_path / "pngs")
    (root / "2" / "3.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"3\.png: not a readable image"):
        ImageDataModule(str(root)).setup("fit")
    assert not list((_own_cache / "ImageDataModule").iterdir()), "no half-written cache is left"
    skipping = ImageDataModule(str(root), skip_bad_files=True)
    with pytest.warns(UserWarning, match="skipped 1 bad file"):
        skipping.setup("fit")
    cached = ImageDataModule(str(root), skip_bad_files=True)
    with pytest.warns(UserWarning, match="skipped 1 bad file"):  # the cache remembers what it left out
        cached.setup("fit")


def test_an_on_disk_split_travels_to_workers_as_its_path(tmp_path: Path) -> None:
    datamodule = ImageDataModule("demo:image", in_memory=False, num_workers=2, batch_size=64)
    datamodule.setup("fit")
    split = datamodule.splits["train"]
    assert len(pickle.dumps(split)) < len(split) * 16, "workers must map the file, not receive a copy"
    rows = torch.cat([batch["row"] for batch in datamodule.train_dataloader()])
    assert sorted(rows.tolist()) == sorted(split["row"].tolist()), "every training example once per epoch"


def test_a_plugin_inherits_the_on_disk_path(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("vecvae_for_scaling", TESTS / "plugin_example" / "vecvae.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    root = tmp_path / "rows"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name, count in (("train", 40), ("test", 10)):
        np.savetxt(root / f"{name}.csv", rng.normal(size=(count, 3)), delimiter=",")
    datamodule = module.VectorData(str(root), in_memory=False)
    datamodule.setup("fit")
    assert isinstance(datamodule.splits["train"], ArrowSplit) and datamodule.spec.features == 3
    assert len(datamodule.splits["train"]) + len(datamodule.splits["val"]) == 40


# ------------------------------------------------------------------ mixed precision


@pytest.mark.parametrize("modality", sorted(TINY))
def test_the_bound_stays_float32_under_bf16_autocast(modality: str, tmp_path: Path) -> None:
    datamodule, model = _tiny(modality, tmp_path)
    batch = datamodule.on_after_batch_transfer(datamodule.examples("val", range(8)), 0)
    torch.manual_seed(0)
    exact = model.elbo_terms(batch)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model.elbo_terms(batch)
        nll = model.nll(batch, 4)
    for value in (mixed.rec, mixed.kl, mixed.loss, nll):
        assert value.dtype == torch.float32
    # The networks run in bf16 (about 3 significant digits); the sums over dimensions must not lose more.
    assert torch.allclose(mixed.rec, exact.rec, rtol=0.03)
    assert torch.allclose(mixed.kl, exact.kl, rtol=0.05, atol=0.05)


def _tiny(modality: str, tmp_path: Path) -> tuple[VAEDataModule, pl.LightningModule]:
    from vaekit.cli.fit import build_cli

    cli = build_cli(["--config", TINY[modality], "--trainer.default_root_dir", str(tmp_path)], run=False)
    cli.datamodule.setup("fit")
    cli.model.attach_spec(cli.datamodule.spec)
    return cli.datamodule, cli.model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("modality", sorted(TINY))
def test_bf16_mixed_training_for_every_modality(modality: str, tmp_path: Path) -> None:
    vaekit(*fit_args(TINY[modality], tmp_path, "--trainer.precision", "bf16-mixed", "--trainer.max_epochs", "2",
                     "--trainer.limit_train_batches", "6", "--trainer.log_every_n_steps", "2", "--samples.num", "2",
                     "--trainer.check_val_every_n_epoch", "1"))  # fmt: skip
    metrics = next(tmp_path.glob("lightning_logs/version_*/metrics.csv"))
    logged = {}
    with open(metrics) as handle:
        for row in csv.DictReader(handle):
            logged.update({k: float(v) for k, v in row.items() if v})
    assert {"train/loss", "val/elbo", "val/kl"} <= logged.keys()
    assert all(math.isfinite(v) for v in logged.values()), logged
    model, _ = load_model(tmp_path / "checkpoints" / "last.ckpt")
    assert all(p.dtype == torch.float32 for p in model.parameters()), "bf16-mixed keeps float32 weights"


# ------------------------------------------------------------------ many nodes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _last_logged(metrics_csv: Path) -> dict[str, float]:
    with open(metrics_csv) as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("val/elbo")]
    return {k: float(v) for k, v in rows[-1].items() if v}


@pytest.mark.slow
def test_two_nodes_under_torchrun_match_one_process(tmp_path: Path) -> None:
    """Two "nodes" of one process each on localhost (gloo), each in its own working directory, reading the
    training data from the on-disk cache: rank 0 alone writes, and the reduced metrics match one process."""
    port = _free_port()
    config = str(REPO / TINY["image"])
    run = fit_args(config, Path("run"), "--trainer.max_epochs", "2", "--samples.num", "4", "--data.in_memory", "false")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    nodes = []
    for rank in (0, 1):
        cwd = tmp_path / f"node{rank}"
        cwd.mkdir()
        launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                  "--node_rank", str(rank), "--master_addr", "127.0.0.1", "--master_port", str(port),
                  "-m", "vaekit.cli", *run,
                  "--trainer.num_nodes", "2", "--trainer.devices", "1", "--trainer.accelerator", "cpu",
                  "--trainer.strategy", "ddp"]  # fmt: skip
        nodes.append(
            subprocess.Popen(launch, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    for node, output in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, output[-4000:]

    written = tmp_path / "node0" / "run"
    assert (written / "checkpoints" / "last.ckpt").is_file() and list((written / "samples").glob("*.png"))
    assert not (tmp_path / "node1" / "run").exists(), "only rank 0 writes checkpoints, samples and logs"

    # The logged validation figures are reduced over both nodes: one process validating the same weights agrees.
    logged = _last_logged(next(written.glob("lightning_logs/version_*/metrics.csv")))
    model, record = load_model(written / "checkpoints" / "last.ckpt")
    from vaekit.checkpoint import load_datamodule

    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    single = trainer.validate(model, datamodule=load_datamodule(model, record), verbose=False)[0]
    assert logged["val/kl"] == pytest.approx(single["val/kl"], rel=1e-4)
    assert logged["val/active_units"] == single["val/active_units"]

    # Trained on one process with the same global batch, the model ends up equally good (within noise).
    one = tmp_path / "one"
    vaekit(*fit_args(config, one, "--trainer.max_epochs", "2", "--samples.num", "0", "--data.batch_size", "128"))
    alone = _last_logged(next(one.glob("lightning_logs/version_*/metrics.csv")))
    assert logged["val/elbo"] == pytest.approx(alone["val/elbo"], rel=0.02), (logged["val/elbo"], alone["val/elbo"])


# ------------------------------------------------------------------ streaming


def _digits_hub() -> datasets.DatasetDict:
    """A hub-like image dataset (train/validation/test) made locally from the bundled digits."""

    images = read_idx(DEMO / "image", "train-images-idx3-ubyte", 2051)
    labels = read_idx(DEMO / "image", "train-labels-idx1-ubyte", 2049)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list("0123456789"))})

    def split(rows: range) -> datasets.Dataset:
        data = {"image": [Image.fromarray(images[i]) for i in rows], "label": [int(labels[i]) for i in rows]}
        return datasets.Dataset.from_dict(data, features=features)

    return datasets.DatasetDict({"train": split(range(120)), "validation": split(range(120, 150)), "test": split(range(150, 180))})  # fmt: skip


def _as_hub(monkeypatch: pytest.MonkeyPatch, hub: datasets.DatasetDict) -> None:
    """`load_hub_dataset` answering as the hub would: the downloaded dataset, or (streaming) an iterable one."""

    streamed = datasets.IterableDatasetDict({k: v.to_iterable_dataset(num_shards=2) for k, v in hub.items()})
    monkeypatch.setattr(
        "vaekit.core.data.load_hub_dataset", lambda hub_id, streaming=False: streamed if streaming else hub
    )


def test_a_streamed_hub_dataset_matches_the_downloaded_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vaekit.core.storage import StreamSplit

    _as_hub(monkeypatch, _digits_hub())
    downloaded = ImageDataModule("someone/digits", batch_size=32)
    downloaded.setup("fit")
    streamed = ImageDataModule("someone/digits", batch_size=32, streaming=True)
    streamed.setup("fit")
    assert isinstance(streamed.splits["train"], StreamSplit) and streamed.spec == downloaded.spec
    epochs = [torch.cat([b["label"] for b in streamed.train_dataloader()]) for _ in range(2)]
    expected = sorted(downloaded.splits["train"]["label"].tolist())
    assert sorted(epochs[0].tolist()) == sorted(epochs[1].tolist()) == expected, "every example once per epoch"
    assert not torch.equal(epochs[0], epochs[1]), "the shuffle buffer is reseeded every epoch"
    val = [b for b in streamed.val_dataloader()]
    assert torch.equal(torch.cat([b["x"] for b in val]), downloaded.examples("val", range(30))["x"])
    with pytest.raises(ValueError, match="local folder"):
        ImageDataModule("demo:image", streaming=True)


def test_streamed_text_and_audio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = (DEMO / "text" / "train.txt").read_text().splitlines()[:200]
    hub = datasets.DatasetDict({name: datasets.Dataset.from_dict({"text": lines[i::3]}) for i, name in enumerate(("train", "validation", "test"))})  # fmt: skip
    _as_hub(monkeypatch, hub)
    text = TextDataModule("someone/sentences", streaming=True, batch_size=16, max_length=12)
    text.setup("fit")
    batch = next(iter(text.train_dataloader()))
    assert (
        batch["x"].shape[1] == int(batch["lengths"].max()) <= 14
        and (batch["x"][:, 0] == text.tokenizer.bos_token_id).all()
    )

    files = sorted((DEMO / "audio").glob("*_0.flac"))
    columns = {"audio": datasets.Audio(), "label": datasets.ClassLabel(names=list("0123456789"))}

    def split(paths: list[Path]) -> datasets.Dataset:
        rows = {"audio": [{"bytes": p.read_bytes(), "path": p.name} for p in paths], "label": [int(p.name[0]) for p in paths]}  # fmt: skip
        return datasets.Dataset.from_dict(rows).cast(datasets.Features(columns))

    _as_hub(monkeypatch, datasets.DatasetDict({"train": split(files[::2]), "validation": split(files[1::4]), "test": split(files[3::4])}))  # fmt: skip
    audio = AudioDataModule("someone/spoken", streaming=True, batch_size=4)
    audio.setup("fit")
    seen = torch.cat([b["label"] for b in audio.train_dataloader()])
    assert sorted(seen.tolist()) == sorted(int(p.name[0]) for p in files[::2])
    assert audio.spec.label_names == list("0123456789")


def test_fit_streams_a_hub_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _as_hub(monkeypatch, _digits_hub())
    vaekit(*fit_args(TINY["image"], tmp_path, "--data.root", "someone/digits", "--data.streaming", "true",
                     "--trainer.max_epochs", "2", "--samples.num", "4"))  # fmt: skip
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file() and list((tmp_path / "samples").glob("*.png"))
    logged = _last_logged(next(tmp_path.glob("lightning_logs/version_*/metrics.csv")))
    assert math.isfinite(logged["val/elbo"])


def test_each_rank_streams_its_own_share(monkeypatch: pytest.MonkeyPatch) -> None:
    _as_hub(monkeypatch, _digits_hub())
    shares = []
    for rank in (0, 1):
        datamodule = ImageDataModule("someone/digits", streaming=True, batch_size=16)
        datamodule.setup("fit")
        with monkeypatch.context() as patch:  # what torch.distributed says inside a two-process job
            patch.setattr(torch.distributed, "is_initialized", lambda: True)
            patch.setattr(torch.distributed, "get_rank", lambda rank=rank: rank)
            patch.setattr(torch.distributed, "get_world_size", lambda: 2)
            shares.append(torch.cat([b["x"].flatten(1) for b in datamodule.val_dataloader()]))
    assert len(shares[0]) + len(shares[1]) == 30 and abs(len(shares[0]) - len(shares[1])) <= 1
    overlap = (shares[0][:, None] == shares[1][None]).all(-1).any()
    assert not overlap, "no validation example is read by both ranks"


def test_checkpoint_commands_read_on_disk_data(tmp_path: Path) -> None:
    vaekit(*fit_args(TINY["image"], tmp_path / "run", "--data.in_memory", "false", "--trainer.max_epochs", "1",
                     "--samples.num", "0"))  # fmt: skip
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    vaekit(
        "evaluate", ckpt, "--split", "test", "--iw-samples", "2", "--max-examples", "100", "--out", tmp_path / "e.json"
    )
    vaekit("encode", ckpt, "--split", "test", "--out", tmp_path / "z.npz")
    vaekit("reconstruct", ckpt, "--num", "4", "--out", tmp_path / "rec")
    _, record = load_model(ckpt)
    assert record.data_args["in_memory"] is False
    test = ImageDataModule("demo:image")
    test.setup("test")
    assert len(np.load(tmp_path / "z.npz")["mean"]) == len(test.splits["test"])
    assert json.loads((tmp_path / "e.json").read_text())["nll"] > 0
