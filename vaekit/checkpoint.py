"""Loading a trained model and its data module from a checkpoint file alone."""

from __future__ import annotations

import importlib
import zipfile
from pathlib import Path
from typing import Any

import torch

from vaekit.core.data import VAEDataModule
from vaekit.core.module import CHECKPOINT_KEY, VAE
from vaekit.modalities.registry import get_modality


def _import(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _init_args(hparams: dict[str, Any] | None) -> dict[str, Any]:
    """Constructor arguments from saved hyper-parameters, without LightningCLI's private keys."""
    return {k: v for k, v in (hparams or {}).items() if not k.startswith("_")}


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's contents, or an error saying what the file is and what to pass instead."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such checkpoint; `vaekit fit` writes them under <default_root_dir>/checkpoints"
        )
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path}: not a PyTorch checkpoint (truncated or another kind of file); pass a .ckpt from `vaekit fit`"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for damaged archives
        raise ValueError(f"{path}: cannot be read as a checkpoint ({err}); it may be damaged") from err
    if not isinstance(checkpoint, dict) or CHECKPOINT_KEY not in checkpoint:
        raise ValueError(
            f"{path}: not a vaekit checkpoint (no '{CHECKPOINT_KEY}' entry); pass a .ckpt written by `vaekit fit`"
        )
    return checkpoint


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[VAE, dict[str, Any]]:
    """The model in eval mode on ``device``, and the raw checkpoint (for its data module settings)."""
    checkpoint = read_checkpoint(path)
    meta = checkpoint[CHECKPOINT_KEY]
    modality = get_modality(meta["modality"])
    model_class = _import(meta["model_class"]) if meta.get("model_class") else modality.model
    model = model_class(**_init_args(checkpoint["hyper_parameters"]))
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device).eval(), checkpoint


def load_datamodule(model: VAE, checkpoint: dict[str, Any], root: str | None = None) -> VAEDataModule:
    """The data module the model was trained with (optionally on another ``root``), set up with its spec."""
    meta = checkpoint[CHECKPOINT_KEY]
    hparams = _init_args(checkpoint.get("datamodule_hyper_parameters"))
    if root is not None:
        hparams["root"] = root
    if "root" not in hparams:
        raise ValueError("the checkpoint records no data location; pass --data-root")
    datamodule_class = (
        _import(meta["datamodule_class"]) if meta.get("datamodule_class") else get_modality(meta["modality"]).datamodule
    )
    try:
        datamodule = datamodule_class(**hparams)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err}. The data the model was trained on has moved: pass --data-root") from err
    datamodule.adopt_spec(model.spec)
    return datamodule
