"""The GPU's fast paths, run on the CPU: data held on the device and batched there, compiled networks, the
fused optimiser. Each must give what the plain path gives."""

from __future__ import annotations

import functools

import pytest
import torch
from torch.utils.data import DataLoader

from tests.conftest import fit_args
from vaekit.cli.fit import build_cli
from vaekit.core.resident import DeviceBatches
from vaekit.core.storage import ROW, TensorSplit

RECIPES = ["image/tiny", "audio/tiny", "text/tiny", "tabular/tiny"]


def cli_of(config: str, tmp_path, *extra: str):
    return build_cli(fit_args(config, tmp_path, *extra)[1:], run=False)  # without the subcommand


def datamodule_of(recipe: str, tmp_path, *extra: str):
    cli = cli_of(f"configs/{recipe}.yaml", tmp_path, *extra)
    cli.datamodule.setup("fit")
    return cli


@pytest.mark.parametrize("recipe", RECIPES)
def test_device_batches_are_the_loaders_batches(recipe, tmp_path):
    """Given the same indices, batches gathered from the device equal the DataLoader's, key by key."""
    dm = datamodule_of(recipe, tmp_path).datamodule
    indices = [list(b) for b in dm.batch_indices("train", shuffle=True)]
    collate = functools.partial(dm.collate, split="train")
    loader = DataLoader(dm.split("train"), batch_sampler=indices, collate_fn=collate)
    resident = DeviceBatches(dm.split("train"), torch.device("cpu"), indices, collate, dm.HOST_COLUMNS)
    assert len(resident) == len(loader) == len(indices)
    for ours, theirs in zip(resident, loader, strict=True):
        assert set(theirs) <= set(ours)
        for key, value in theirs.items():  # tables hold NaN for missing cells
            torch.testing.assert_close(ours[key], value, rtol=0, atol=0, equal_nan=True, msg=key)


@pytest.mark.parametrize("recipe", RECIPES)
def test_a_training_epoch_on_the_device_reads_no_device_value(recipe, tmp_path):
    """Gathered and collated on the meta device, which holds shapes but no values: reading one would raise.
    So batching on a GPU never copies a value back; only the host copies (text lengths) are read."""
    dm = datamodule_of(recipe, tmp_path).datamodule
    train = dm.split("train")
    sampler = dm.batch_indices("train", shuffle=True)
    collate = functools.partial(dm.collate, split="train")
    resident = DeviceBatches(train, torch.device("meta"), sampler, collate, dm.HOST_COLUMNS)
    rows = 0
    for batch in resident:
        assert batch["x"].device.type == "meta"
        assert all(value.device.type == "cpu" for key, value in batch.items() if key.startswith("host_"))
        rows += len(batch[ROW])
    assert rows == len(train)


def test_each_process_takes_its_share_of_the_batches():
    """Under several processes each takes every world-th batch, as many as the others (the list wraps)."""
    split = TensorSplit({"x": torch.arange(10.0)})
    batches = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    taken = [
        [b["x"].tolist() for b in DeviceBatches(split, torch.device("cpu"), batches, dict, rank=r, world=2)]
        for r in range(2)
    ]
    assert taken == [[[0, 1], [4, 5], [8, 9]], [[2, 3], [6, 7], [0, 1]]]


def test_on_device_fit_trains_and_says_so(tmp_path, caplog):
    cli = cli_of("configs/image/tiny.yaml", tmp_path, "--trainer.max_epochs", "1", "--data.on_device", "true",
                 "--samples.num", "0")  # fmt: skip
    with caplog.at_level("INFO"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == len(cli.trainer.train_dataloader) > 0
    assert isinstance(cli.trainer.train_dataloader, DeviceBatches)
    assert isinstance(cli.trainer.val_dataloaders, DeviceBatches)
    cli.datamodule.trainer = None  # outside training (a command, a user's own loop): DataLoaders again
    assert isinstance(cli.datamodule.loader("train", shuffle=True), DataLoader)
    assert "batched there with no loader workers" in caplog.text
    assert torch.isfinite(cli.trainer.callback_metrics["val/elbo"])


def test_on_device_is_refused_where_the_collate_runs_on_the_host(tmp_path):
    with pytest.raises(ValueError, match=r"collate runs on the host only.*leave --data.on_device unset"):
        cli_of("configs/multimodal/tiny.yaml", tmp_path, "--data.on_device", "true")


def steps_from(cli, weights: dict[str, torch.Tensor], steps: int = 2) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Losses of ``steps`` optimiser steps on one batch from ``weights``, with the same posterior draws, and the
    weights after."""
    model = cli.model
    model.load_state_dict(weights)
    batch = cli.datamodule.on_after_batch_transfer(next(iter(cli.datamodule.loader("val"))), 0)
    optimizer = model.configure_optimizers()
    losses = []
    for step in range(steps):
        torch.manual_seed(step)
        loss = model.bound_terms(batch, model.objective).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture
def image_model(tmp_path):
    cli = datamodule_of("image/tiny", tmp_path)
    cli.model.attach_spec(cli.datamodule.spec)
    return cli, {k: v.clone() for k, v in cli.model.state_dict().items()}


def test_compiled_networks_give_the_eager_losses(image_model):
    cli, initial = image_model
    eager, _ = steps_from(cli, initial)
    cli.model.compile_networks(None)
    compiled, after = steps_from(cli, initial)
    assert compiled == pytest.approx(eager, rel=1e-4)
    assert set(after) == set(initial)  # compiled in place: the weights keep their names, checkpoints load


def test_the_fused_optimiser_takes_the_same_steps(image_model):
    cli, initial = image_model
    losses, weights = steps_from(cli, initial, steps=3)
    cli.model.hparams.fused_optimizer = True
    assert cli.model.configure_optimizers().defaults["fused"] is True
    fused_losses, fused_weights = steps_from(cli, initial, steps=3)
    assert fused_losses == pytest.approx(losses, rel=1e-5)
    for key, value in weights.items():
        torch.testing.assert_close(fused_weights[key], value, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "choice, device, fused",
    [(None, "cuda", True), (None, "cpu", None), (True, "cpu", True), (False, "cuda", None), (False, "cpu", None)],
)
def test_adam_is_fused_on_cuda_by_default_and_otherwise_pytorchs_choice(
    image_model, monkeypatch, choice, device, fused
):
    """``fused=False`` passed to Adam would also turn off its multi-tensor update (one launch per parameter):
    vaekit passes None instead, so PyTorch keeps its own choice (foreach on CUDA)."""
    cli, _ = image_model
    cli.model.hparams.fused_optimizer = choice
    monkeypatch.setattr(type(cli.model), "device", property(lambda self: torch.device(device)))
    defaults = cli.model.configure_optimizers().defaults
    assert defaults["fused"] is fused and defaults["foreach"] is None
