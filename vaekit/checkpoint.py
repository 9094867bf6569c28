"""The one way vaekit opens a saved model: a Lightning checkpoint, an exported folder, or a Hub model id.

Opening a stranger's file runs none of its code. Tensors come through ``torch.load(weights_only=True)`` or
safetensors; everything else is plain data (``vaekit.core.plain``); the classes a file names are looked up
among those the installed plugins register, never imported; and constructor arguments are parsed by
jsonargparse against the class signature, as a YAML config is, so nested options (``beta``) come back as
the objects the constructor expects.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vaekit.core.data import VAEDataModule, is_hub_id
from vaekit.core.module import CHECKPOINT_FORMAT, CHECKPOINT_KEY, VAE
from vaekit.core.plain import instantiate, nonfinite_tensors, oversized_views, without_private
from vaekit.core.schema import check_fields, check_plain, check_value, shorten
from vaekit.errors import ModalityNotFound
from vaekit.modalities.registry import get_modality

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
EXPORT_FORMAT = "vaekit-model"


@dataclass(frozen=True)
class ModelRecord:
    """What a saved model holds besides its weights, all plain data: enough to rebuild model and data module."""

    modality: str
    model_class: str | None
    model_args: dict[str, Any]
    datamodule_class: str | None
    data_args: dict[str, Any]
    spec: dict[str, Any]
    recipe: str = ""
    vaekit_version: str = ""
    global_step: int | None = None
    epoch: int | None = None
    source: str = field(default="", compare=False)

    def check(self) -> None:
        """Refuse anything that is not plain data or that names code to import."""
        for name in ("model_args", "data_args", "spec"):
            check_plain(getattr(self, name), f"{self.source}: {name}")


@dataclass(frozen=True)
class CheckpointMeta:
    """The schema of what vaekit writes under a checkpoint's ``vaekit`` entry (format 1 lacked the last three)."""

    modality: str
    spec: dict[str, Any] | None = None
    model_class: str | None = None
    datamodule_class: str | None = None
    format: int = 1
    vaekit_version: str = "0.1.0"
    recipe: str = ""


@dataclass(frozen=True)
class ExportedConfig:
    """The schema of an exported folder's ``config.json``."""

    format: str
    modality: str
    model_args: dict[str, Any]
    data_args: dict[str, Any]
    spec: dict[str, Any]
    model_class: str | None = None
    datamodule_class: str | None = None
    vaekit_version: str = ""
    plugin: dict[str, str] | None = None
    assets: dict[str, list[str]] | None = None
    training: dict[str, int | str | None] | None = None
    recipe: str = ""


# --------------------------------------------------------------------------- reading


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's contents, read without unpickling code; errors say what the file is and what to do."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such checkpoint; `vaekit fit` writes them under <default_root_dir>/checkpoints "
            "(an exported folder or a Hugging Face model id works too)"
        )
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path}: not a PyTorch checkpoint (truncated or another kind of file); pass a .ckpt from `vaekit fit`"
        )
    try:
        # mmap: tensors are read when used, so the optimiser state a command never touches stays on disk.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # an UnpicklingError for code, several types for damaged archives
        if isinstance(err, pickle.UnpicklingError):
            raise ValueError(
                f"{path}: refused, the file holds Python objects other than tensors and plain data, and loading them "
                "could run code. vaekit checkpoints never do; only open it if you trust its author, and then "
                "convert it with `vaekit export` from a vaekit that trusts it"
            ) from err
        raise ValueError(f"{path}: cannot be read as a checkpoint ({err}); it may be damaged") from err
    if not isinstance(checkpoint, dict) or CHECKPOINT_KEY not in checkpoint or "state_dict" not in checkpoint:
        raise ValueError(
            f"{path}: not a vaekit checkpoint (no '{CHECKPOINT_KEY}' entry); pass a .ckpt written by `vaekit fit`"
        )
    lying = oversized_views(checkpoint)
    if lying:
        raise ValueError(
            f"{path}: refused, {len(lying)} tensor(s) claim more data than the file stores (e.g. {lying[0]}); "
            "vaekit never writes such views, so the file was crafted or damaged"
        )
    check_finite(checkpoint["state_dict"], path)
    return checkpoint


