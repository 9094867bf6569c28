"""Callbacks every recipe gets from `vaekit fit`: samples at the end, media while training, honest checkpoints."""

from __future__ import annotations

import errno
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint, ModelSummary, RichProgressBar, TQDMProgressBar
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from pytorch_lightning.utilities.model_summary import get_human_readable_count

from vaekit.core.io import atomic_path
from vaekit.core.module import VAE, map_batch
from vaekit.core.samplers import SAMPLERS


@dataclass
class Preview:
    """Prior samples from fixed latents, and a split's first examples beside their reconstructions."""

    samples: Any
    inputs: Any = None
    reconstructions: Any = None


def preview(pl_module: VAE, datamodule: Any, split: str, num: int, seed: int) -> Preview:
    """Decoded in eval mode under a forked RNG, so previews never disturb training's random stream."""
    was_training = pl_module.training
    pl_module.eval()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        result = Preview(pl_module.generate(pl_module.sample_latents(num, sampler="prior")))
        if datamodule is not None and split in getattr(datamodule, "splits", {}):
            batch = next(iter(datamodule.loader(split)))
            batch = map_batch(batch, lambda v: v[:num].to(pl_module.device))
            batch = datamodule.on_after_batch_transfer(batch, 0)
            result.inputs = pl_module.as_outputs(batch)
            result.reconstructions = pl_module.generate(pl_module.posterior(batch).mode(), deterministic=True)
    pl_module.train(was_training)
    return result


class WriteSamples(pl.Callback):
    """At the end of fit, write prior samples, and test inputs beside their reconstructions, under
    ``<default_root_dir>/samples``. So a finished run leaves something to look at. ``num=0`` turns it off.
    """

    def __init__(self, num: int = 16, seed: int = 0) -> None:
        self.num = num
        self.seed = seed

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: VAE) -> None:
        if self.num <= 0 or trainer.interrupted:
            return
        out_dir = Path(trainer.default_root_dir) / "samples"
        shown = preview(pl_module, trainer.datamodule, "test", self.num, self.seed)
        paths = pl_module.save_outputs(shown.samples, out_dir, "prior")
        for name in pl_module.samplers:  # a fitted post-hoc sampler's samples beside the prior's
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                paths += pl_module.save_outputs(
                    pl_module.generate(pl_module.sample_latents(self.num, sampler=name)), out_dir, name
                )
        if shown.inputs is not None:
            paths += pl_module.save_outputs(shown.inputs, out_dir, "inputs")
            paths += pl_module.save_outputs(shown.reconstructions, out_dir, "reconstructions")
        rank_zero_info(f"samples written to {out_dir} ({len(paths)} files)")


def posterior_means(pl_module: VAE, datamodule: Any, split: str, max_examples: int) -> torch.Tensor:
    """E_q[z|x] of at most ``max_examples`` examples of ``split`` (a seeded random choice), in eval mode."""
    was_training = pl_module.training
    pl_module.eval()
    means = []
    with torch.no_grad():
        for batch in datamodule.batches(split, max_examples, 256):
            batch = map_batch(batch, lambda v: v.to(pl_module.device))
            means.append(pl_module.posterior(datamodule.on_after_batch_transfer(batch, 0)).mean)
    pl_module.train(was_training)
    return torch.cat(means)


class FitSampler(pl.Callback):
    """At the end of training, fit a Gaussian mixture of ``components`` to the aggregate posterior (the posterior
    means of at most ``max_examples`` training examples) and save it into ``last.ckpt``: `vaekit sample MODEL
    --sampler gmm` then draws where the data's codes are. ``components=0`` turns it off.
    """

    def __init__(
        self, components: int = 10, max_examples: int = 10000, seed: int = 0, kind: Literal["gmm"] = "gmm"
    ) -> None:
        self.components, self.max_examples, self.seed, self.kind = components, max_examples, seed, kind

    def setup(self, trainer: pl.Trainer, pl_module: VAE, stage: str) -> None:
        chosen = pl_module.hparams.get("default_sampler", "prior")
        if chosen != "prior" and self.components <= 0:
            raise ValueError(
                f"--model.default_sampler {chosen} needs the sampler fitted at the end of training; "
                "set --posthoc.components above 0 or --model.default_sampler prior"
            )

    def on_train_end(self, trainer: pl.Trainer, pl_module: VAE) -> None:
        if self.components <= 0 or trainer.interrupted or trainer.datamodule is None:
            return
        codes = posterior_means(pl_module, trainer.datamodule, "train", self.max_examples)
        sampler = SAMPLERS[self.kind].fit(codes, self.components, self.seed)
        pl_module.samplers[self.kind] = sampler.to(pl_module.device)
        # Every rank fitted the same mixture (same data, same seed); saving is collective, so agree on the file.
        lasts = {Path(c.dirpath) / "last.ckpt" for c in trainer.checkpoint_callbacks if c.dirpath}
        for last in sorted(lasts):
            if trainer.strategy.broadcast(last.exists()):
                trainer.save_checkpoint(last, weights_only=False)  # a full checkpoint: resuming from it works
        rank_zero_info(
            f"fitted a {sampler.means.shape[0]}-component Gaussian mixture to the training codes: "
            "`vaekit sample MODEL --sampler gmm` draws from it"
        )


