"""Running a checkpoint command: load the model, re-parse with its own flags, write the outputs safely."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch

from vaekit.checkpoint import load_model
from vaekit.cli.analyse import cmd_encode, cmd_evaluate, cmd_score
from vaekit.cli.generate import cmd_interpolate, cmd_reconstruct, cmd_sample, cmd_translate, cmd_traverse
from vaekit.cli.parser import GENERATION_COMMANDS, build_parser
from vaekit.cli.session import Session, choose_modalities, is_joint
from vaekit.cli.share import cmd_export
from vaekit.core.io import atomic_folder

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


def model_help(argv: list[str]) -> None:
    """`vaekit sample MODEL --help`: the help with the model's own flags (argparse exits after printing it)."""
    model, _ = load_model(argv[1])
    build_parser(model.generation_options, model.modality, is_joint(model)).parse_args(argv)


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before any work, outputs that would replace the input model (even with --overwrite) or an
    existing file without --overwrite (folder outputs are checked by ``atomic_folder``)."""
    model = Path(args.ckpt).expanduser()
    outputs = [Path(p).expanduser() for p in (args.out, getattr(args, "plot", None)) if p]
    if args.command == "encode":
        outputs[0] = outputs[0].with_suffix(".npz")  # what encode writes
    for out in outputs:
        if model.exists() and _replaces(out, model.resolve()):
            raise FileExistsError(
                f"--out {out} would overwrite the model {args.ckpt} this command reads; choose another --out"
            )
        if args.command in FILE_COMMANDS and out.exists() and not args.overwrite:
            raise FileExistsError(f"{out} already exists; pass --overwrite to replace it, or choose another path")
        if args.command in FILE_COMMANDS and out.is_dir():
            raise IsADirectoryError(f"{out} is a folder; pass a file path")


def _replaces(out: Path, model: Path) -> bool:
    """Whether writing ``out`` (a file, or a folder replaced whole) could destroy ``model`` (a file or folder)."""
    out = out.resolve()
    if out == model or model.is_relative_to(out):  # the model itself, or a folder holding it
        return True
    return model.is_dir() and out.is_relative_to(model) and out.exists()  # a file of the exported folder


def run_command(argv: list[str], args: argparse.Namespace) -> None:
    """Run the checkpoint command that ``args`` (``argv`` parsed without the model's flags) names."""
    check_outputs(args)
    pl.seed_everything(args.seed, verbose=False)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model, record = load_model(args.ckpt, device)
    # Parsed again with the model's flags: a flag the command does not use (a decoding flag for evaluate,
    # say) is rejected by argparse, naming it.
    options_type = model.generation_options if args.command in GENERATION_COMMANDS else None
    args = build_parser(options_type, model.modality, is_joint(model)).parse_args(argv)
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
