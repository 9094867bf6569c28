"""The `vaekit` command: LightningCLI for training, checkpoint-only commands for everything after.

vaekit fit --config configs/<modality>/<name>.yaml [overrides]
vaekit {sample,reconstruct,interpolate,traverse,translate,evaluate,encode,score} MODEL ...
vaekit export CKPT --out DIR [--onnx]        vaekit push DIR REPO_ID
vaekit recipes [--copy NAME DEST]

MODEL is a .ckpt from `vaekit fit`, a folder from `vaekit export`, or a Hugging Face model id.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from jsonargparse import Namespace
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from tqdm.auto import tqdm

from vaekit import recipes
from vaekit.callbacks import FitSampler, LogMedia, ParameterSummary, ResumableCheckpoint, WriteSamples
from vaekit.checkpoint import ModelRecord, load_datamodule, load_model, read_checkpoint, record_from_checkpoint
from vaekit.core.data import VAEDataModule, label_indices
from vaekit.core.io import atomic_folder, atomic_path, write_text
from vaekit.core.module import VAE, Batch, class_name, map_batch
from vaekit.modalities.registry import ModalityNotFound, get_modality
from vaekit.scoring import CORRECTIONS

LIGHTNING_COMMANDS = ("fit", "validate", "test")


class _WithoutAdverts(logging.Filter):
    """Lightning prints a tip for its hosted logger at every start; vaekit's output stays about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_WithoutAdverts())
# Lightning 2.6 calls a torch pytree API that torch 2.11 deprecates: not the user's to act on.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
# `vaekit fit` hands LightningCLI its own argv (sys.argv also holds "fit"; DDP re-launches from sys.argv).
warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended to run from within Python")


# --------------------------------------------------------------------------- training


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
        earlier = sorted(Path(config.checkpoint.dirpath).glob("*.ckpt"))
        if self.subcommand == "fit" and earlier and not config.get("ckpt_path"):
            raise FileExistsError(
                f"{config.checkpoint.dirpath} already holds checkpoints of an earlier run ({earlier[0].name}); resume "
                f"it with --ckpt_path {Path(config.checkpoint.dirpath) / 'last.ckpt'}, or train into another "
                "--trainer.default_root_dir"
            )
        if config.get("ckpt_path"):  # checked by _parse_ckpt_path; Lightning then reads the tensors as data only
            if config.get("weights_only") is False:
                raise ValueError("--weights_only false is not supported: vaekit loads checkpoints as data only")
            config.weights_only = True

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
        model = {"class_path": class_name(model_class), "init_args": record.model_args}
        self.config = self.parser.parse_object({subcommand: {"model": model}}, self.config)

    def before_fit(self) -> None:
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


# --------------------------------------------------------------------------- checkpoint commands