def check_finite(state: dict[str, torch.Tensor], where: str | Path) -> None:
    bad = nonfinite_tensors(state)
    if bad:
        raise ValueError(
            f"{where}: the model's weights are not finite ({len(bad)} tensors hold NaN or infinity, e.g. {bad[0]}): "
            "it was saved after training diverged. Use an earlier checkpoint, or retrain with a lower --model.lr "
            "or --trainer.gradient_clip_val 1.0"
        )


def record_from_checkpoint(checkpoint: dict[str, Any], source: str | Path) -> ModelRecord:
    meta = checkpoint[CHECKPOINT_KEY]
    if not isinstance(meta, dict) or not isinstance(meta.get("modality"), str):
        raise ValueError(f"{source}: its '{CHECKPOINT_KEY}' entry is damaged (no modality)")
    version = meta.get("format", 1)
    if isinstance(version, int) and not isinstance(version, bool) and version > CHECKPOINT_FORMAT:
        raise ValueError(f"{source}: written by a newer vaekit ({shorten(meta.get('vaekit_version'))}); upgrade vaekit")
    check_fields(CheckpointMeta, meta, f"{source}: {CHECKPOINT_KEY}")
    for key in ("hyper_parameters", "datamodule_hyper_parameters"):  # their contents: ``ModelRecord.check``
        if not isinstance(checkpoint.get(key) or {}, dict):
            raise ValueError(f"{source}: {key} is a {type(checkpoint[key]).__name__}, not an object of arguments")
    for key in ("global_step", "epoch"):
        check_value(checkpoint.get(key), int | None, f"{source}: {key}")
    return ModelRecord(
        modality=meta["modality"],
        model_class=meta.get("model_class"),
        model_args=without_private(checkpoint.get("hyper_parameters")),
        datamodule_class=meta.get("datamodule_class"),
        data_args=without_private(checkpoint.get("datamodule_hyper_parameters")),
        spec=meta.get("spec") or {},
        recipe=meta.get("recipe", ""),
        vaekit_version=meta.get("vaekit_version", "0.1.0"),
        global_step=checkpoint.get("global_step"),
        epoch=checkpoint.get("epoch"),
        source=str(source),
    )


def read_exported(folder: Path) -> tuple[ModelRecord, dict[str, torch.Tensor]]:
    """The record and weights of a folder written by `vaekit export`: JSON and safetensors, nothing to unpickle."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(
            f"{folder}: not an exported vaekit model (it needs {CONFIG_FILE} and {WEIGHTS_FILE}); "
            "pass a .ckpt, a folder written by `vaekit export`, or a Hugging Face model id"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{config_path}: not valid JSON ({type(err).__name__}: {err}); re-export the model") from err
    if not isinstance(config, dict) or config.get("format") != EXPORT_FORMAT:
        raise ValueError(f'{config_path}: not a vaekit model config (no "format": "{EXPORT_FORMAT}")')
    check_fields(ExportedConfig, config, str(config_path))
    modality_class = get_modality(str(config.get("modality"))).resolve(config.get("model_class"), VAE)
    spec = dict(config.get("spec") or {})
    for filename, fields in modality_class.spec_assets.items():
        spec.update(read_asset(folder / filename, fields))
    try:
        state = load_file(weights_path)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{weights_path}: not a safetensors file ({err}); re-export the model") from err
    training = config.get("training") or {}
    record = ModelRecord(
        modality=config["modality"],
        model_class=config.get("model_class"),
        model_args=config.get("model_args") or {},
        datamodule_class=config.get("datamodule_class"),
        data_args=config.get("data_args") or {},
        spec=spec,
        recipe=config.get("recipe", ""),
        vaekit_version=config.get("vaekit_version", ""),
        global_step=training.get("global_step"),
        epoch=training.get("epoch"),
        source=str(folder),
    )
    check_finite(state, weights_path)
    return record, state


def read_asset(path: Path, fields: tuple[str, ...]) -> dict[str, Any]:
    """Spec fields kept as a plain file: the text itself for one string field, else a JSON object."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; the exported folder is incomplete, re-export the model")
    try:
        text = path.read_text(encoding="utf-8")
        if len(fields) == 1 and fields[0].endswith("_json"):
            return {fields[0]: text}
        values = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{path}: not valid JSON text ({type(err).__name__}: {err}); re-export the model") from err
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a JSON object with {', '.join(fields)}; re-export the model")
    missing = [f for f in fields if f not in values]
    if missing:
        raise ValueError(f"{path}: lacks {', '.join(missing)}; re-export the model")
    return {f: values[f] for f in fields}


