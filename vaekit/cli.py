"""The `vaekit` command: LightningCLI for training, checkpoint-only commands for everything after.

vaekit fit --config configs/<modality>/<name>.yaml [overrides]
vaekit {sample,reconstruct,interpolate,traverse,evaluate,encode,score} MODEL ...
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
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from tqdm.auto import tqdm

from vaekit import recipes
from vaekit.callbacks import WriteSamples
from vaekit.checkpoint import ModelRecord, load_datamodule, load_model, read_checkpoint, record_from_checkpoint
from vaekit.core.data import VAEDataModule
from vaekit.core.io import atomic_folder, atomic_path, write_text
from vaekit.core.module import VAE, Batch, class_name
from vaekit.modalities.registry import ModalityNotFound, get_modality

LIGHTNING_COMMANDS = ("fit", "validate", "test")


# --------------------------------------------------------------------------- training


class VAEKitCLI(LightningCLI):
    """LightningCLI with vaekit's defaults: ``<root>/checkpoints/last.ckpt`` always holds the latest state,
    ``best-*.ckpt`` the best by validation ELBO, and samples are written at the end of fit.

    Two checkpoint callbacks, because Lightning's ``save_last`` refreshes last.ckpt only when a monitored
    top-k checkpoint is saved: a run that stops improving would leave a stale last.ckpt to resume from.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ModelCheckpoint, "best_checkpoint")
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
        parser.add_lightning_class_args(WriteSamples, "samples")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        default = str(Path(config.trainer.default_root_dir or ".") / "checkpoints")
        self.defaulted_dirpaths = [key for key in ("checkpoint", "best_checkpoint") if config[key].dirpath is None]
        for key in self.defaulted_dirpaths:
            config[key].dirpath = default
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
        callback = self.trainer.checkpoint_callback
        if callback is not None and self.trainer.is_global_zero:
            print(f"checkpoints: {callback.dirpath} (last: {Path(callback.dirpath) / 'last.ckpt'})")


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
        batch = {k: v.to(self.model.device) for k, v in batch.items()}
        return self.datamodule.on_after_batch_transfer(batch, 0)

    def examples(self, split: str, indices: Sequence[int]) -> Batch:
        datamodule = self.datamodule
        datamodule.setup("test")
        if split not in datamodule.splits:
            raise ValueError(f"the data has no {split!r} split")
        size = len(next(iter(datamodule.splits[split].values())))
        if max(indices) >= size:
            raise ValueError(f"asked for example {max(indices)} but the {split} split has {size}")
        return self.prepare({k: v[list(indices)] for k, v in datamodule.splits[split].items()})

    def inputs(self, items: list[str]) -> Batch:
        return self.prepare(self.datamodule.load_inputs(items))

    def generate(self, z: torch.Tensor) -> Any:
        return self.model.generate(z, **self.options)

    def evaluation_trainer(self) -> pl.Trainer:
        """A one-device Lightning trainer over ``--split`` (progress bar, device placement), set up from the flags."""
        self.model.eval_iw_samples = getattr(self.args, "iw_samples", 0)
        self.datamodule.eval_split = self.args.split
        if self.args.batch_size:
            self.datamodule.hparams.eval_batch_size = self.args.batch_size
        max_examples = getattr(self.args, "max_examples", None)
        batch_size = self.datamodule.hparams.eval_batch_size or self.datamodule.hparams.batch_size
        limit = math.ceil(max_examples / batch_size) if max_examples else 1.0
        return pl.Trainer(
            accelerator=self.args.device,
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            limit_test_batches=limit,
            limit_predict_batches=limit,
        )


def _in_batches(session: Session, z: torch.Tensor, batch: int = 256) -> list[Any]:
    chunks = list(torch.split(z, batch))
    return [session.generate(c) for c in tqdm(chunks, desc="decoding", disable=len(chunks) < 2)]


def _concat(parts: list[Any]) -> Any:
    return torch.cat(parts) if isinstance(parts[0], torch.Tensor) else [x for part in parts for x in part]


def cmd_sample(s: Session) -> list[Path]:
    z = s.model.sample_latents(s.args.num, s.args.temperature)
    return s.model.save_outputs(_concat(_in_batches(s, z)), s.out, "samples")


def cmd_reconstruct(s: Session) -> list[Path]:
    batch = s.inputs(s.args.input) if s.args.input else s.examples("test", range(s.args.num))
    reconstructions = s.generate(s.model.posterior(batch).mode())
    paths = s.model.save_outputs(s.model.as_outputs(batch), s.out, "inputs")
    return paths + s.model.save_outputs(reconstructions, s.out, "reconstructions")