@dataclasses.dataclass
class Session:
    """A loaded model with its data module, on the chosen device."""

    model: VAE
    record: ModelRecord
    args: argparse.Namespace
    options: dict[str, Any]
    out: Path  # where the command writes: a staging folder for the folder-writing commands
    _datamodule: VAEDataModule | None = None

    @property
    def datamodule(self) -> VAEDataModule:
        if self._datamodule is None:
            self._datamodule = load_datamodule(self.model, self.record, self.args.data_root)
        return self._datamodule

    def prepare(self, batch: Batch) -> Batch:
        """Move a batch to the model's device and apply the data module's device-side transform."""
        batch = map_batch(batch, lambda v: v.to(self.model.device))
        return self.datamodule.on_after_batch_transfer(batch, 0)

    def examples(self, split: str, indices: Sequence[int]) -> Batch:
        self.datamodule.setup("test")
        return self.prepare(self.datamodule.examples(split, indices))

    def inputs(self, items: list[str]) -> Batch:
        if not is_joint(self.model):
            return self.prepare(self.datamodule.load_inputs(items))
        sources = getattr(self.args, "from_", None) or []
        if len(sources) != 1:
            raise ValueError("--input files are of one modality: name it with --from (e.g. --from audio)")
        return self.prepare(self.datamodule.load_part_inputs(sources[0], items))

    def options_for_generation(self) -> dict[str, Any]:
        """The model's generation options at their defaults, for commands without generation flags (evaluate)."""
        options_type = self.model.generation_options
        return {f.name: f.default for f in dataclasses.fields(options_type)} if options_type else {}

    def generate(self, z: torch.Tensor) -> Any:
        # Reconstructions, translations and interpolations follow from z alone unless a flag asks for sampling.
        deterministic = self.args.command in ("reconstruct", "interpolate", "translate")
        return self.model.generate(z, deterministic=deterministic, **self.options)

    def save(self, data: Any, stem: str, nrow: int | None = None) -> list[Path]:
        return self.model.save_outputs(data, self.out, stem, nrow=nrow, **self.options)

    def evaluation_trainer(self, datamodule: VAEDataModule, split: str) -> pl.Trainer:
        """A one-device Lightning trainer over ``split`` of ``datamodule`` (progress bar, device placement)."""
        self.model.eval_iw_samples = getattr(self.args, "iw_samples", 0)
        datamodule.eval_split = split
        if self.args.batch_size:
            datamodule.hparams.eval_batch_size = self.args.batch_size
        elif self.model.eval_iw_samples > 0:
            # The IW estimator works in chunks of iw_max_rows rows whatever the batch size, so batches of that
            # many rows cost no speed and let the progress bar move (and estimate the time) batch by batch.
            rows = self.model.hparams.iw_max_rows // self.model.eval_iw_samples
            datamodule.hparams.eval_batch_size = max(1, rows)
        if getattr(self.args, "max_examples", None):
            # The first N of the split in its own order: text batches are sorted by length, so the first batches
            # would be the shortest sentences rather than a fair share.
            datamodule.setup("test")
            datamodule.keep_first(split, self.args.max_examples)
        return pl.Trainer(
            accelerator=self.args.device,
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
        )


def _in_batches(session: Session, z: torch.Tensor, batch: int = 256) -> list[Any]:
    chunks = list(torch.split(z, batch))
    return [session.generate(c) for c in tqdm(chunks, desc="decoding", disable=len(chunks) < 2)]


def _concat(parts: list[Any]) -> Any:
    """Decoded chunks joined: tensors, lists (sentences), or one of those per modality (a joint model's)."""
    if isinstance(parts[0], dict):
        return {name: _concat([part[name] for part in parts]) for name in parts[0]}
    return torch.cat(parts) if isinstance(parts[0], torch.Tensor) else [x for part in parts for x in part]


def cmd_sample(s: Session) -> list[Path]:
    z = s.model.sample_latents(s.args.num, s.args.temperature, s.args.sampler)
    return s.save(_concat(_in_batches(s, z)), "samples")


def cmd_reconstruct(s: Session) -> list[Path]:
    batch = s.inputs(s.args.input) if s.args.input else s.examples("test", range(s.args.num))
    reconstructions = s.generate(s.model.posterior(batch).mode())
    return s.save(s.model.as_outputs(batch), "inputs") + s.save(reconstructions, "reconstructions")


def cmd_interpolate(s: Session) -> list[Path]:
    if (s.args.a is None) != (s.args.b is None):
        raise SystemExit("give both --a and --b, or neither (then two test examples are used)")
    batch = s.inputs([s.args.a, s.args.b]) if s.args.a is not None else s.examples("test", [0, 1])
    z = s.model.posterior(batch).mode()
    path = s.model.interpolate_latents(z[0], z[1], s.args.steps)
    return s.save(s.generate(path), "interpolation", nrow=s.args.steps)


def cmd_translate(s: Session) -> list[Path]:
    """Decode the ``--to`` modalities from the ``--from`` ones: given files, or the first N tuples of the test split."""
    batch = s.inputs(s.args.input) if s.args.input else s.examples("test", range(s.args.num))
    paths = s.save(s.model.as_outputs(batch), "inputs")
    paths += s.save(s.generate(s.model.posterior(batch).mode()), "translations")
    if not s.args.input:  # which digit (class) each test tuple was, for a reader checking the translations
        names = s.model.spec.label_names
        labels = batch[s.args.from_[0]]["label"].tolist()
        rows = ["index,label"] + [f"{i},{names[y] if 0 <= y < len(names) else y}" for i, y in enumerate(labels)]
        paths.append(write_text(s.out / "labels.csv", "\n".join(rows) + "\n"))
    return paths


