"""The VAE core: one LightningModule that every modality plugin subclasses.

A plugin builds its networks in ``build(spec)`` from what the data reveals
(image shape, vocabulary, audio statistics) and implements a few hooks; the
bound (through ``objectives``), its schedules, diagnostics, importance-weighted
evaluation and latent-space walks are written here once.

Over 400 lines on purpose: this is the one class whose hooks Lightning calls and
that every plugin inherits, kept whole so that a plugin author reads one file to
see what they inherit. Components live beside it in their own modules.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sized
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytorch_lightning as pl
import torch
from lightning_utilities.core.apply_func import apply_to_collection
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor

from vaekit import __version__
from vaekit.core.bottleneck import Bottleneck
from vaekit.core.distributions import (
    DiagonalGaussian,
    MixtureOfGaussiansPrior,
    Prior,
    StandardNormalPrior,
    VampPrior,
)
from vaekit.core.estimators import PosteriorDiagnostics, iw_nll
from vaekit.core.likelihoods import Likelihood
from vaekit.core.objectives import THE_ELBO, ELBOTerms, LogLikelihood, Objective, ObjectiveConfig, build_objective
from vaekit.core.plain import nonfinite_tensors, to_plain
from vaekit.core.samplers import SAMPLERS
from vaekit.core.schedules import BetaSchedule
from vaekit.core.schema import check_fields
from vaekit.core.storage import ROW

Batch = dict[str, Tensor]
CHECKPOINT_KEY = "vaekit"
# 1: the first release (class names imported on load); 2: plain data only, classes resolved through plugins.
CHECKPOINT_FORMAT = 2


class NonFiniteError(FloatingPointError):
    """Training diverged (NaN or infinity); raised instead of saving the model."""


def map_batch(batch: Any, function: Callable[[Tensor], Tensor]) -> Any:
    """``function`` applied to every tensor of a batch, however nested (a joint model's batch holds one batch
    per modality)."""
    return apply_to_collection(batch, Tensor, function)


def repeat_batch(batch: Any, copies: int) -> Any:
    """Repeat every tensor of a batch ``copies`` times along dim 0, copy-major."""
    return map_batch(batch, lambda v: v.repeat(copies, *([1] * (v.dim() - 1))))


@dataclass
class OnnxGraph:
    """One network for ONNX export: the module, example inputs, names, and each input's batch dimension."""

    module: torch.nn.Module
    inputs: tuple[Tensor, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    batch_dims: tuple[int, ...] | None = None  # default: dim 0 of every input


class LikelihoodMean(torch.nn.Module):
    """z -> the likelihood's mean: the deterministic part of generation, for export."""

    def __init__(self, decoder: torch.nn.Module, likelihood: Likelihood) -> None:
        super().__init__()
        self.decoder, self.likelihood = decoder, likelihood

    def forward(self, z: Tensor) -> Tensor:
        return self.likelihood.mean(self.decoder(z))


class VAE(pl.LightningModule):
    """Shared VAE core.

    Subclasses set ``modality`` and ``spec_type`` and implement ``build``, ``generate`` and
    ``save_outputs``; they may override ``encode_params``/``decode_params``/``log_likelihood``
    when the default (networks on ``batch["x"]``) does not fit, as text does for teacher forcing.
    """

    modality: ClassVar[str]
    # What a user gives as an input (`--input`, the explore page): files, or typed text (sentences).
    input_kind: ClassVar[Literal["file", "text"]] = "file"
    spec_type: ClassVar[type]
    generation_options: ClassVar[type | None] = None
    eval_extras: ClassVar[tuple[str, ...]] = ()
    # Spec fields that `vaekit export` writes as plain files beside config.json (file name -> fields):
    # a single ``*_json`` string field is written as is (a tokenizer.json), others as one JSON object.
    spec_assets: ClassVar[dict[str, tuple[str, ...]]] = {}

    encoder: torch.nn.Module
    decoder: torch.nn.Module
    likelihood: Likelihood

    def __init__(
        self,
        latent_dim: int = 32,
        beta: BetaSchedule | None = None,
        free_bits: float = 0.0,
        prior: Literal["standard_normal", "mog", "vamp"] = "standard_normal",
        prior_components: int = 10,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        val_iw_samples: int = 0,
        iw_max_rows: int = 1024,
        default_sampler: str = "prior",
        objective: ObjectiveConfig | None = None,
        compile: bool | Literal["reduce-overhead", "max-autotune"] = False,
        fused_optimizer: bool | None = None,
        trim: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if not 0 <= trim < 1:
            raise ValueError(f"--model.trim is the share of each batch left out, in [0, 1); got {trim}")
        if default_sampler not in ("prior", *SAMPLERS):
            raise ValueError(f"default_sampler must be one of {['prior', *SAMPLERS]}, not {default_sampler!r}")
        self.beta = beta or BetaSchedule()
        self.objective = build_objective(objective or ObjectiveConfig(), free_bits, prior)
        if trim and self.objective.name != "elbo":
            raise ValueError(f"--model.trim trims the ELBO; the {self.objective.name} objective has no trimmed form")
        self.prior = self.make_prior() if prior != "vamp" else StandardNormalPrior()  # vamp: once built
        self.samplers = torch.nn.ModuleDict()  # post-hoc samplers fitted after training (vaekit.core.samplers)
        self.spec: Any = None
        self.val_diagnostics = PosteriorDiagnostics()
        self.last_kl_per_dim: Tensor | None = None  # of the latest validation, for TensorBoard
        self.recipe = ""  # the fit config as YAML, set by `vaekit fit`, kept in checkpoints for model cards
        # First optimiser step whose loss or gradient was non-finite (-1: none). A device tensor, so the
        # per-step check costs no host sync; it is read where Lightning syncs anyway and before every save.
        self._first_nonfinite_step = torch.tensor(-1)

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

    def generate(self, z: Tensor, deterministic: bool = False, **options: Any) -> Any:
        """Turn latents into data (images, sentences, waveforms). ``deterministic``: the command wants outputs
        that follow from z alone (reconstructions, interpolations), for decoders that can also sample."""
        raise NotImplementedError

    def as_outputs(self, batch: Batch) -> Any:
        """A batch of real inputs in the form ``generate`` returns, so `reconstruct` can write both alike."""
        return batch["x"]

    def save_outputs(self, data: Any, out_dir: Path, stem: str, nrow: int | None = None, **options: Any) -> list[Path]:
        """Write generated data as files a person opens; return the paths written. ``options`` are the
        command's generation options (``generation_options``), for writers that depend on them."""
        raise NotImplementedError

    def log_media(self, writer: Any, tag: str, data: Any, step: int) -> None:
        """Show generated data in TensorBoard (a ``SummaryWriter``): images, audio or text. Default: nothing."""

    def encoder_example(self) -> Tensor | None:
        """An example encoder input (batch of 2) for ONNX export; ``None`` when the encoder takes no single tensor."""
        return None

    def onnx_graphs(self) -> dict[str, OnnxGraph]:
        """Networks `vaekit export --onnx` writes: ``decoder`` (z -> the likelihood's mean) and, where the
        plugin gives an ``encoder_example``, ``encoder`` (input -> posterior mean and log-variance)."""
        z = torch.zeros(2, self.hparams.latent_dim, device=self.device)
        graphs = {"decoder": OnnxGraph(LikelihoodMean(self.decoder, self.likelihood), (z,), ("z",), ("mean",))}
        example = self.encoder_example()
        if example is not None:
            graphs["encoder"] = OnnxGraph(self.encoder, (example,), ("x",), ("mean", "logvar"))
        return graphs

    # ----------------------------------------------------------------- spec and checkpoints
    @property
    def built(self) -> bool:
        return self.spec is not None

    def attach_spec(self, spec: Any) -> None:
        if not isinstance(spec, self.spec_type):
            raise TypeError(f"{type(self).__name__} needs a {self.spec_type.__name__}, got {type(spec).__name__}")
        self.build(spec)
        self.spec = spec
        if self.hparams.prior == "vamp":  # its pseudo-inputs live in the encoder's input space
            self.prior = self.make_prior()

    def make_prior(self) -> Prior:
        """p(z) by the name ``prior`` (``PRIORS``): ``standard_normal``; ``mog``, a learned mixture of
        ``prior_components`` Gaussians; or ``vamp``, the encoder's posterior at ``prior_components`` learned
        pseudo-inputs."""
        return PRIORS[self.hparams.prior](self)

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        if not self.built:
            if datamodule is None or getattr(datamodule, "spec", None) is None:
                raise RuntimeError(f"{type(self).__name__} needs a vaekit data module to size its networks")
            self.attach_spec(datamodule.spec)
        train = getattr(datamodule, "splits", {}).get("train")
        self.objective.attach_data(len(train) if isinstance(train, Sized) else None)
        if stage == "fit" and self.hparams.compile:
            self.compile_networks(None if self.hparams.compile is True else self.hparams.compile)

    def compile_networks(self, mode: str | None) -> None:
        """``compile``: the encoder and decoder through ``torch.compile`` (in place, so their weights keep their
        names), for training only; commands on a saved model run eagerly. ``reduce-overhead`` adds CUDA graphs,
        for data of one shape per batch (images, audio)."""
        for network in (self.encoder, self.decoder):
            network.compile(mode=mode)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to save a diverged model; store only plain data beside the tensors (see ``vaekit.checkpoint``)."""
        self.check_finite()
        bad = nonfinite_tensors(checkpoint["state_dict"])
        if bad:
            raise NonFiniteError(
                f"refusing to save a checkpoint whose weights are not finite ({len(bad)} tensors, e.g. {bad[0]}); "
                "the checkpoints already on disk are untouched. Lower --model.lr or set --trainer.gradient_clip_val 1.0"
            )
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        for key in ("hyper_parameters", "datamodule_hyper_parameters"):
            if key in checkpoint:
                checkpoint[key] = to_plain(checkpoint[key], key)
        checkpoint[CHECKPOINT_KEY] = {
            "format": CHECKPOINT_FORMAT,
            "vaekit_version": __version__,
            "modality": self.modality,
            "spec": to_plain(asdict(self.spec), "spec"),
            "model_class": class_name(type(self)),
            "datamodule_class": None if datamodule is None else class_name(type(datamodule)),
            "recipe": self.recipe,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get(CHECKPOINT_KEY)
        if meta is None:
            raise ValueError(
                "this checkpoint was not written by vaekit (no 'vaekit' entry); train one with `vaekit fit`"
            )
        self.restore_spec(meta["modality"], meta["spec"])
        self.recipe = meta.get("recipe", "")
        self.restore_samplers(checkpoint["state_dict"])  # resuming a run whose last.ckpt holds one

    def restore_spec(self, modality: str, spec_fields: dict[str, Any]) -> None:
        """Build the networks for a saved spec, or check that the data's spec matches it (resume)."""
        if modality != self.modality:
            raise ValueError(
                f"the checkpoint holds a {modality!r} model but this is a {self.modality!r} model; "
                f"use a config of the {modality} modality or another checkpoint"
            )
        check_fields(self.spec_type, spec_fields, "the saved data spec")
        try:
            spec = self.spec_type(**spec_fields)
        except TypeError as err:
            raise ValueError(f"the saved data spec does not fit {self.spec_type.__name__} ({err})") from err
        if not self.built:
            self.attach_spec(spec)
        elif spec != self.spec:
            raise ValueError(
                f"the data now gives {self.spec} but the checkpoint was trained on {spec}; "
                "point --data.root at the data it was trained on"
            )

    # ----------------------------------------------------------------- the bound
    @property
    def bottleneck(self) -> Bottleneck:
        """The prior with the KL and per-dimension diagnostics every objective and evaluation uses."""
        return Bottleneck(self.prior)

    def posterior(self, batch: Batch) -> DiagonalGaussian:
        return self.bottleneck.posterior(*self.encode_params(batch))

    def data_log_likelihood(self, z: Tensor, batch: Batch) -> Tensor:
        """log p(x|z) per example, from decoder parameters taken to float32 (bf16 cannot sum 784 pixels)."""
        return self.log_likelihood(self.decode_params(z, batch).float(), batch)

    def likelihood_of(self, batch: Batch) -> LogLikelihood:
        """log p(x|z) of ``batch`` for ``copies`` samples per example (z copy-major): what objectives and the
        importance-weighted estimator call."""

        def log_likelihood(z: Tensor, copies: int) -> Tensor:
            return self.data_log_likelihood(z, batch if copies == 1 else repeat_batch(batch, copies))

        return log_likelihood

    def bound_terms(self, batch: Batch, objective: Objective, beta: float = 1.0) -> ELBOTerms:
        """One pass of ``objective`` over ``batch``: per-example terms and the batch ``loss``."""
        terms = objective.terms(self.posterior(batch), self.bottleneck, self.likelihood_of(batch), beta)
        terms.loss = objective.loss(terms, beta, self.hparams.free_bits)
        return terms

    def elbo_terms(self, batch: Batch, beta: float = 1.0) -> ELBOTerms:
        """The ELBO's pass, whatever the model trains on: validation, evaluation and scores use it. Sums over
        data and latent dims, mean over the batch for ``loss``."""
        return self.bound_terms(batch, THE_ELBO, beta)

    def nll(self, batch: Batch, num_samples: int) -> Tensor:
        """Importance-weighted -log p(x) per example with ``num_samples`` samples."""
        posterior = self.posterior(batch)
        return iw_nll(posterior, self.prior, self.likelihood_of(batch), num_samples, self.hparams.iw_max_rows)

    # ----------------------------------------------------------------- training loop
    def trimmed(self, batch: Batch, beta: float) -> Batch:
        """The batch less its ``trim`` share of examples with the largest loss: a trimmed ELBO, for training data
        that hold anomalies (fraud among transactions: nobody labelled them), which then do not pull the model
        towards them and keep their high scores. Chosen in a pass without gradients, so the examples left out
        are out of the step's graph (one the model never fits can have a loss too large for a gradient, which
        would turn the step's gradients to NaN). Indices, not a mask: no read of the device."""
        with torch.no_grad():
            terms = self.bound_terms(batch, self.objective, beta)
            loss = torch.nan_to_num(terms.rec + beta * terms.kl, nan=math.inf)
        kept = loss.topk(math.ceil(len(loss) * (1 - self.hparams.trim)), largest=False).indices
        return map_batch(batch, lambda value: value[kept])

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        beta = self.beta(self.global_step)
        if self.hparams.trim:
            batch = self.trimmed(batch, beta)
        terms = self.bound_terms(batch, self.objective, beta)
        self._flag_nonfinite(terms.loss)
        size = terms.rec.shape[0]
        # not prog_bar: Lightning would read it back every step; the bar fetches it at logging steps (callbacks.py)
        self.log("train/loss", terms.loss, batch_size=size)
        extras = {f"train/{key}": value.mean() for key, value in terms.extras.items()}
        if terms.bound is not None:
            extras[f"train/{self.objective.name}"] = terms.bound.mean()
        self.log_dict(
            {
                "train/rec": terms.rec.mean(),
                "train/kl": terms.kl.mean(),
                "train/elbo": terms.elbo.mean(),
                # filled on the device: a Python float logged is a copy from the host, which waits for it
                "train/beta": torch.full((), float(beta), device=self.device),
                **extras,
            },
            batch_size=size,
        )
        return terms.loss

    # ----------------------------------------------------------------- divergence
    def on_train_start(self) -> None:
        # Made on the device once here (a fill, no copy from the host), so the per-step updates never sync.
        self._first_nonfinite_step = torch.full((), -1, dtype=torch.long, device=self.device)

    def _flag_nonfinite(self, value: Tensor) -> None:
        """Record (on the device, no sync) the first step at which ``value`` is not finite."""
        flag = self._first_nonfinite_step
        bad = ~torch.isfinite(value.detach()).all() & (flag < 0)
        self._first_nonfinite_step = torch.where(bad, torch.full_like(flag, self.global_step), flag)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # fp16 mixed precision expects overflowing gradients: its scaler skips those steps and rescales.
        if self._trainer is not None and self.trainer.precision == "16-mixed":
            return
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if grads:
            self._flag_nonfinite(torch.nn.utils.get_total_norm(grads))

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        if self.global_step % max(1, self.trainer.log_every_n_steps) == 0:  # the logger syncs on these steps anyway
            self.check_finite()

    def on_train_epoch_end(self) -> None:
        self.check_finite()

    def check_finite(self) -> None:
        """Stop training with one readable message if a loss or gradient went non-finite (a host sync)."""
        step = int(self._first_nonfinite_step)
        if step >= 0:
            raise NonFiniteError(
                f"training diverged: the loss or a gradient became NaN or infinite at step {step}; no checkpoint "
                "was written from then on, those already on disk are untouched (resume from last.ckpt with "
                "--ckpt_path). Lower --model.lr, set --trainer.gradient_clip_val 1.0, or check the data for NaN/inf"
            )

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        terms = self.elbo_terms(batch)
        size = terms.rec.shape[0]
        metrics = {"val/rec": terms.rec.mean(), "val/kl": terms.kl.mean(), "val/elbo": terms.elbo.mean()}
        if self.hparams.val_iw_samples > 0:
            metrics["val/nll"] = self.nll(batch, self.hparams.val_iw_samples).mean()
        self.log_dict(metrics, prog_bar=True, sync_dist=True, batch_size=size)
        self.val_diagnostics.update(terms.posterior, self.bottleneck.diagnostic_kl_per_dim(terms.posterior))

    def on_validation_epoch_end(self) -> None:
        stats = self.val_diagnostics.compute()
        self.val_diagnostics.reset()
        self.last_kl_per_dim = stats["kl_per_dim"].detach().cpu()
        self.log("val/active_units", stats["active_units"], prog_bar=True)
        self.log("val/mutual_info", stats["mutual_info"])
        name = self.bottleneck.diagnostic_name  # kl_per_dim, or kl_per_dim_mc for a mixture prior
        for dim, value in enumerate(stats["kl_per_dim"]):
            self.log(f"val_{name}/{dim:03d}", value)
        if stats["active_units"] == 0 and not self.trainer.sanity_checking:
            rank_zero_warn(
                f"posterior collapse at epoch {self.current_epoch}: no active latent units "
                f"(KL {stats['kl_per_dim'].sum():.3g} nats). Try a KL warm-up (--model.beta.schedule linear), "
                "free bits (--model.free_bits 0.5), or a weaker decoder; see docs/training.md"
            )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam. ``fused_optimizer``: all parameters updated in one kernel (PyTorch's fused Adam); None (the
        default) fuses on CUDA, where one H200 measured 1.8x the steps of one-parameter-at-a-time updates
        (docs/benchmarks.md), and leaves PyTorch's choice elsewhere. False is PyTorch's choice too: passing ``fused=False`` would also
        turn off its multi-tensor (foreach) update, one kernel launch per parameter per operation."""
        hp = self.hparams
        fused = self.device.type == "cuda" if hp.fused_optimizer is None else hp.fused_optimizer
        return torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay, fused=fused or None)

    # ----------------------------------------------------------------- evaluation (vaekit evaluate, score)
    def test_step(self, batch: Batch, batch_idx: int) -> None:
        """`vaekit test --config ...` (LightningCLI): the validation figures on the test split."""
        terms = self.elbo_terms(batch)
        metrics = {"test/rec": terms.rec.mean(), "test/kl": terms.kl.mean(), "test/elbo": terms.elbo.mean()}
        if self.hparams.val_iw_samples > 0:
            metrics["test/nll"] = self.nll(batch, self.hparams.val_iw_samples).mean()
        self.log_dict(metrics, sync_dist=True, batch_size=terms.rec.shape[0])

    def evaluation_values(self, batch: Batch, iw_samples: int) -> tuple[dict[str, Tensor], DiagonalGaussian]:
        """Per-example figures of one batch, summed over the split by ``Evaluator``, and the posterior for the
        diagnostics. ``iw_samples`` = 0: the negative ELBO stands for the NLL."""
        terms = self.elbo_terms(batch)
        nll = self.nll(batch, iw_samples) if iw_samples > 0 else -terms.elbo
        values = {
            "elbo": terms.elbo,
            "rec": terms.rec,
            "kl": terms.kl,
            "nll": nll,
            "units": self.num_units(batch).to(nll.dtype),
            "count": torch.ones_like(nll),
            **self.evaluation_extras(batch, terms),
        }
        return values, terms.posterior

    def evaluation_summary(self, totals: dict[str, float], stats: dict[str, Tensor], iw_samples: int) -> dict[str, Any]:
        """The JSON of `vaekit evaluate` from the split's totals of ``evaluation_values`` and the diagnostics."""
        count = totals["count"]
        return {
            "num_examples": int(count),
            "iw_samples": iw_samples,
            "elbo": totals["elbo"] / count,
            "rec": totals["rec"] / count,
            "kl": totals["kl"] / count,
            "nll": totals["nll"] / count,
            "active_units": int(stats["active_units"]),
            "mutual_info": float(stats["mutual_info"]),
            **self.summary_metrics(totals["nll"], totals["units"]),
            **{key: totals[key] / count for key in self.eval_extras},
        }

    def scoring_terms(self, batch: Batch) -> ELBOTerms:
        """The bound `vaekit encode`/`score` report: the ELBO (a joint model: of the modalities in the batch)."""
        return self.elbo_terms(batch)

    def labels(self, batch: Batch) -> Tensor | None:
        """The batch's labels, if the data has them."""
        return batch.get("label")

    def predict_values(self, batch: Batch, iw_samples: int = 0, complexity: bool = False) -> dict[str, Tensor]:
        """Per-example embeddings and anomaly scores (`vaekit encode` / `vaekit score`): the IW NLL with
        ``iw_samples`` > 0, each input's compressed size with ``complexity``."""
        terms = self.scoring_terms(batch)
        labels = self.labels(batch)
        out = {
            "mean": terms.posterior.mean,
            "logvar": terms.posterior.logvar,
            "neg_elbo": -terms.elbo,
            "label": labels if labels is not None else torch.full_like(terms.rec, -1, dtype=torch.long),
        }
        if ROW in batch:  # the example's row in its data, so per-example outputs name their inputs
            out[ROW] = batch[ROW]
        if iw_samples > 0:
            out["nll"] = self.nll(batch, iw_samples)
        if complexity:
            out["complexity_bits"] = self.complexity_bits(batch).to(terms.rec.device, terms.rec.dtype)
        return out

    def compressed_sizes(self, batch: Batch) -> list[int]:
        """Bytes a lossless compressor needs for each input. zlib on the raw tensor here; plugins with a
        compressor made for their data (PNG, FLAC) override it."""
        return [len(zlib.compress(x.detach().cpu().numpy().tobytes(), 9)) for x in batch["x"]]

    def complexity_bits(self, batch: Batch) -> Tensor:
        """The "input complexity" of Serrà et al. (2020) that `vaekit score --correction complexity` subtracts."""
        return 8 * torch.tensor(self.compressed_sizes(batch), dtype=torch.float64)

    # ----------------------------------------------------------------- latent space
    def sample_latents(self, num: int, temperature: float = 1.0, sampler: str | None = None) -> Tensor:
        """Latents to decode: from the prior, or from a fitted post-hoc ``sampler`` (None: the model's
        ``default_sampler``); ``temperature`` scales the spread (1.0 is the distribution as fitted)."""
        sampler = sampler or self.default_sampler()
        if sampler == "prior":
            return self.prior.sample(num, self.hparams.latent_dim, temperature)
        if sampler not in self.samplers:
            fitted = ", ".join(["prior", *self.samplers]) if self.samplers else "only the prior"
            raise ValueError(
                f"this model has no {sampler!r} sampler (it has {fitted}); `vaekit fit` fits one at the end of "
                "training (--posthoc.components), or use --sampler prior"
            )
        return self.samplers[sampler].sample(num, temperature)

    def default_sampler(self) -> str:
        """The sampler the recipe's measurements chose (``default_sampler``), once fitted; else the prior. A
        checkpoint saved before training ended (``best-*.ckpt``) has no fitted sampler yet."""
        chosen = self.hparams.get("default_sampler", "prior")
        if chosen != "prior" and chosen not in self.samplers:
            rank_zero_warn(
                f"this model's default sampler {chosen!r} was not fitted (the file was saved before training "
                "ended, or with --posthoc.components 0): sampling from the prior"
            )
            return "prior"
        return chosen

    def restore_samplers(self, state: dict[str, Tensor]) -> None:
        """Create the post-hoc samplers a saved state holds, shaped from it, before the state is loaded."""
        for name in sorted({key.split(".")[1] for key in state if key.startswith("samplers.")}):
            means = state.get(f"samplers.{name}.means")
            if name not in SAMPLERS or means is None or means.dim() != 2:
                raise ValueError(
                    f"the saved weights hold an unknown or incomplete sampler {name!r} (known: {sorted(SAMPLERS)}); "
                    "the file was altered or comes from a newer vaekit"
                )
            self.samplers[name] = SAMPLERS[name](*means.shape)

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


def _vamp_prior(model: VAE) -> Prior:
    example = model.encoder_example()
    if example is None:
        raise ValueError(
            f"--model.prior vamp needs an encoder that reads one input tensor, and {type(model).__name__}'s "
            "does not (text reads tokens); use --model.prior mog"
        )
    return VampPrior(model.encoder.__call__, example, model.hparams.prior_components)  # a callable: not a submodule


# The priors by name (``--model.prior``): one factory and one entry each, given the model (its sizes, encoder).
PRIORS: dict[str, Callable[[VAE], Prior]] = {
    "standard_normal": lambda model: StandardNormalPrior(),
    "mog": lambda model: MixtureOfGaussiansPrior(model.hparams.latent_dim, model.hparams.prior_components),
    "vamp": _vamp_prior,
}


def class_name(cls: type) -> str:
    """The name a checkpoint records for ``cls``: ``module.QualifiedName`` (looked up in the plugin registry)."""
    return f"{cls.__module__}.{cls.__qualname__}"


def bits_per_dim(nll_sum: float, units_sum: float) -> float:
    return nll_sum / (units_sum * math.log(2))
