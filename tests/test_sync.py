"""No host sync in a training step: vaekit's own code reads no tensor value back on the host inside a step,
except at the logging steps where Lightning reads the logged values anyway. Proven on the CPU by counting the
calls that would sync a GPU (``item``, ``tolist``, ``bool``, ``int``, ``float``, ``cpu``, ``numpy``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

import vaekit
from vaekit.cli.fit import build_cli

READS = ("item", "tolist", "__bool__", "__int__", "__float__", "cpu", "numpy")
VAEKIT = str(Path(vaekit.__file__).parent)


class StepWindow(pl.Callback):
    """Open from a batch's start through its end hooks (the module's run after the callbacks'); closed at the
    epoch's end, which is no step."""

    def __init__(self) -> None:
        self.open = False

    def on_train_batch_start(self, *args) -> None:
        self.open = True

    def on_train_epoch_end(self, *args) -> None:
        self.open = False


DATA_PREPARATION = (f"torch{os.sep}utils{os.sep}data", f"vaekit{os.sep}core{os.sep}resident.py")


def preparing_data() -> bool:
    """Whether the next batch is being prepared: by a DataLoader (host tensors, read before they go to the
    device), or gathered from data on the device, where only host copies are read (tests/test_gpu_paths.py
    proves that on the meta device, whose values cannot be read)."""
    frame = sys._getframe(2)
    while frame is not None:
        if any(part in frame.f_code.co_filename for part in DATA_PREPARATION):
            return True
        frame = frame.f_back
    return False


@pytest.mark.parametrize(
    "recipe, on_device",
    [("image/tiny", "false"), ("audio/tiny", "false"), ("text/tiny", "false"), ("multimodal/tiny", "false"),
     ("image/tiny", "true"), ("audio/tiny", "true"), ("text/tiny", "true")],
)  # fmt: skip
def test_a_training_step_reads_nothing_back_from_the_device(recipe, on_device, tmp_path, monkeypatch):
    log_every = 4
    args = ["--config", f"configs/{recipe}.yaml", "--trainer.default_root_dir", str(tmp_path),
            "--trainer.max_steps", "9", "--trainer.log_every_n_steps", str(log_every),
            "--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "0",
            "--samples.num", "0", "--posthoc.components", "0", "--model.default_sampler", "prior",
            "--data.on_device", on_device]  # fmt: skip
    cli = build_cli(args, run=False)
    window = StepWindow()
    cli.trainer.callbacks.append(window)
    reads: list[tuple[int, str]] = []
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counting(self, *a, _original=original, _name=name, **k):
            caller = sys._getframe(1).f_code
            if window.open and caller.co_filename.startswith(VAEKIT) and not preparing_data():
                where = f"{_name} in {Path(caller.co_filename).name}:{caller.co_name}"
                reads.append((cli.trainer.global_step, where))
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counting)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    monkeypatch.undo()
    assert cli.trainer.global_step == 9
    # The step counter has moved on by the batch's end hooks: a read there at step 4 is the 4th step's logging.
    outside_logging = [(step, what) for step, what in reads if step % log_every]
    assert not outside_logging, outside_logging


def test_text_batches_keep_their_lengths_on_the_host_for_packing(tmp_path):
    """On a GPU the GRU's packing would copy the lengths back every step; the batch brings a host copy."""
    cli = build_cli(["--config", "configs/text/tiny.yaml", "--trainer.default_root_dir", str(tmp_path)], run=False)
    cli.datamodule.setup("fit")
    batch = next(iter(cli.datamodule.train_dataloader()))
    moved = cli.datamodule.transfer_batch_to_device(batch, torch.device("meta"), 0)  # a device that is not the host
    assert moved["lengths"].device.type == "meta" and moved["host_lengths"].device.type == "cpu"
    assert torch.equal(moved["host_lengths"], batch["lengths"])