class LogMedia(pl.Callback):
    """At each validation, send TensorBoard what a person would look at: prior samples (fixed latents, so
    runs and epochs compare), validation inputs and reconstructions, and the per-dimension KL as a histogram
    (collapse shows as mass at zero). Each modality turns its data into images, audio or text (``log_media``).
    """

    def __init__(self, num: int = 8, seed: int = 0) -> None:
        self.num = num
        self.seed = seed

    @rank_zero_only
    def on_validation_end(self, trainer: pl.Trainer, pl_module: VAE) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if self.num <= 0 or trainer.sanity_checking or not loggers:
            return
        writer, step = loggers[0].experiment, trainer.global_step
        shown = preview(pl_module, trainer.datamodule, "val", self.num, self.seed)
        pl_module.log_media(writer, "samples/prior", shown.samples, step)
        if shown.inputs is not None:
            pl_module.log_media(writer, "samples/val_inputs", shown.inputs, step)
            pl_module.log_media(writer, "samples/val_reconstructions", shown.reconstructions, step)
        if pl_module.last_kl_per_dim is not None:  # val/kl_per_dim_mc under a mixture prior (an estimate)
            writer.add_histogram(f"val/{pl_module.bottleneck.diagnostic_name}", pl_module.last_kl_per_dim, step)


class LoggingStepMetrics:
    """For Lightning's progress bars: the training loss shown as read at the logging steps only (every
    ``log_every_n_steps``), where Lightning reads the logged values for the loggers anyway.

    Reading a value is a device sync on a GPU, and Lightning reads every value logged with ``prog_bar=True`` after
    every step, whether a bar shows it or not: the host then waits for each step's kernels before launching the
    next. So the training step logs its loss without ``prog_bar`` and the bar fetches it here. Between logging
    steps the bar still moves and times every step, showing the loss last read."""

    shown_loss: float | None = None

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)  # type: ignore[misc]
        logging_step = trainer.log_every_n_steps > 0 and trainer.global_step % trainer.log_every_n_steps == 0
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None and (logging_step or not trainer.training):
            self.shown_loss = float(loss)
        if self.shown_loss is not None:
            metrics["train/loss"] = self.shown_loss
        return metrics


class StepTQDMProgressBar(LoggingStepMetrics, TQDMProgressBar):
    """Lightning's TQDM bar, showing the training loss read at logging steps."""


class StepRichProgressBar(LoggingStepMetrics, RichProgressBar):
    """Lightning's Rich bar (its default where ``rich`` is installed), showing the training loss read at logging
    steps."""


def step_progress_bar(bar: pl.Callback) -> pl.Callback:
    """Lightning's own bar as one that shows the training loss; any other callback (a user's bar too) as it is."""
    kinds = {TQDMProgressBar: StepTQDMProgressBar, RichProgressBar: StepRichProgressBar}
    if type(bar) not in kinds:
        return bar
    return kinds[type(bar)](refresh_rate=bar.refresh_rate, leave=bar._leave)


class DurableCheckpointIO(TorchCheckpointIO):
    """Checkpoint files that no crash can lose: written to a temporary file in the checkpoint's own folder,
    flushed to disk, then renamed over the old one (``atomic_path``). Lightning's own save stages the file in
    the system's temporary folder, and on another filesystem (a cluster's shared disk, a mounted volume) its
    final move truncates the old checkpoint before copying: kill -9 then left a 0-byte last.ckpt. A failed
    write (a full disk) leaves the previous file intact and says so in one line. URLs (``s3://``) keep
    Lightning's fsspec transaction."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        try:
            with atomic_path(path, durable=True) as tmp:
                torch.save(checkpoint, tmp)
        except (OSError, RuntimeError) as err:  # torch.save reports a failed write as a RuntimeError
            free = shutil.disk_usage(Path(path).parent).free
            raise OSError(
                errno.ENOSPC if free < 1 << 20 else errno.EIO,
                f"could not write {path} ({str(err).splitlines()[0]}; {free >> 20} MB free there). The previous "
                "checkpoint is intact: free some space, then resume with --ckpt_path",
            ) from err


class ResumableCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint that, on resume, counts the best files already in its folder among its top-k.

    ``last.ckpt`` is written at the end of the training epoch, before that epoch's validation saves a new
    best, so the state it restores may not know the newest ``best-*.ckpt``; each of those files holds its own
    score. Adopting them means a better model replaces them instead of sitting beside them unexplained.
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        prefix = self.filename.split("{")[0] if self.filename and "{" in self.filename else None
        if not prefix or self.dirpath is None or self.monitor is None:
            return
        for path in Path(self.dirpath).glob(f"{prefix}*{self.FILE_EXTENSION}"):
            if str(path) in self.best_k_models:
                continue
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as err:  # a truncated file (written by vaekit < 0.3, or damaged): set aside
                aside = path.with_name(path.name + ".damaged")
                path.rename(aside)
                rank_zero_warn(f"{path} cannot be read ({type(err).__name__}); moved aside to {aside.name}")
                continue
            score = saved.get("callbacks", {}).get(self.state_key, {}).get("best_model_score")
            if score is not None:
                self.best_k_models[str(path)] = score
        if self.best_k_models:
            better, worse = (min, max) if self.mode == "min" else (max, min)
            self.best_model_path = better(self.best_k_models, key=lambda p: float(self.best_k_models[p]))
            self.best_model_score = self.best_k_models[self.best_model_path]
            self.kth_best_model_path = worse(self.best_k_models, key=lambda p: float(self.best_k_models[p]))
            self.kth_value = self.best_k_models[self.kth_best_model_path]


class ParameterSummary(ModelSummary):
    """Lightning's model summary without its FLOPs figure, which reads 0 for models with no example input."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        columns = {name: values for name, values in summary_data}
        rows = [
            f"  {name:<12} {kind:<22} {params:>8}"
            for name, kind, params in zip(columns["Name"], columns["Type"], columns["Params"], strict=True)
            if params.strip() != "0"  # the metric and prior modules hold no parameters
        ]
        rank_zero_info(
            "model:\n" + "\n".join(rows) + f"\n  {get_human_readable_count(trainable_parameters)} trainable "
            f"of {get_human_readable_count(total_parameters)} parameters ({model_size:.1f} MB)"
        )
