"""Training throughput of a recipe under `vaekit fit` (Lightning) against a plain PyTorch loop.

Both loops train the same network from the same initial weights on batches from the same data
module, in one process, alternating (plain, Lightning, plain, ...) so drift of the machine hits both.
Lightning runs as a recipe does (progress bar, metrics logged every step); validation and checkpointing are
off in both since the plain loop has neither. Lightning logs at the recipe's ``log_every_n_steps``. Reports examples/s, data units/s (pixels, tokens,
spectrogram cells) and the ratio Lightning / plain, by wall clock and by this process's CPU time.
The CPU-time ratio is the one to read on a shared machine: other processes' load does not enter it
(use --threads 1 there, so idle OpenMP threads spinning do not count either).

    python -m benchmarks.throughput --config configs/image/mnist.yaml --data.root ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from vaekit.cli.fit import build_cli
from vaekit.core.data import VAEDataModule
from vaekit.core.module import VAE


class StepTimer(pl.Callback):
    """Wall time from the first timed step to the last, skipping ``warmup`` steps."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = self.end = self.cpu_start = self.cpu_end = 0.0
        self.examples = self.units = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step > self.warmup:
            self.examples += len(batch["x"])
            self.units += int(pl_module.num_units(batch).sum())
        self.end, self.cpu_end = time.perf_counter(), time.process_time()


def build(config: str, overrides: list[str]) -> tuple[VAE, VAEDataModule, int]:
    """Model, data module and the recipe's logging interval, from the config as `vaekit fit` reads it."""
    cli = build_cli(["--config", config, *overrides], run=False, save_config_callback=None)
    cli.datamodule.setup("fit")
    cli.model.attach_spec(cli.datamodule.spec)
    return cli.model, cli.datamodule, cli.trainer.log_every_n_steps


def run_lightning(
    model: VAE, datamodule: VAEDataModule, steps: int, warmup: int, log_every: int, root: Path
) -> dict[str, float]:
    timer = StepTimer(warmup)
    trainer = pl.Trainer(
        accelerator="auto",
        devices=1,
        max_steps=steps + warmup,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        log_every_n_steps=log_every,
        default_root_dir=str(root),
        callbacks=[timer],
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=datamodule)
    return _rates(timer.end - timer.start, timer.cpu_end - timer.cpu_start, timer.examples, timer.units)


def _rates(seconds: float, cpu_seconds: float, examples: int, units: int) -> dict[str, float]:
    return {
        "seconds": seconds,
        "examples_per_s": examples / seconds,
        "units_per_s": units / seconds,
        "examples_per_cpu_s": examples / cpu_seconds,
    }


def run_plain(model: VAE, datamodule: VAEDataModule, steps: int, warmup: int) -> dict[str, float]:
    """The baseline: for batch in loader: move, transform, loss, backward, step. Nothing else."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).train()
    optimizer = model.configure_optimizers()
    examples = units = 0
    step, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while step < steps + warmup:
        for batch in datamodule.train_dataloader():
            if step == warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start, cpu_start = time.perf_counter(), time.process_time()
            batch = datamodule.on_after_batch_transfer({k: v.to(device) for k, v in batch.items()}, 0)
            loss = model.elbo_terms(batch, model.beta(step)).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step >= warmup:
                examples += len(batch["x"])
                units += int(model.num_units(batch).sum())
            step += 1
            if step == steps + warmup:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return _rates(time.perf_counter() - start, time.process_time() - cpu_start, examples, units)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=int, default=200, help="timed optimiser steps per run")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    parser.add_argument("--out", help="write the result as JSON here too")
    args, overrides = parser.parse_known_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pl.seed_everything(0, verbose=False)
    model, datamodule, log_every = build(args.config, overrides)
    initial = copy.deepcopy(model.state_dict())
    plain, lightning = [], []
    root = Path("benchmarks/results/throughput")
    for _ in range(args.repeats):
        model.load_state_dict(initial)
        plain.append(run_plain(model, datamodule, args.steps, args.warmup))
        model.load_state_dict(initial)
        lightning.append(run_lightning(model, datamodule, args.steps, args.warmup, log_every, root))
    ratios = [ln["examples_per_s"] / pl_["examples_per_s"] for ln, pl_ in zip(lightning, plain, strict=True)]
    cpu_ratios = [
        ln["examples_per_cpu_s"] / pl_["examples_per_cpu_s"] for ln, pl_ in zip(lightning, plain, strict=True)
    ]
    result = {
        "config": args.config,
        "overrides": overrides,
        "batch_size": datamodule.hparams.batch_size,
        "steps": args.steps,
        "log_every_n_steps": log_every,
        "threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "plain_examples_per_s": statistics.median(r["examples_per_s"] for r in plain),
        "lightning_examples_per_s": statistics.median(r["examples_per_s"] for r in lightning),
        "plain_units_per_s": statistics.median(r["units_per_s"] for r in plain),
        "lightning_units_per_s": statistics.median(r["units_per_s"] for r in lightning),
        "wall_ratios": ratios,
        "wall_ratio_median": statistics.median(ratios),
        "cpu_time_ratios": cpu_ratios,
        "cpu_time_ratio_median": statistics.median(cpu_ratios),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