def cmd_interpolate(s: Session) -> list[Path]:
    if (s.args.a is None) != (s.args.b is None):
        raise SystemExit("give both --a and --b, or neither (then two test examples are used)")
    batch = s.inputs([s.args.a, s.args.b]) if s.args.a is not None else s.examples("test", [0, 1])
    z = s.model.posterior(batch).mode()
    path = s.model.interpolate_latents(z[0], z[1], s.args.steps)
    return s.model.save_outputs(s.generate(path), s.out, "interpolation", nrow=s.args.steps)


def cmd_traverse(s: Session) -> list[Path]:
    latent_dim = s.model.hparams.latent_dim
    dims = s.args.dims if s.args.dims is not None else list(range(min(latent_dim, 10)))
    base = torch.zeros(1, latent_dim, device=s.model.device)
    grid = s.model.traverse_latents(base, dims, s.args.span, s.args.steps)
    paths = s.model.save_outputs(_concat(_in_batches(s, grid)), s.out, "traversal", nrow=s.args.steps)
    write_text(s.out / "traversal.json", json.dumps({"dims": dims, "span": s.args.span, "steps": s.args.steps}))
    return paths


def _run_predict(s: Session) -> dict[str, torch.Tensor]:
    outputs = s.evaluation_trainer().predict(s.model, datamodule=s.datamodule)
    return {k: torch.cat([o[k] for o in outputs]).cpu() for k in outputs[0]}


def cmd_evaluate(s: Session) -> list[Path]:
    s.evaluation_trainer().test(s.model, datamodule=s.datamodule, verbose=False)
    result = {"split": s.args.split, **s.model.evaluation}
    out = s.out
    write_text(out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return [out]


def cmd_encode(s: Session) -> list[Path]:
    outputs = _run_predict(s)
    out = s.out.with_suffix(".npz")
    with atomic_path(out) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, mean=outputs["mean"].numpy(), logvar=outputs["logvar"].numpy(), label=outputs["label"].numpy())
    paths = [out]
    if s.args.plot:
        from vaekit.plots import latent_scatter

        label_names = getattr(s.model.spec, "label_names", None) or []
        paths.append(latent_scatter(outputs["mean"], outputs["label"], s.args.plot, label_names))
    return paths


def cmd_score(s: Session) -> list[Path]:
    outputs = _run_predict(s)
    score_key = "nll" if "nll" in outputs else "neg_elbo"
    scores, labels = outputs[score_key], outputs["label"]
    out = s.out
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "label", score_key])
        for i, (label, score) in enumerate(zip(labels.tolist(), scores.tolist(), strict=True)):
            writer.writerow([i, label, f"{score:.6f}"])
    if s.args.normal is not None:
        from torchmetrics.functional.classification import binary_auroc

        normal = torch.tensor([int(n) for n in s.args.normal])
        is_anomaly = (~torch.isin(labels, normal)).long()
        if 0 < int(is_anomaly.sum()) < len(is_anomaly):
            # Min-max scaling keeps the ranking (all AUROC sees) and stops torchmetrics applying a sigmoid.
            scaled = (scores - scores.min()) / (scores.max() - scores.min()).clamp(min=1e-12)
            auroc = float(binary_auroc(scaled, is_anomaly))
            print(f"AUROC ({score_key} as anomaly score, normal labels {s.args.normal}): {auroc:.4f}")
        else:
            print("AUROC not computed: the split holds only normal or only anomalous examples")
    return [out]


def cmd_export(s: Session) -> list[Path]:
    from vaekit.export import export_model

    evaluation = json.loads(Path(s.args.evaluation).read_text()) if s.args.evaluation else None
    return export_model(s.model, s.record, s.out, evaluation=evaluation, onnx=s.args.onnx, num_samples=s.args.num)


# Commands that write a folder (staged, then moved into place whole) and those that write single files.
FOLDER_COMMANDS: dict[str, Callable[[Session], list[Path]]] = {
    "sample": cmd_sample,
    "reconstruct": cmd_reconstruct,
    "interpolate": cmd_interpolate,
    "traverse": cmd_traverse,
    "export": cmd_export,
}
FILE_COMMANDS: dict[str, Callable[[Session], list[Path]]] = {
    "evaluate": cmd_evaluate,
    "encode": cmd_encode,
    "score": cmd_score,
}


