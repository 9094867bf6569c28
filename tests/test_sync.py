"""No host sync in a training step: no code (vaekit's, Lightning's logging and progress bar) reads a tensor value
back on the host inside a step, except at the logging steps where Lightning reads the logged values anyway,
and no step makes a tensor from host values (a copy from the host, which waits too). Proven on the CPU by
counting the calls that would sync a GPU (``item``, ``tolist``, ``bool``, ``int``, ``float``, ``cpu``,
``numpy``) and the tensors made from Python values."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.overrides import TorchFunctionMode

from vaekit.callbacks import LoggingStepMetrics
from vaekit.cli.fit import build_cli

READS = ("item", "tolist", "__bool__", "__int__", "__float__", "cpu", "numpy")


class StepWindow(pl.Callback):
    """Open from a batch's start through its end hooks (the module's run after the callbacks'); closed at the
    epoch's end, which is no step."""

    def __init__(self) -> None:
        self.open = False

    def on_train_batch_start(self, *args) -> None:
        self.open = True

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step % trainer.log_every_n_steps == 0:  # the loss a logging step logged (not read here)
            self.logged_loss = trainer.callback_metrics["train/loss"].clone()

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


def caller() -> str:
    """The file and function that called into torch, past this file's own frames."""
    frame = sys._getframe(1)
    while frame.f_code.co_filename == __file__:
        frame = frame.f_back
    path = Path(frame.f_code.co_filename)
    return f"{path.parent.name}{os.sep}{path.name}:{frame.f_code.co_name}"


# torch code that reads tensors which stay on the host whatever the device: Adam's step counts (unless fused, as
# vaekit's Adam is on CUDA) and a packed sequence's batch sizes, read by the GRU.
HOST_TENSOR_READERS = (f"optim{os.sep}", f"modules{os.sep}rnn.py:")
FIRST_STEP_STATE = {f"logger_connector{os.sep}result.py:__init__", f"optim{os.sep}adam.py:_init_group"}


class HostCopies(TorchFunctionMode):
    """Tensors made from host values (``torch.tensor(0.5, device=...)``) while ``window`` is open: on a GPU each
    is a copy from the host that waits for the device, as Lightning's ``self.log`` of a Python float did."""

    def __init__(self, window: StepWindow, trainer: pl.Trainer) -> None:
        super().__init__()
        self.window, self.trainer = window, trainer
        self.copies: list[tuple[int, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        from_host = func in (torch.tensor, torch.as_tensor) and not isinstance(args[0], torch.Tensor)
        if from_host and self.window.open and not preparing_data():
            self.copies.append((self.trainer.global_step, caller()))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    "recipe, on_device",
    [("image/tiny", "false"), ("audio/tiny", "false"), ("text/tiny", "false"), ("multimodal/tiny", "false"),
     ("tabular/tiny", "false"), ("image/tiny", "true"), ("audio/tiny", "true"), ("text/tiny", "true")],
)  # fmt: skip
def test_a_training_step_neither_reads_back_nor_copies_from_the_host(recipe, on_device, tmp_path, monkeypatch):
    """Anyone's reads count (vaekit's, Lightning's logging and progress bar), with the bar on as a recipe runs."""
    log_every = 4
    args = ["--config", f"configs/{recipe}.yaml", "--trainer.default_root_dir", str(tmp_path),
            "--trainer.max_steps", "9", "--trainer.log_every_n_steps", str(log_every),
            "--trainer.enable_progress_bar", "true", "--trainer.limit_val_batches", "0",
            "--samples.num", "0", "--posthoc.components", "0", "--model.default_sampler", "prior",
            "--data.on_device", on_device]  # fmt: skip
    cli = build_cli(args, run=False)
    window = StepWindow()
    cli.trainer.callbacks.append(window)
    reads: list[tuple[int, str]] = []
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counting(self, *a, _original=original, _name=name, **k):
            if window.open and not preparing_data() and not caller().startswith(HOST_TENSOR_READERS):
                reads.append((cli.trainer.global_step, f"{_name} in {caller()}"))
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counting)
    with HostCopies(window, cli.trainer) as host_copies:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    monkeypatch.undo()
    assert cli.trainer.global_step == 9
    bar = cli.trainer.progress_bar_callback
    assert isinstance(bar, LoggingStepMetrics) and bar.shown_loss == pytest.approx(float(window.logged_loss))
    # The step counter has moved on by the batch's end hooks: a read there at step 4 is the 4th step's logging.
    outside_logging = [(step, what) for step, what in reads if step % log_every]
    assert not outside_logging, outside_logging
    assert reads, "the logging steps read the logged values: the counting saw nothing, so it counts nothing"
    # The first step makes state once: Lightning registers each logged value, Adam its step counts; no later step.
    assert not [(step, what) for step, what in host_copies.copies if step > 0], host_copies.copies
    assert {what for _, what in host_copies.copies} <= FIRST_STEP_STATE, host_copies.copies


def test_text_batches_keep_their_lengths_on_the_host_for_packing(tmp_path):
    """On a GPU the GRU's packing would copy the lengths back every step; the batch brings a host copy."""
    cli = build_cli(["--config", "configs/text/tiny.yaml", "--trainer.default_root_dir", str(tmp_path)], run=False)
    cli.datamodule.setup("fit")
    batch = next(iter(cli.datamodule.train_dataloader()))
    moved = cli.datamodule.transfer_batch_to_device(batch, torch.device("meta"), 0)  # a device that is not the host
    assert moved["lengths"].device.type == "meta" and moved["host_lengths"].device.type == "cpu"
    assert torch.equal(moved["host_lengths"], batch["lengths"])