def cmd_traverse(s: Session) -> list[Path]:
    latent_dim = s.model.hparams.latent_dim
    dims = s.args.dims if s.args.dims is not None else list(range(min(latent_dim, 10)))
    base = torch.zeros(1, latent_dim, device=s.model.device)
    grid = s.model.traverse_latents(base, dims, s.args.span, s.args.steps)
    paths = s.save(_concat(_in_batches(s, grid)), "traversal", nrow=s.args.steps)
    write_text(s.out / "traversal.json", json.dumps({"dims": dims, "span": s.args.span, "steps": s.args.steps}))
    return paths


def _run_predict(s: Session, datamodule: VAEDataModule | None = None, split: str | None = None) -> dict[str, Any]:
    """Per-example outputs of ``predict_step`` over a split (``--split`` of the model's data by default)."""
    datamodule = datamodule or s.datamodule
    outputs = s.evaluation_trainer(datamodule, split or s.args.split).predict(s.model, datamodule=datamodule)
    return {k: torch.cat([o[k] for o in outputs]).cpu() for k in outputs[0]}


def cmd_evaluate(s: Session) -> list[Path]:
    s.evaluation_trainer(s.datamodule, s.args.split).test(s.model, datamodule=s.datamodule, verbose=False)
    result = {"split": s.args.split, **s.model.evaluation}
    if s.args.classifier:
        from vaekit.coherence import cross_modal_coherence, load_classifiers

        if not is_joint(s.model):
            raise ValueError("--classifier measures cross-modal coherence, which needs a joint (multimodal) model")
        classifiers = load_classifiers(s.args.classifier, list(s.model.parts))
        loader = s.datamodule.loader(s.args.split)
        batches = (s.prepare(batch) for batch in loader)
        result["coherence"] = cross_modal_coherence(
            s.model, batches, classifiers, s.options_for_generation(), s.args.joint_samples, len(loader)
        )
    out = s.out
    write_text(out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return [out]


def cmd_encode(s: Session) -> list[Path]:
    outputs = _run_predict(s)
    arrays = {k: outputs[k].numpy() for k in ("mean", "logvar", "label")}
    paths = [s.out.with_suffix(".npz")]
    if s.args.plot:
        from vaekit.plots import latent_scatter, project_2d

        points, axis = project_2d(outputs["mean"], s.args.projection, s.args.seed)
        arrays["projection"] = points.numpy()  # the plotted coordinates, beside the latents
        label_names = getattr(s.model.spec, "label_names", None) or []
        paths.append(latent_scatter(points, axis, outputs["label"], s.args.plot, label_names))
    with atomic_path(paths[0]) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    return paths


def cmd_score(s: Session) -> list[Path]:
    from vaekit.scoring import anomaly_score, auroc

    correction = s.args.correction
    s.model.score_complexity = correction == "complexity"
    inside = _run_predict(s)
    key = "nll" if "nll" in inside else "neg_elbo"
    # The typical score is that of in-distribution data the model did not train on: the validation split.
    typical = float(_run_predict(s, split="val")[key].mean()) if correction == "typicality" else None
    sets = {"in": inside}
    if s.args.ood_root:
        if is_joint(s.model):
            raise ValueError("--ood-root takes one dataset, and a joint model reads several; score each with --from")
        # Another dataset: the label filters the model was trained with say nothing about its classes.
        ood = load_datamodule(s.model, s.record, s.args.ood_root, labels=None, exclude_labels=None)
        sets["ood"] = _run_predict(s, ood)
    scores = {name: anomaly_score(o[key], correction, typical, o.get("complexity_bits")) for name, o in sets.items()}
    with atomic_path(s.out) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "set", "label", key, "score"])
        for name, outputs in sets.items():
            rows = zip(outputs["label"].tolist(), outputs[key].tolist(), scores[name].tolist(), strict=True)
            for i, (label, raw, score) in enumerate(rows):
                writer.writerow([i, name, label, f"{raw:.6f}", f"{score:.6f}"])
    what = f"{key} with the {correction} correction" if correction != "none" else key
    if "ood" in sets:
        both = torch.cat([scores["in"], scores["ood"]])
        is_ood = torch.cat([torch.zeros(len(scores["in"])), torch.ones(len(scores["ood"]))])
        value = auroc(both, is_ood)
        print(f"AUROC in-distribution vs {s.args.ood_root} ({what}): {'n/a' if value is None else f'{value:.4f}'}")
    if s.args.normal is not None:
        label_names = getattr(s.model.spec, "label_names", None) or []
        labels, normal = inside["label"], torch.tensor(label_indices(s.args.normal, label_names, "--normal"))
        overall = auroc(scores["in"], (~torch.isin(labels, normal)).long())
        if overall is None:
            print("AUROC not computed: the split holds only normal or only anomalous examples")
        else:
            print(f"AUROC ({what}, normal labels {s.args.normal}): {overall:.4f}")
            for value in sorted(set(labels.tolist()) - set(normal.tolist())):
                chosen = torch.isin(labels, normal) | (labels == value)
                name = label_names[value] if 0 <= value < len(label_names) else str(value)
                print(f"  label {name} vs normal: {auroc(scores['in'][chosen], (labels[chosen] == value).long()):.4f}")
    return [s.out]


