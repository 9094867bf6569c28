"""Training throughput of a recipe under `vaekit fit` (Lightning) against plain PyTorch loops.

All loops train the same network from the same initial weights on batches from the same data module, in one
process, alternating (plain, resident, Lightning, plain, ...) so drift of the machine hits all. Two baselines:
``plain``, the loop a user writes with the data module's DataLoader, and ``resident``, the same loop given the
data already on the device (``core/resident.py``). Lightning runs with the recipe's settings plus the
overrides given (``--model.compile true``, ``--data.on_device false``...).
Lightning runs as a recipe does (progress bar, metrics logged every step); validation and checkpointing are
off in both since the plain loop has neither. Lightning logs at the recipe's ``log_every_n_steps``. Reports examples/s, data units/s (pixels, tokens,
spectrogram cells) and the ratio Lightning / plain, by wall clock and by this process's CPU time.
The CPU-time ratio is the one to read on a shared machine: other processes' load does not enter it
(use --threads 1 there, so idle OpenMP threads spinning do not count either).

    python -m benchmarks.throughput --config configs/image/mnist.yaml --data.root ../shared/data/mnist
    python -m benchmarks.throughput --config ... --batch-sizes 64 256 1024 4096   # a sweep, one row per size
    python -m benchmarks.throughput --config ... --profile out/profile.txt         # where a Lightning step goes

The learning rate does not enter throughput; for training at large batches vaekit's rule is the square root
(Adam): ``--model.lr`` = 1e-3 * sqrt(batch / 128), as in docs/training.md.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import statistics
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from benchmarks import markdown_table, write_json
from vaekit.callbacks import step_progress_bar
from vaekit.cli.fit import build_cli
from vaekit.core.data import VAEDataModule
from vaekit.core.module import VAE
from vaekit.core.resident import DeviceBatches


class StepTimer(pl.Callback):
    """Wall time from the first timed step to the end of the last, skipping ``warmup`` steps.

    The device is synchronised at both ends only, and units are summed on the device, so the timer adds no
    host sync to the steps it times.
    """

    def __init__(self, warmup: int, last: int) -> None:
        self.warmup, self.last = warmup, last
        self.start = self.end = self.cpu_start = self.cpu_end = 0.0
        self.examples = self.units = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            synchronize()
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step > self.warmup:
            self.examples += len(batch["x"])
            self.units = self.units + pl_module.num_units(batch).sum()
        if trainer.global_step == self.last:
            synchronize()
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
    timer = StepTimer(warmup, last=steps + warmup)
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
    trainer.callbacks = [step_progress_bar(callback) for callback in trainer.callbacks]  # as `vaekit fit` runs
    trainer.fit(model, datamodule=datamodule)
    return _rates(timer.end - timer.start, timer.cpu_end - timer.cpu_start, timer.examples, int(timer.units))


def _rates(seconds: float, cpu_seconds: float, examples: int, units: int) -> dict[str, float]:
    return {
        "seconds": seconds,
        "examples_per_s": examples / seconds,
        "units_per_s": units / seconds,
        "examples_per_cpu_s": examples / cpu_seconds,
    }


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resident_batches(datamodule: VAEDataModule) -> DeviceBatches:
    """The training split on the device, batched there: the same data the Lightning run gets on a GPU."""
    return DeviceBatches(
        datamodule.split("train"),
        device(),
        datamodule.batch_indices("train", shuffle=True),
        functools.partial(datamodule.collate, split="train"),
        datamodule.HOST_COLUMNS,
    )


def run_plain(model: VAE, datamodule: VAEDataModule, steps: int, warmup: int, resident: bool) -> dict[str, float]:
    """The baseline: for batch in loader: move, transform, loss, backward, step. Nothing else."""
    model = model.to(device()).train()
    optimizer = model.configure_optimizers()
    datamodule.trainer = None  # no trainer: the DataLoader a user's own loop gets, even after a Lightning run
    batches = resident_batches(datamodule) if resident else datamodule.train_dataloader()
    examples = units = 0
    step, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while step < steps + warmup:
        for batch in batches:
            if step == warmup:
                synchronize()
                start, cpu_start = time.perf_counter(), time.process_time()
            batch = datamodule.on_after_batch_transfer(datamodule.transfer_batch_to_device(batch, device(), 0), 0)
            loss = model.bound_terms(batch, model.objective, model.beta(step)).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step >= warmup:
                examples += len(batch["x"])
                units = units + model.num_units(batch).sum()  # on the device: no sync in the timed loop
            step += 1
            if step == steps + warmup:
                break
    synchronize()
    return _rates(time.perf_counter() - start, time.process_time() - cpu_start, examples, int(units))


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def profile_lightning(model: VAE, datamodule: VAEDataModule, steps: int, log_every: int, out: Path) -> None:
    """Lightning's steps under torch.profiler: the operators by time on the device and the host."""
    from pytorch_lightning.profilers import PyTorchProfiler

    profiler = PyTorchProfiler(dirpath=str(out.parent), filename=out.stem, sort_by_key="cuda_time_total"
                               if torch.cuda.is_available() else "cpu_time_total", row_limit=40)  # fmt: skip
    trainer = pl.Trainer(accelerator="auto", devices=1, max_steps=steps, limit_val_batches=0, num_sanity_val_steps=0,
                         enable_checkpointing=False, log_every_n_steps=log_every, default_root_dir=str(out.parent),
                         profiler=profiler, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, datamodule=datamodule)


