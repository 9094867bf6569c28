"""The VAE core: one LightningModule that every modality plugin subclasses.

A plugin builds its networks in ``build(spec)`` from what the data reveals
(image shape, vocabulary, audio statistics) and implements a few hooks;
the ELBO, its schedules, diagnostics, importance-weighted evaluation and
latent-space walks are written here once.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor
from torchmetrics import SumMetric

from vaekit.core.distributions import PRIORS, DiagonalGaussian
from vaekit.core.estimators import PosteriorDiagnostics, iw_nll
from vaekit.core.likelihoods import Likelihood
from vaekit.core.schedules import BetaSchedule, free_bits_kl

Batch = dict[str, Tensor]
CHECKPOINT_KEY = "vaekit"


def repeat_batch(batch: Batch, copies: int) -> Batch:
    """Repeat every tensor of a batch ``copies`` times along dim 0, copy-major."""
    return {k: v.repeat(copies, *([1] * (v.dim() - 1))) for k, v in batch.items()}


@dataclass
class ELBOTerms:
    """Per-example terms of one pass, in nats; ``loss`` is the batch objective."""

    loss: Tensor
    rec: Tensor
    kl: Tensor
    kl_per_dim: Tensor
    posterior: DiagonalGaussian

    @property
    def elbo(self) -> Tensor:
        return -(self.rec + self.kl)


class VAE(pl.LightningModule):
    """Shared VAE core.

    Subclasses set ``modality`` and ``spec_type`` and implement ``build``, ``generate`` and
    ``save_outputs``; they may override ``encode_params``/``decode_params``/``log_likelihood``
    when the default (networks on ``batch["x"]``) does not fit, as text does for teacher forcing.
    """

    modality: ClassVar[str]
    spec_type: ClassVar[type]
    generation_options: ClassVar[type | None] = None
    eval_extras: ClassVar[tuple[str, ...]] = ()

    encoder: torch.nn.Module
    decoder: torch.nn.Module
    likelihood: Likelihood

    def __init__(
        self,
        latent_dim: int = 32,
        beta: BetaSchedule | None = None,
        free_bits: float = 0.0,
        prior: str = "standard_normal",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        val_iw_samples: int = 0,
        iw_max_rows: int = 1024,
    ) -> None:
        super().__init__()
        if prior not in PRIORS:
            raise ValueError(f"unknown prior {prior!r}; choose one of {sorted(PRIORS)}")
        self.save_hyperparameters()
        self.beta = beta or BetaSchedule()
        self.prior = PRIORS[prior]()
        self.spec: Any = None
        self.val_diagnostics = PosteriorDiagnostics()
        self.eval_iw_samples = 0  # set by `vaekit evaluate`
        sums = ("elbo", "rec", "kl", "nll", "units", "count", *self.eval_extras)
        self._eval_sums = torch.nn.ModuleDict({k: SumMetric() for k in sums})
        self._eval_diagnostics = PosteriorDiagnostics()
        self.evaluation: dict[str, float] = {}

    # ----------------------------------------------------------------- plugin hooks
    def build(self, spec: Any) -> None:
        """Create ``encoder``, ``decoder`` and ``likelihood`` for data described by ``spec``."""
        raise NotImplementedError

    def encode_params(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Encoder contract: the posterior's mean and log-variance, each (B, latent_dim)."""
        return self.encoder(batch["x"])

    def decode_params(self, z: Tensor, batch: Batch) -> Tensor:
        """Decoder contract: the likelihood's parameters for reconstructing ``batch`` from ``z``."""
        return self.decoder(z)

    def log_likelihood(self, params: Tensor, batch: Batch) -> Tensor:
        """log p(x|z) per example, summed over data dimensions."""
        return self.likelihood.log_prob(params, batch["x"], batch.get("mask"))

    def num_units(self, batch: Batch) -> Tensor:
        """Data dimensions per example (pixels, tokens...), for bits/dim or perplexity."""
        return torch.full((batch["x"].shape[0],), batch["x"][0].numel(), device=batch["x"].device)

    def summary_metrics(self, nll_sum: float, units_sum: float) -> dict[str, float]:
        """Modality-specific figures derived from the total IW NLL (bits/dim, perplexity)."""
        return {}

    def evaluation_extras(self, batch: Batch, terms: ELBOTerms) -> dict[str, Tensor]:
        """Per-example figures named in ``eval_extras`` (e.g. spectral distances); `evaluate` averages them."""
        return {}

    def generate(self, z: Tensor, **options: Any) -> Any:
        """Turn latents into data (images, sentences, waveforms)."""
        raise NotImplementedError

    def as_outputs(self, batch: Batch) -> Any:
        """A batch of real inputs in the form ``generate`` returns, so `reconstruct` can write both alike."""
        return batch["x"]

    def save_outputs(self, data: Any, out_dir: Path, stem: str, nrow: int | None = None) -> list[Path]:
        """Write generated data as files a person opens; return the paths written."""
        raise NotImplementedError

    # ----------------------------------------------------------------- spec and checkpoints
    @property
    def built(self) -> bool:
        return self.spec is not None

    def attach_spec(self, spec: Any) -> None:
        if not isinstance(spec, self.spec_type):
            raise TypeError(f"{type(self).__name__} needs a {self.spec_type.__name__}, got {type(spec).__name__}")
        self.build(spec)
        self.spec = spec

    def setup(self, stage: str) -> None:
        if not self.built:
            datamodule = self.trainer.datamodule
            if datamodule is None or getattr(datamodule, "spec", None) is None:
                raise RuntimeError(f"{type(self).__name__} needs a vaekit data module to size its networks")
            self.attach_spec(datamodule.spec)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        checkpoint[CHECKPOINT_KEY] = {
            "modality": self.modality,
            "spec": asdict(self.spec),
            "model_class": f"{type(self).__module__}.{type(self).__qualname__}",
            "datamodule_class": None
            if datamodule is None
            else f"{type(datamodule).__module__}.{type(datamodule).__qualname__}",
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get(CHECKPOINT_KEY)
        if meta is None:
            raise ValueError(
                "this checkpoint was not written by vaekit (no 'vaekit' entry); train one with `vaekit fit`"
            )
        if meta["modality"] != self.modality:
            raise ValueError(
                f"the checkpoint holds a {meta['modality']!r} model but this is a {self.modality!r} model; "
                f"use a config of the {meta['modality']} modality or another checkpoint"
            )
        spec = self.spec_type(**meta["spec"])
        if not self.built:
            self.attach_spec(spec)
        elif spec != self.spec:
            raise ValueError(
                f"the data now gives {self.spec} but the checkpoint was trained on {spec}; "
                "point --data.root at the data it was trained on"
            )

    # ----------------------------------------------------------------- the ELBO
    def posterior(self, batch: Batch) -> DiagonalGaussian:
        return DiagonalGaussian(*self.encode_params(batch))

    def elbo_terms(self, batch: Batch, beta: float = 1.0) -> ELBOTerms:
        """One reparameterised pass; sums over data and latent dims, mean over the batch for ``loss``."""
        posterior = self.posterior(batch)
        z = posterior.rsample()
        rec = -self.log_likelihood(self.decode_params(z, batch), batch)
        kl_per_dim = self.prior.kl_per_dim(posterior)
        if kl_per_dim is None:  # no closed form: single-sample Monte Carlo, spread evenly for free bits
            kl_mc = posterior.log_prob(z) - self.prior.log_prob(z)
            kl_per_dim = (kl_mc / z.shape[-1]).unsqueeze(-1).expand_as(z)
        kl = kl_per_dim.sum(-1)
        loss = rec.mean() + beta * free_bits_kl(kl_per_dim, self.hparams.free_bits)
        return ELBOTerms(loss=loss, rec=rec, kl=kl, kl_per_dim=kl_per_dim, posterior=posterior)

    def nll(self, batch: Batch, num_samples: int) -> Tensor:
        """Importance-weighted -log p(x) per example with ``num_samples`` samples."""
        posterior = self.posterior(batch)

        def log_likelihood(z: Tensor, copies: int) -> Tensor:
            repeated = repeat_batch(batch, copies)
            return self.log_likelihood(self.decode_params(z, repeated), repeated)

        return iw_nll(posterior, self.prior, log_likelihood, num_samples, self.hparams.iw_max_rows)

    # ----------------------------------------------------------------- training loop
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        beta = self.beta(self.global_step)
        terms = self.elbo_terms(batch, beta)
        if self.global_step % max(1, self.trainer.log_every_n_steps) == 0 and not torch.isfinite(terms.loss):
            raise FloatingPointError(
                f"the loss became {terms.loss.item()} by step {self.global_step} "
                f"(rec={terms.rec.mean().item():.4g}, kl={terms.kl.mean().item():.4g}); lower --model.lr, "
                "set --trainer.gradient_clip_val 1.0, or check the data for NaN/inf values"
            )
        size = terms.rec.shape[0]
        self.log("train/loss", terms.loss, prog_bar=True, batch_size=size)
        self.log_dict(
            {
                "train/rec": terms.rec.mean(),
                "train/kl": terms.kl.mean(),
                "train/elbo": terms.elbo.mean(),
                "train/beta": float(beta),
            },
            batch_size=size,
        )
        return terms.loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        terms = self.elbo_terms(batch)
        size = terms.rec.shape[0]
        metrics = {"val/rec": terms.rec.mean(), "val/kl": terms.kl.mean(), "val/elbo": terms.elbo.mean()}
        if self.hparams.val_iw_samples > 0:
            metrics["val/nll"] = self.nll(batch, self.hparams.val_iw_samples).mean()
        self.log_dict(metrics, prog_bar=True, sync_dist=True, batch_size=size)
        self.val_diagnostics.update(terms.posterior)

    def on_validation_epoch_end(self) -> None:
        stats = self.val_diagnostics.compute()
        self.val_diagnostics.reset()
        self.log("val/active_units", stats["active_units"], prog_bar=True)
        self.log("val/mutual_info", stats["mutual_info"])
        for dim, value in enumerate(stats["kl_per_dim"]):
            self.log(f"val_kl_per_dim/{dim:03d}", value)
        if stats["active_units"] == 0 and not self.trainer.sanity_checking:
            rank_zero_warn(
                f"posterior collapse at epoch {self.current_epoch}: no active latent units "
                f"(KL {stats['kl_per_dim'].sum():.3g} nats). Try a KL warm-up (--model.beta.schedule linear), "
                "free bits (--model.free_bits 0.5), or a weaker decoder; see docs/training.md"
            )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    # ----------------------------------------------------------------- evaluation (vaekit evaluate)
    def test_step(self, batch: Batch, batch_idx: int) -> None:
        terms = self.elbo_terms(batch)
        nll = self.nll(batch, self.eval_iw_samples) if self.eval_iw_samples > 0 else -terms.elbo
        values = {
            "elbo": terms.elbo,
            "rec": terms.rec,
            "kl": terms.kl,
            "nll": nll,
            "units": self.num_units(batch).to(nll.dtype),
            "count": torch.ones_like(nll),
            **self.evaluation_extras(batch, terms),
        }
        for key, value in values.items():
            self._eval_sums[key].update(value.detach().double().sum())
        self._eval_diagnostics.update(terms.posterior)

    def on_test_epoch_end(self) -> None:
        sums = {k: float(metric.compute()) for k, metric in self._eval_sums.items()}
        stats = self._eval_diagnostics.compute()
        count = sums["count"]
        self.evaluation = {
            "num_examples": int(count),
            "iw_samples": self.eval_iw_samples,
            "elbo": sums["elbo"] / count,
            "rec": sums["rec"] / count,
            "kl": sums["kl"] / count,
            "nll": sums["nll"] / count,
            "active_units": int(stats["active_units"]),
            "mutual_info": float(stats["mutual_info"]),
            **self.summary_metrics(sums["nll"], sums["units"]),
            **{key: sums[key] / count for key in self.eval_extras},
        }
        for metric in self._eval_sums.values():
            metric.reset()
        self._eval_diagnostics.reset()

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        """Per-example embeddings and anomaly scores (`vaekit encode` / `vaekit score`)."""
        terms = self.elbo_terms(batch)
        out = {
            "mean": terms.posterior.mean,
            "logvar": terms.posterior.logvar,
            "neg_elbo": -terms.elbo,
            "label": batch.get("label", torch.full_like(terms.rec, -1, dtype=torch.long)),
        }
        if self.eval_iw_samples > 0:
            out["nll"] = self.nll(batch, self.eval_iw_samples)
        return out

    # ----------------------------------------------------------------- latent space
    def sample_latents(self, num: int, temperature: float = 1.0) -> Tensor:
        """Prior samples; ``temperature`` scales the prior's spread (1.0 is the model's prior)."""
        return self.prior.sample(num, self.hparams.latent_dim, temperature)

    @staticmethod
    def interpolate_latents(z_a: Tensor, z_b: Tensor, steps: int) -> Tensor:
        """``steps`` points on the straight line from z_a to z_b, both ends included."""
        weights = torch.linspace(0, 1, steps, device=z_a.device, dtype=z_a.dtype).unsqueeze(-1)
        return (1 - weights) * z_a + weights * z_b

    def traverse_latents(self, base: Tensor, dims: list[int], span: float, steps: int) -> Tensor:
        """For each dim, ``steps`` copies of ``base`` with that dim swept over [-span, span]: (dims*steps, D)."""
        bad = [d for d in dims if not 0 <= d < self.hparams.latent_dim]
        if bad:
            raise ValueError(f"--dims {bad} out of range: the latent has {self.hparams.latent_dim} dimensions")
        values = torch.linspace(-span, span, steps, device=base.device, dtype=base.dtype)
        grid = base.repeat(len(dims) * steps, 1)
        for i, dim in enumerate(dims):
            grid[i * steps : (i + 1) * steps, dim] = values
        return grid


def bits_per_dim(nll_sum: float, units_sum: float) -> float:
    return nll_sum / (units_sum * math.log(2))
