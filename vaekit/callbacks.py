"""Callbacks every recipe gets from `vaekit fit`."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only

from vaekit.core.module import VAE


class WriteSamples(pl.Callback):
    """At the end of fit, write prior samples and test reconstructions under ``<default_root_dir>/samples``.

    So a finished run leaves something to look at, not only a checkpoint. ``num=0`` turns it off.
    """

    def __init__(self, num: int = 16, seed: int = 0) -> None:
        self.num = num
        self.seed = seed

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: VAE) -> None:
        if self.num <= 0 or trainer.interrupted:
            return
        out_dir = Path(trainer.default_root_dir) / "samples"
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            samples = pl_module.generate(pl_module.sample_latents(self.num))
            paths = pl_module.save_outputs(samples, out_dir, "prior")
            datamodule = trainer.datamodule
            if datamodule is not None and "test" in datamodule.splits:
                batch = next(iter(datamodule.loader("test")))
                batch = {k: v[: self.num].to(pl_module.device) for k, v in batch.items()}
                batch = datamodule.on_after_batch_transfer(batch, 0)
                reconstructions = pl_module.generate(pl_module.posterior(batch).mode())
                paths += pl_module.save_outputs(reconstructions, out_dir, "reconstructions")
        pl_module.train(was_training)
        rank_zero_info(f"samples written to {out_dir} ({len(paths)} files)")
