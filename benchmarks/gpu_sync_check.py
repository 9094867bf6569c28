"""No host sync in a training step, on a GPU: each recipe trains under ``torch.cuda.set_sync_debug_mode("error")``
from a step's start to its end, except the logging steps (where Lightning reads the logged values). A sync
raises, naming the operation. The CPU proof of the same is tests/test_sync.py.

    python -m benchmarks.gpu_sync_check configs/image/tiny.yaml [more configs] [-- LightningCLI overrides]
"""

from __future__ import annotations

import sys
import tempfile
import traceback

import pytorch_lightning as pl
import torch

from vaekit.cli.fit import build_cli

LOG_EVERY = 10


class NoSyncInSteps(pl.Callback):
    """Sync debugging set to ``error`` inside every step that is not a logging step."""

    def __init__(self) -> None:
        self.checked = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step > 0 and (trainer.global_step + 1) % LOG_EVERY:  # the first step makes state once
            torch.cuda.set_sync_debug_mode("error")
            self.checked += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        torch.cuda.set_sync_debug_mode("default")


def check(config: str, overrides: list[str]) -> int:
    callback = NoSyncInSteps()
    with tempfile.TemporaryDirectory() as root:
        args = ["--config", config, "--trainer.default_root_dir", root, "--trainer.max_steps", "40",
                "--trainer.log_every_n_steps", str(LOG_EVERY), "--trainer.enable_progress_bar", "true",
                "--trainer.limit_val_batches", "0", "--samples.num", "0", "--posthoc.components", "0",
                "--model.default_sampler", "prior", *overrides]  # fmt: skip
        cli = build_cli(args, run=False)
        cli.trainer.callbacks.append(callback)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return callback.checked


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("gpu_sync_check needs a CUDA device")
    argv = sys.argv[1:]
    configs, overrides = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    failed = 0
    for config in configs:  # each config checked even when one before it syncs: one run names every sync
        try:
            print(f"{config}: {check(config, overrides)} steps without a host sync", flush=True)
        except Exception:
            failed += 1
            print(f"{config}: a host sync (or another error) in a step:\n{traceback.format_exc()}", flush=True)
    sys.exit(failed)


if __name__ == "__main__":
    main()