def build_parser() -> argparse.ArgumentParser:
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
        return p

    def folder_command(name: str, help_: str) -> argparse.ArgumentParser:
        p = command(name, help_)
        p.add_argument("--out", required=True, help="a new or empty folder")
        p.add_argument("--overwrite", action="store_true", help="replace the folder's earlier outputs as a whole")
        return p

    p = folder_command("sample", "draw samples from the prior")
    p.add_argument("--num", type=int, default=16)
    p.add_argument("--temperature", type=float, default=1.0, help="scales the prior's standard deviation")
    p = folder_command("reconstruct", "encode and decode test examples or given inputs")
    p.add_argument("--num", type=int, default=8)
    p.add_argument("--input", nargs="+", help="files (or sentences, for text) to reconstruct")
    p = folder_command("interpolate", "decode the straight line between two encoded inputs")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--a")
    p.add_argument("--b")
    p = folder_command("traverse", "sweep single latent dimensions around the prior mean")
    p.add_argument("--dims", type=int, nargs="+")
    p.add_argument("--span", type=float, default=3.0)
    p.add_argument("--steps", type=int, default=9)
    for name, help_ in (
        ("evaluate", "ELBO, importance-weighted NLL and latent diagnostics as JSON"),
        ("encode", "posterior means and log-variances (.npz), optionally a 2-D plot"),
        ("score", "per-example anomaly scores (CSV)"),
    ):
        p = command(name, help_)
        p.add_argument("--split", choices=("val", "test"), default="test")
        p.add_argument("--out", required=True)
        p.add_argument("--batch-size", type=int)
        p.add_argument("--max-examples", type=int, help="only the first N examples (rounded up to whole batches)")
        if name == "evaluate":
            p.add_argument("--iw-samples", type=int, default=1000)
        if name == "score":
            p.add_argument("--iw-samples", type=int, default=0, help="> 0 scores with the IW NLL instead of -ELBO")
            p.add_argument("--normal", nargs="+", help="labels of normal examples; prints the AUROC of the scores")
        if name == "encode":
            p.add_argument("--plot", help="PNG of the latent means, coloured by label (PCA beyond 2-D)")
    p = folder_command("export", "write a shareable folder: config.json, model.safetensors, assets, model card")
    p.add_argument("--onnx", action="store_true", help="also write the decoder (and encoder) as ONNX graphs")
    p.add_argument("--evaluation", help="a JSON file from `vaekit evaluate`, quoted in the model card")
    p.add_argument("--num", type=int, default=16, help="prior samples shown in the model card (0: none)")
    p = sub.add_parser("push", help="upload an exported folder to the Hugging Face Hub")
    p.add_argument("folder", help="a folder written by `vaekit export`")
    p.add_argument("repo_id", help="the model repository, e.g. your-name/mnist-vae (created if missing)")
    p.add_argument("--private", action="store_true")
    p.add_argument("--revision", help="a branch to push to (default: main)")
    return parser


def _options_parser(options_type: type | None) -> argparse.ArgumentParser:
    """Flags for a plugin's generation options, built from its dataclass fields."""
    parser = argparse.ArgumentParser(prog="vaekit (modality options)", add_help=False)
    for f in dataclasses.fields(options_type) if options_type else ():
        kind = type(f.default) if f.default is not None else str
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=f.default)
    return parser


def run_command(argv: list[str]) -> None:
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
    extra, unknown = _options_parser(model.generation_options).parse_known_args(rest)
    if unknown:
        raise SystemExit(
            f"vaekit {args.command}: unrecognised arguments for a {model.modality} model: {' '.join(unknown)}"
        )
    out = Path(args.out)
    with torch.no_grad():
        if args.command in FOLDER_COMMANDS:
            # Everything is written into a hidden staging folder that becomes --out only when complete.
            with atomic_folder(out, args.overwrite) as staging:
                written = FOLDER_COMMANDS[args.command](Session(model, record, args, vars(extra), staging))
            paths = [out / p.relative_to(staging) for p in written]
        else:
            paths = FILE_COMMANDS[args.command](Session(model, record, args, vars(extra), out))
    print(f"wrote {len(paths)} file(s), e.g. {paths[0]}")


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
        raise SystemExit(f"vaekit: error: {err} (VAEKIT_DEBUG=1 shows the traceback)") from err


if __name__ == "__main__":
    main()
