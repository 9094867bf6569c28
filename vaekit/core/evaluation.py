"""Evaluation and per-example scores of a model under Lightning's test and predict loops, with the command's
settings as arguments: the model holds no command state.

The totals are torchmetrics sums on the device, so `vaekit evaluate` on several processes reports the
figures of all of them (each rank's sums are reduced at the end), for the unimodal and the joint model alike.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torchmetrics import SumMetric

from vaekit.core.estimators import PosteriorDiagnostics


def observe(batch: Any, observed: list[str] | None) -> Any:
    """A joint model's batch reduced to the ``observed`` modalities (every one when None); others pass as they are."""
    if not observed or not isinstance(batch, dict) or not all(isinstance(v, dict) for v in batch.values()):
        return batch
    return {name: value for name, value in batch.items() if name in observed}


class Evaluator(pl.LightningModule):
    """Wraps a model for `vaekit evaluate` (``trainer.test``: figures in ``result``) and `encode`/`score`
    (``trainer.predict``: per-example outputs).

    ``iw_samples``: importance samples of the NLL (0: the ELBO stands for it); ``complexity``: add each input's
    compressed size; ``observed``: the modalities a joint model encodes (all when None).
    """

    def __init__(
        self, model: Any, iw_samples: int = 0, complexity: bool = False, observed: list[str] | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.iw_samples, self.complexity, self.observed = iw_samples, complexity, observed
        self.totals = torch.nn.ModuleDict()
        self.diagnostics = PosteriorDiagnostics()
        self.result: dict[str, Any] = {}

    def test_step(self, batch: Any, batch_idx: int) -> None:
        values, posterior = self.model.evaluation_values(observe(batch, self.observed), self.iw_samples)
        for key, value in values.items():
            name = key.replace(".", ",")  # a module name cannot hold a dot
            if name not in self.totals:
                self.totals[name] = SumMetric().to(value.device)
            self.totals[name].update(value.detach().double().sum())
        self.diagnostics.update(posterior, self.model.bottleneck.diagnostic_kl_per_dim(posterior))

    def on_test_epoch_end(self) -> None:
        totals = {name.replace(",", "."): float(metric.compute()) for name, metric in self.totals.items()}
        self.result = self.model.evaluation_summary(totals, self.diagnostics.compute(), self.iw_samples)

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        return self.model.predict_values(observe(batch, self.observed), self.iw_samples, self.complexity)