def measure(config: str, overrides: list[str], args: argparse.Namespace) -> dict[str, object]:
    """One batch size: the three loops, ``repeats`` times each, alternating."""
    pl.seed_everything(0, verbose=False)
    model, datamodule, log_every = build(config, overrides)
    initial = copy.deepcopy(model.state_dict())
    runs: dict[str, list[dict[str, float]]] = {"plain": [], "resident": [], "lightning": []}
    root = Path("benchmarks/results/throughput")
    for _ in range(args.repeats):
        for name in runs:
            model.load_state_dict(initial)
            if name == "lightning":
                runs[name].append(run_lightning(model, datamodule, args.steps, args.warmup, log_every, root))
            else:
                runs[name].append(run_plain(model, datamodule, args.steps, args.warmup, name == "resident"))
    result: dict[str, object] = {"batch_size": datamodule.hparams.batch_size, "log_every_n_steps": log_every}
    for name, rates in runs.items():
        result[f"{name}_examples_per_s"] = statistics.median(r["examples_per_s"] for r in rates)
        result[f"{name}_units_per_s"] = statistics.median(r["units_per_s"] for r in rates)
    for baseline in ("plain", "resident"):
        wall = [
            ln["examples_per_s"] / b["examples_per_s"] for ln, b in zip(runs["lightning"], runs[baseline], strict=True)
        ]
        cpu = [
            ln["examples_per_cpu_s"] / b["examples_per_cpu_s"]
            for ln, b in zip(runs["lightning"], runs[baseline], strict=True)
        ]
        result[f"ratio_to_{baseline}"] = statistics.median(wall)
        result[f"ratio_to_{baseline}_runs"] = wall
        result[f"cpu_time_ratio_to_{baseline}"] = statistics.median(cpu)
    if args.profile:
        model.load_state_dict(initial)
        profile_lightning(model, datamodule, args.warmup + args.steps, log_every, Path(args.profile))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=int, default=200, help="timed optimiser steps per run")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[], help="a sweep (default: the recipe's)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    parser.add_argument("--profile", help="also profile Lightning's steps into this file (at the first batch size)")
    parser.add_argument("--out", help="write the result as JSON here too")
    args, overrides = parser.parse_known_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = args.batch_sizes or [None]
    rows = []
    for size in sizes:
        extra = ["--data.batch_size", str(size)] if size else []
        profile, args.profile = args.profile, args.profile if size == sizes[0] else None
        rows.append(measure(args.config, overrides + extra, args))
        args.profile = profile
        print(json.dumps(rows[-1], indent=2), flush=True)
    result = {
        "config": args.config,
        "overrides": overrides,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "rows": rows,
    }
    header = ["batch", "plain ex/s", "resident ex/s", "vaekit fit ex/s", "fit / plain", "fit / resident"]
    keys = [("plain_examples_per_s", ".0f"), ("resident_examples_per_s", ".0f"), ("lightning_examples_per_s", ".0f"),
            ("ratio_to_plain", ".2f"), ("ratio_to_resident", ".2f")]  # fmt: skip
    ordered = sorted(rows, key=lambda r: r["batch_size"])
    print(markdown_table(header, [[str(r["batch_size"])] + [format(r[k], f) for k, f in keys] for r in ordered]))
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
