"""`vaekit fit|validate|test`: LightningCLI with vaekit's checkpoints, callbacks and safe resuming."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from jsonargparse import Namespace
from lightning_fabric.plugins import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from vaekit import recipes
from vaekit.callbacks import (
    DurableCheckpointIO,
    FitSampler,
    LogMedia,
    ParameterSummary,
    ResumableCheckpoint,
    WriteSamples,
    step_progress_bar,
)
from vaekit.checkpoint import read_checkpoint, record_from_checkpoint
from vaekit.core.data import VAEDataModule
from vaekit.core.io import RunLock
from vaekit.core.module import VAE, class_name
from vaekit.core.schema import check_arguments
from vaekit.modalities.registry import get_modality


def is_first_process() -> bool:
    """Rank 0 of a run, or a run of one process: the launchers (Lightning's, torchrun, SLURM) set these."""
    return all(os.environ.get(name, "0") == "0" for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


class VAEKitCLI(LightningCLI):
    """LightningCLI with vaekit's defaults: ``<root>/checkpoints/last.ckpt`` always holds the latest state,
    ``best-*.ckpt`` the best by validation ELBO, and samples are written at the end of fit.

    Two checkpoint callbacks, because Lightning's ``save_last`` refreshes last.ckpt only when a monitored
    top-k checkpoint is saved: a run that stops improving would leave a stale last.ckpt to resume from.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ResumableCheckpoint, "best_checkpoint")
        parser.set_defaults(
            {
                "checkpoint.filename": "last",
                "checkpoint.monitor": None,
                "checkpoint.save_top_k": 1,
                "checkpoint.enable_version_counter": False,
                # Also when training stops between validations (max_steps, max_time, check_val_every_n_epoch > 1).
                "checkpoint.save_on_train_epoch_end": True,
                "best_checkpoint.monitor": "val/elbo",
                "best_checkpoint.mode": "max",
                "best_checkpoint.filename": "best-{epoch:03d}-{step:06d}",
                "best_checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(FitSampler, "posthoc")
        parser.add_lightning_class_args(WriteSamples, "samples")
        parser.add_lightning_class_args(LogMedia, "media")
        parser.add_lightning_class_args(ParameterSummary, "summary")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        default = str(Path(config.trainer.default_root_dir or ".") / "checkpoints")
        self.defaulted_dirpaths = [key for key in ("checkpoint", "best_checkpoint") if config[key].dirpath is None]
        for key in self.defaulted_dirpaths:
            config[key].dirpath = default
        if config.trainer.logger in (None, True):  # TensorBoard for people, CSV for scripts, in one version folder
            root = config.trainer.default_root_dir or "."
            config.trainer.logger = [
                Namespace(class_path=f"pytorch_lightning.loggers.{name}", init_args=Namespace(save_dir=root))
                for name in ("TensorBoardLogger", "CSVLogger")
            ]
        if config.get("ckpt_path"):  # checked by _parse_ckpt_path; Lightning then reads the tensors as data only
            if config.get("weights_only") is False:
                raise ValueError("--weights_only false is not supported: vaekit loads checkpoints as data only")
            config.weights_only = True

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        """Lightning's trainer, its progress bar showing the training loss read at logging steps only."""
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks = [step_progress_bar(callback) for callback in trainer.callbacks]
        return trainer

    def _parse_ckpt_path(self) -> None:
        """Resuming restores the model's arguments from the checkpoint, as Lightning's does, but through vaekit's
        safe path: readable errors, finite weights, and the class looked up in the plugin registry instead of
        importing the ``_class_path`` string the file holds."""
        subcommand = self.config.get("subcommand")
        ckpt_path = subcommand and self.config[subcommand].get("ckpt_path")
        if not ckpt_path:
            return
        record = record_from_checkpoint(read_checkpoint(ckpt_path), ckpt_path)
        record.check()
        configured = self.config[subcommand].model.class_path  # the user's own config, imported when parsed
        module, _, name = configured.rpartition(".")
        modality = getattr(importlib.import_module(module), name).modality
        if record.modality != modality:
            raise ValueError(
                f"{ckpt_path}: the checkpoint holds a {record.modality!r} model but this config trains a "
                f"{modality!r} model ({configured}); resume with the config it was trained with"
            )
        model_class = get_modality(record.modality).resolve(record.model_class, VAE)
        check_arguments(model_class, record.model_args, f"{ckpt_path}: model arguments")  # before jsonargparse
        model = {"class_path": class_name(model_class), "init_args": record.model_args}
        self.config = self.parser.parse_object({subcommand: {"model": model}}, self.config)

    def _run_subcommand(self, subcommand: str) -> None:
        """A fit holds its checkpoint folder's lock while it runs, and refuses a folder of an earlier run."""
        if subcommand != "fit" or not is_first_process():
            super()._run_subcommand(subcommand)
            return
        config = self.config[subcommand]
        folder = Path(config.checkpoint.dirpath)
        lock = RunLock(config.trainer.default_root_dir or ".")
        lock.acquire()  # before the check, so two runs started together cannot both pass it
        try:
            earlier = sorted(folder.glob("*.ckpt"))
            if earlier and not config.get("ckpt_path"):
                raise FileExistsError(
                    f"{folder} already holds checkpoints of an earlier run ({earlier[0].name}); resume it with "
                    f"--ckpt_path {folder / 'last.ckpt'}, or train into another --trainer.default_root_dir"
                )
            super()._run_subcommand(subcommand)
        finally:
            lock.release()

    def before_fit(self) -> None:
        if type(self.trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # not a user's own checkpoint IO
            self.trainer.strategy.checkpoint_io = DurableCheckpointIO()
        # The run's full config travels in its checkpoints: `vaekit export` writes it as the model's recipe.
        config = self.config[self.subcommand].clone()
        config.ckpt_path = None  # the recipe trains from scratch; resuming stays an explicit choice
        for key in self.defaulted_dirpaths:  # so a re-run writes under its own default_root_dir
            config[key].dirpath = None
        self.model.recipe = self._parser(self.subcommand).dump(config, skip_none=False, skip_check=True)

    def after_fit(self) -> None:
        best = next((c for c in self.trainer.callbacks if isinstance(c, ResumableCheckpoint)), None)
        last = self.trainer.checkpoint_callback
        if last is None or not self.trainer.is_global_zero:
            return
        lines = [f"checkpoints: {last.dirpath}", f"  last.ckpt: the final state (step {self.trainer.global_step})"]
        if best is not None and best.best_model_path:
            lines.append(
                f"  {Path(best.best_model_path).name}: the best {best.monitor} ({float(best.best_model_score):.4g})"
            )
            why = "among the top --best_checkpoint.save_top_k" if best.save_top_k != 1 else "from an earlier run"
            for path in sorted(Path(best.dirpath).glob("best-*.ckpt")):
                if str(path) != best.best_model_path:
                    lines.append(f"  {path.name}: {why}")
        print("\n".join(lines))


def build_cli(argv: list[str], **kwargs: Any) -> VAEKitCLI:
    """vaekit's LightningCLI over ``argv``, with ``--config`` names resolved to the shipped recipes."""
    argv = list(argv)
    for i, arg in enumerate(argv[:-1]):
        if arg in ("--config", "-c"):
            argv[i + 1] = recipes.resolve_config(argv[i + 1])
    return VAEKitCLI(
        VAE,
        VAEDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=argv,
        auto_configure_optimizers=False,
        trainer_defaults={"enable_model_summary": False},  # the `summary` callback prints it, without FLOPs
        **kwargs,
    )


def run_lightning(argv: list[str]) -> None:
    build_cli(argv, save_config_kwargs={"overwrite": True})
