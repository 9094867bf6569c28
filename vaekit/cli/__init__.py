"""The `vaekit` command: LightningCLI for training, checkpoint-only commands for everything after.

This module and ``parser`` import nothing heavy: `vaekit --help`, `vaekit recipes` and argument errors
answer without torch, Lightning or the plugins, which each command imports when it runs.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from vaekit.cli.parser import GENERATION_COMMANDS, LIGHTNING_COMMANDS, build_parser
from vaekit.errors import ModalityNotFound


class _WithoutAdverts(logging.Filter):
    """Lightning prints a tip for its hosted logger at every start; vaekit's output stays about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def quiet_library_noise() -> None:
    """Filters for messages that are not the user's to act on; set when a command runs, not at import."""
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_WithoutAdverts())
    # Lightning 2.6 calls a torch pytree API that newer torch deprecates.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # `vaekit fit` hands LightningCLI its own argv (sys.argv also holds "fit"; DDP re-launches from sys.argv).
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended to run from within Python")


def dispatch(argv: list[str]) -> None:
    if argv and argv[0] in LIGHTNING_COMMANDS:
        from vaekit.cli.fit import run_lightning

        run_lightning(argv)
        return
    asks_help = len(argv) > 1 and argv[0] in GENERATION_COMMANDS and bool({"-h", "--help"} & set(argv))
    if asks_help and not argv[1].startswith("-"):  # `vaekit sample MODEL --help`: the model's own flags too
        from vaekit.cli.commands import model_help

        model_help(argv)
    args, rest = build_parser().parse_known_args(argv)
    if args.command == "recipes":
        from vaekit import recipes

        if args.copy:
            print(f"copied to {recipes.copy_recipe(*args.copy)}")
        else:
            for recipe in recipes.list_recipes():
                print(f"{recipe.name:<16} {recipe.summary}")
    elif args.command == "push":
        from vaekit.export import push_folder

        if rest:
            raise SystemExit(f"vaekit push: unrecognised arguments: {' '.join(rest)}")
        print(
            f"uploaded {args.folder} to {push_folder(Path(args.folder), args.repo_id, args.private, args.revision, args.space)}"
        )
    elif args.command == "explore":
        from vaekit.cli.explore import cmd_explore

        if rest:
            raise SystemExit(f"vaekit explore: unrecognised arguments: {' '.join(rest)}")
        cmd_explore(args)
    else:
        from vaekit.cli.commands import run_command

        run_command(argv, args)


# Errors that are the user's input or machine (bad files, full disks), not vaekit's bugs: one line each.
USER_ERRORS = (OSError, ValueError, FloatingPointError, ModalityNotFound, RecursionError, MemoryError)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or bool(os.environ.get("VAEKIT_DEBUG"))
    argv = [a for a in argv if a != "--debug"]
    quiet_library_noise()
    try:
        dispatch(argv)
    except USER_ERRORS as err:
        # Bad input gets one readable line; --debug (or VAEKIT_DEBUG=1) keeps the traceback for bug reports.
        if debug:
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        if argv and argv[0] not in LIGHTNING_COMMANDS:  # data errors are phrased for fit; name this command's flag
            message = message.replace("--data.root", "--data-root")
        raise SystemExit(f"vaekit: error: {message} (--debug shows the traceback)") from err
