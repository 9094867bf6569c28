"""Test-only callbacks, importable by `vaekit fit` subprocesses (tests/ is put on PYTHONPATH)."""

import os
import signal

import pytorch_lightning as pl


class KillAtStep(pl.Callback):
    """SIGKILL the training process after optimiser step ``step``: a crash with no chance to clean up."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class PoisonBatchAtStep(pl.Callback):
    """Turn one training batch into NaN at optimiser step ``step`` (a non-logging step, say): a divergence."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            batch["x"].fill_(float("nan"))
