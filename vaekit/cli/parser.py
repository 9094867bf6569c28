"""The argument tree of the checkpoint commands: plain argparse, so `vaekit --help` and argument errors import
neither torch nor Lightning nor the plugins."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable

from vaekit.scoring import CORRECTIONS

USAGE = """\
vaekit fit --config configs/<modality>/<name>.yaml [overrides]
vaekit {sample,reconstruct,interpolate,traverse,translate,evaluate,encode,score} MODEL ...
vaekit export CKPT --out DIR [--onnx]        vaekit push DIR REPO_ID
vaekit recipes [--copy NAME DEST]

MODEL is a .ckpt from `vaekit fit`, a folder from `vaekit export`, or a Hugging Face model id.
"""

LIGHTNING_COMMANDS = ("fit", "validate", "test")
GENERATION_COMMANDS = ("sample", "reconstruct", "interpolate", "traverse", "translate")
# Commands that encode data: a joint model's take --from, the modalities to encode (default: all it has).
ENCODING_COMMANDS = ("reconstruct", "interpolate", "encode", "score")


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


def build_parser(options_type: type | None = None, modality: str = "", joint: bool = False) -> argparse.ArgumentParser:
    """The command line; with a model's ``options_type`` the generation commands also take its flags."""
    parser = argparse.ArgumentParser(
        prog="vaekit", description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter
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
        if name in ENCODING_COMMANDS and joint:
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
        p.add_argument("--out", required=True, help="a new file")
        p.add_argument("--overwrite", action="store_true", help="replace an existing --out (and --plot)")
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
            p.add_argument(
                "--normal",
                nargs="+",
                help="labels of normal examples; prints the AUROC, and per label (default: the labels the model's "
                "data names normal, as a table's label column does)",
            )
            p.add_argument("--input", nargs="+", help="files to score instead of the split (rows of a table, say)")
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
    p.add_argument("--space", action="store_true", help="also app.py and requirements.txt: a Gradio Space of the page")
    p = command("explore", "a local web page to play with the model: sample, sliders, interpolate, reconstruct")
    p.add_argument("--port", type=_count(1), default=7860)
    p.add_argument("--host", default="127.0.0.1", help="the address to serve on (0.0.0.0: every machine can reach it)")
    p = sub.add_parser("push", help="upload an exported folder to the Hugging Face Hub")
    p.add_argument("folder", help="a folder written by `vaekit export`")
    p.add_argument("repo_id", help="the model repository, e.g. your-name/mnist-vae (created if missing)")
    p.add_argument("--private", action="store_true")
    p.add_argument("--revision", help="a branch to push to (default: main)")
    p.add_argument("--space", action="store_true", help="push as a Gradio Space (a folder from `export --space`)")
    return parser