def cmd_export(s: Session) -> list[Path]:
    from vaekit.export import export_model

    evaluation = json.loads(Path(s.args.evaluation).read_text()) if s.args.evaluation else None
    return export_model(s.model, s.record, s.out, evaluation=evaluation, onnx=s.args.onnx, num_samples=s.args.num)


# Commands that write a folder (staged, then moved into place whole) and those that write single files.
FOLDER_COMMANDS: dict[str, Callable[[Session], list[Path]]] = {
    "sample": cmd_sample,
    "reconstruct": cmd_reconstruct,
    "translate": cmd_translate,
    "interpolate": cmd_interpolate,
    "traverse": cmd_traverse,
    "export": cmd_export,
}
FILE_COMMANDS: dict[str, Callable[[Session], list[Path]]] = {
    "evaluate": cmd_evaluate,
    "encode": cmd_encode,
    "score": cmd_score,
}


GENERATION_COMMANDS = ("sample", "reconstruct", "interpolate", "traverse", "translate")
# Commands that encode data: a joint model's take --from, the modalities to encode (default: all it has).
ENCODING_COMMANDS = ("reconstruct", "interpolate", "encode", "score")


def is_joint(model: VAE) -> bool:
    return model.modality == "multimodal"


def _count(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum``, else a message saying so."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _boolean(text: str) -> bool:
    if text.lower() in ("true", "1", "yes", "on"):
        return True
    if text.lower() in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def _add_options(parser: argparse.ArgumentParser, options_type: type, modality: str) -> None:
    """The plugin's generation options as flags, with the dataclass fields' defaults and help."""
    group = parser.add_argument_group(f"{modality} options")
    for f in dataclasses.fields(options_type):
        kind = _boolean if isinstance(f.default, bool) else (type(f.default) if f.default is not None else str)
        help_ = f.metadata.get("help", "")
        group.add_argument(
            f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=f.default, help=f"{help_} (%(default)s)"
        )


def build_parser(options_type: type | None = None, modality: str = "") -> argparse.ArgumentParser:
    """The command line; with a model's ``options_type`` the generation commands also take its flags."""
    parser = argparse.ArgumentParser(
        prog="vaekit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in LIGHTNING_COMMANDS:
        sub.add_parser(name, help=f"LightningCLI {name}: vaekit {name} --config CONFIG [overrides] (see --help)")
    rec = sub.add_parser("recipes", help="list the shipped recipes, or copy one to edit")
    rec.add_argument("--copy", nargs=2, metavar=("NAME", "DEST"))

    def command(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.add_argument("ckpt", metavar="MODEL", help="a .ckpt from `vaekit fit`, an exported folder or a Hub model id")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--device", default="auto", help="cpu, cuda, mps or auto")
        p.add_argument("--data-root", help="where the data lives now, if it moved since training")
        if name in ENCODING_COMMANDS and modality == "multimodal":
            p.add_argument("--from", dest="from_", nargs="+", metavar="MOD", help="encode these modalities only")
        return p

    def folder_command(name: str, help_: str) -> argparse.ArgumentParser:
        p = command(name, help_)
        p.add_argument("--out", required=True, help="a new or empty folder")
        p.add_argument("--overwrite", action="store_true", help="replace the folder's earlier outputs as a whole")
        if name in GENERATION_COMMANDS:
            if options_type is not None:
                _add_options(p, options_type, modality)
            elif modality:
                p.epilog = f"{modality} models take no flags of their own."
            else:
                p.epilog = (
                    f"The model's own flags (text decoding, audio inversion) are listed by: vaekit {name} MODEL --help"
                )
        return p

    p = folder_command("sample", "draw samples from the prior")
    p.add_argument("--num", type=_count(1), default=16)
    p.add_argument("--temperature", type=float, default=1.0, help="scales the latent distribution's spread")
    p.add_argument(
        "--sampler",
        help="prior, or a post-hoc sampler fitted at the end of training (gmm); default: the model's "
        "default_sampler, the one its recipe's measurements found best",
    )
    p = folder_command("reconstruct", "encode and decode test examples or given inputs")
    p.add_argument("--num", type=_count(1), default=8)
    p.add_argument("--input", nargs="+", help="files (or sentences, for text) to reconstruct")
    p = folder_command("interpolate", "decode the straight line between two encoded inputs")
    p.add_argument("--steps", type=_count(2), default=8)
    p.add_argument("--a")
    p.add_argument("--b")
    p = folder_command("translate", "joint models: decode some modalities from others (speak a digit, draw it)")
    p.add_argument("--from", dest="from_", nargs="+", required=True, metavar="MOD", help="the modalities given")
    p.add_argument("--to", nargs="+", required=True, metavar="MOD", help="the modalities to decode")
    p.add_argument("--input", nargs="+", help="files of the one --from modality (else the test split's tuples)")
    p.add_argument("--num", type=_count(1), default=8, help="test tuples to translate, without --input")
    p = folder_command("traverse", "sweep single latent dimensions around the prior mean")
    p.add_argument("--dims", type=int, nargs="+")
    p.add_argument("--span", type=float, default=3.0)
    p.add_argument("--steps", type=_count(2), default=9)
    for name, help_ in (
        ("evaluate", "ELBO, importance-weighted NLL and latent diagnostics as JSON"),
        ("encode", "posterior means and log-variances (.npz), optionally a 2-D plot"),
        ("score", "per-example anomaly scores (CSV)"),
    ):
        p = command(name, help_)
        p.add_argument("--split", choices=("val", "test"), default="test")
        p.add_argument("--out", required=True)
        p.add_argument("--batch-size", type=_count(1))
        p.add_argument("--max-examples", type=_count(1), help="only the first N examples of the split, in its order")
        if name == "evaluate":
            p.add_argument("--iw-samples", type=_count(0), default=1000, help="0: the ELBO only")
            p.add_argument(
                "--classifier",
                nargs="+",
                metavar="MOD=FILE.onnx",
                help="joint models: a classifier of a modality's decoded outputs (an ONNX graph: outputs -> logits "
                "over the model's labels); adds the cross-modal coherence to the JSON (docs/multimodal.md)",
            )
            p.add_argument(
                "--joint-samples", type=_count(0), default=1000, help="prior samples for the joint coherence"
            )
        if name == "score":
            p.add_argument(
                "--iw-samples", type=_count(0), default=0, help="> 0 scores with the IW NLL instead of -ELBO"
            )
            p.add_argument("--normal", nargs="+", help="labels of normal examples; prints the AUROC, and per label")
            p.add_argument("--ood-root", help="a second dataset of the same modality: scored too, with the AUROC")
            p.add_argument(
                "--correction",
                choices=CORRECTIONS,
                default="none",
                help="typicality: distance from the validation data's typical score; complexity: minus the input's "
                "compressed size in bits (see docs/anomaly.md)",
            )
        if name == "encode":
            p.add_argument("--plot", help="PNG of the latent means, coloured by label, projected to 2-D beyond 2-D")
            p.add_argument("--projection", choices=("pca", "tsne", "umap"), default="pca", help="for --plot")
    p = folder_command("export", "write a shareable folder: config.json, model.safetensors, assets, model card")
    p.add_argument("--onnx", action="store_true", help="also write the decoder (and encoder) as ONNX graphs")
    p.add_argument("--evaluation", help="a JSON file from `vaekit evaluate`, quoted in the model card")
    p.add_argument("--num", type=_count(0), default=16, help="prior samples shown in the model card (0: none)")
    p = sub.add_parser("push", help="upload an exported folder to the Hugging Face Hub")
    p.add_argument("folder", help="a folder written by `vaekit export`")
    p.add_argument("repo_id", help="the model repository, e.g. your-name/mnist-vae (created if missing)")
    p.add_argument("--private", action="store_true")
    p.add_argument("--revision", help="a branch to push to (default: main)")
    return parser


def run_command(argv: list[str]) -> None:
    asks_help = len(argv) > 1 and argv[0] in GENERATION_COMMANDS and bool({"-h", "--help"} & set(argv))
    if asks_help and not argv[1].startswith("-"):  # `vaekit sample MODEL --help`: the model's own flags too
        model, _ = load_model(argv[1])
        build_parser(model.generation_options, model.modality).parse_args(argv)
    args, rest = build_parser().parse_known_args(argv)
    if args.command == "recipes":
        if args.copy:
            print(f"copied to {recipes.copy_recipe(*args.copy)}")
        else:
            for recipe in recipes.list_recipes():
                print(f"{recipe.name:<16} {recipe.summary}")
        return
    if args.command == "push":
        from vaekit.export import push_folder

        if rest:
            raise SystemExit(f"vaekit push: unrecognised arguments: {' '.join(rest)}")
        print(f"uploaded {args.folder} to {push_folder(Path(args.folder), args.repo_id, args.private, args.revision)}")
        return
    pl.seed_everything(args.seed, verbose=False)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model, record = load_model(args.ckpt, device)
    # Parsed again with the model's flags: a flag the command does not use (a decoding flag for evaluate,
    # say) is rejected by argparse, naming it.
    options_type = model.generation_options if args.command in GENERATION_COMMANDS else None
    args = build_parser(options_type, model.modality).parse_args(argv)
    fields = dataclasses.fields(options_type) if options_type else ()
    options = {f.name: getattr(args, f.name) for f in fields}
    choose_modalities(model, args)
    out = Path(args.out)
    with torch.no_grad():
        if args.command in FOLDER_COMMANDS:
            # Everything is written into a hidden staging folder that becomes --out only when complete.
            with atomic_folder(out, args.overwrite) as staging:
                written = FOLDER_COMMANDS[args.command](Session(model, record, args, options, staging))
            paths = [out / p.relative_to(staging) for p in written]
        else:
            paths = FILE_COMMANDS[args.command](Session(model, record, args, options, out))
    print(f"wrote {len(paths)} file(s), e.g. {paths[0]}")


def choose_modalities(model: VAE, args: argparse.Namespace) -> None:
    """A joint model encodes the ``--from`` modalities and decodes the ``--to`` ones; others have one modality."""
    sources, targets = getattr(args, "from_", None), getattr(args, "to", None)
    if not is_joint(model):
        if args.command == "translate":
            raise ValueError(
                f"translate needs a joint model (configs/multimodal/*.yaml); {args.ckpt} is a {model.modality} model"
            )
        return
    for flag, names in (("--from", sources), ("--to", targets)):
        unknown = [n for n in names or [] if n not in model.parts]
        if unknown:
            raise ValueError(f"{flag} {' '.join(unknown)}: the model's modalities are {', '.join(model.parts)}")
    model.observed, model.targets = sources, targets


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in LIGHTNING_COMMANDS:
            run_lightning(argv)
        else:
            run_command(argv)
    except (
        FileNotFoundError,
        FileExistsError,
        PermissionError,
        ValueError,
        FloatingPointError,
        ModalityNotFound,
    ) as err:
        # Bad input gets one readable line; VAEKIT_DEBUG=1 keeps the traceback for bug reports.
        if os.environ.get("VAEKIT_DEBUG"):
            raise
        message = str(err)
        if argv and argv[0] not in LIGHTNING_COMMANDS:  # data errors are phrased for fit; name this command's flag
            message = message.replace("--data.root", "--data-root")
        raise SystemExit(f"vaekit: error: {message} (VAEKIT_DEBUG=1 shows the traceback)") from err


if __name__ == "__main__":
    main()