def resolve_source(name: str | Path) -> Path:
    """A local checkpoint file or exported folder; a Hub model id is downloaded (config, weights, assets)."""
    path = Path(name).expanduser()
    if path.exists() or not is_hub_id(str(name), owner_required=True) or str(name).endswith(".ckpt"):
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(name), allow_patterns=["*.json", "*.safetensors", "*.md"]))
    except Exception as err:  # the hub raises many types: connection, not found, gated
        raise FileNotFoundError(
            f"{name!r} is neither a local checkpoint or folder nor a loadable Hugging Face model "
            f"({type(err).__name__}: {err})"
        ) from err


# --------------------------------------------------------------------------- building


def build_model(record: ModelRecord, state: dict[str, torch.Tensor]) -> VAE:
    """The model a record describes, with ``state`` loaded; shape mismatches are named, not raised raw."""
    record.check()
    model_class = get_modality(record.modality).resolve(record.model_class, VAE)
    check_size(model_class, record, state)
    model = instantiate(model_class, record.model_args, f"{record.source}: model arguments")
    model.restore_spec(record.modality, record.spec)
    model.recipe = record.recipe
    model.restore_samplers(state)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"{record.source}: the weights do not fit the model its arguments describe ({str(err).splitlines()[0]} "
            f"...); the file was altered or comes from an incompatible vaekit"
        ) from err
    return model


def check_size(model_class: type[VAE], record: ModelRecord, state: dict[str, torch.Tensor]) -> None:
    """Refuse a model whose arguments describe more weights than the file holds, before allocating any:
    the architecture is first built on the meta device, where tensors have shapes but no memory."""
    try:
        with torch.device("meta"):
            probe = instantiate(model_class, record.model_args, f"{record.source}: model arguments")
            probe.restore_spec(record.modality, record.spec)
    except ModalityNotFound:
        raise
    except ValueError as err:  # named by the file, as every error about a saved model
        raise ValueError(str(err) if str(err).startswith(record.source) else f"{record.source}: {err}") from err
    except Exception as err:  # whatever a constructor raises on sizes it was never meant to see
        raise ValueError(
            f"{record.source}: its arguments do not describe a model that can be built "
            f"({type(err).__name__}: {shorten(str(err))}); the file was altered or comes from an incompatible vaekit"
        ) from err
    needed = sum(t.numel() for t in probe.state_dict().values())
    held = sum(t.numel() for t in state.values())
    if needed > held:
        raise ValueError(
            f"{record.source}: its arguments describe a model of {needed:,} values but its weights hold {held:,}; "
            "the file was altered or comes from an incompatible vaekit"
        )


def load_model(source: str | Path, device: str | torch.device = "cpu") -> tuple[VAE, ModelRecord]:
    """The model in eval mode on ``device``, and its record (for the data module), from any saved form."""
    path = resolve_source(source)
    if path.is_dir():
        record, state = read_exported(path)
    else:
        checkpoint = read_checkpoint(path)
        record, state = record_from_checkpoint(checkpoint, path), checkpoint["state_dict"]
    return build_model(record, state).to(device).eval(), record


def load_datamodule(model: VAE, record: ModelRecord, root: str | None = None, **overrides: Any) -> VAEDataModule:
    """The data module the model was trained with (optionally on another ``root``, or with other arguments),
    set up with its spec."""
    args = {**record.data_args, **overrides}
    if root is not None:
        args["root"] = root
    if "root" not in args:
        raise ValueError(f"{record.source} records no data location; pass --data-root")
    datamodule_class = get_modality(record.modality).resolve(record.datamodule_class, VAEDataModule)
    try:
        datamodule = instantiate(datamodule_class, args, f"{record.source}: data arguments")
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err}. The data the model was trained on has moved: pass --data-root") from err
    datamodule.adopt_spec(model.spec)
    return datamodule
