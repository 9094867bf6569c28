"""Memory against data size, on-disk against in-memory throughput, and DDP scaling on the CPU.

Every figure is a `vaekit fit` run (the CLI's own code path) in a fresh process, timed by a step callback
after a warm-up and measured for peak resident memory (``ru_maxrss``, which counts the pages of the
memory-mapped cache the run touched). The cache is built in a separate process first, so the fit
figures are the training's own; the build's peak is reported too.

    python -m benchmarks.data_scaling memory --images 10000 100000 300000 --audio 3000 12000 48000
    python -m benchmarks.data_scaling throughput --images 10000 100000 --audio 3000 12000 --repeats 3
    python -m benchmarks.data_scaling ddp --data-root ../shared/data/mnist

Generated data goes under ``--work`` (default /tmp/vaekit-bench): PNGs cut from MNIST and WAVs hard-linked
from FSDD (``--mnist``/``--fsdd``), never into the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl

from benchmarks.throughput import StepTimer

STEP_TIMER = "benchmarks.data_scaling.FitTimer"
# The generated audio folders' speakers are FSDD's renamed: hold out validation and test speakers at random.
AUDIO = ("--data.val_speakers", "null", "--data.test_speakers", "null",
         "--data.name_pattern", r"^(?P<label>\d+)_(?P<speaker>[^_]+)_\d+$")  # fmt: skip


class FitTimer(StepTimer):
    """The throughput benchmark's step timer, given as a `vaekit fit` callback; prints its figures on exit."""

    def __init__(self, warmup: int = 20) -> None:
        super().__init__(warmup)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        steps = trainer.global_step - self.warmup
        seconds = self.end - self.start
        if trainer.is_global_zero:
            result = {"steps_per_s": steps / seconds, "examples_per_s": self.examples / seconds}
            print("FIT_TIMER " + json.dumps(result), flush=True)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(argv: list[str]) -> None:
    """One `vaekit fit` (or, with ``prepare``, one data-module setup) in this process; prints its peak RSS."""
    if argv[0] == "prepare":
        from vaekit.cli.fit import build_cli

        cli = build_cli(argv[1:], run=False, save_config_callback=None)
        cli.datamodule.setup("fit")
    else:
        from vaekit.cli import main

        main(["fit", *argv])
    print("PEAK_RSS_MB " + json.dumps(_peak_mb()), flush=True)


def run_child(argv: list[str], threads: int = 2) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.data_scaling", "child", *argv], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, float] = {"wall_s": time.perf_counter() - start}
    for line in proc.stdout.splitlines():
        if line.startswith("PEAK_RSS_MB "):
            result["peak_rss_mb"] = json.loads(line.split(" ", 1)[1])
        if line.startswith("FIT_TIMER "):
            result.update(json.loads(line.split(" ", 1)[1]))
    return result


# --------------------------------------------------------------------------- data


def png_folder(work: Path, mnist: Path, count: int) -> Path:
    """``count`` MNIST digits as PNGs in root/<label>/, made once (the first images of a larger folder linked)."""
    from PIL import Image

    from vaekit.modalities.image import read_idx

    root = work / f"png-{count}"
    if (root / ".done").exists():
        return root
    images = read_idx(mnist, "train-images-idx3-ubyte", 2051)
    labels = read_idx(mnist, "train-labels-idx1-ubyte", 2049)
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / str(labels[i % len(labels)])
        folder.mkdir(parents=True, exist_ok=True)
        image = images[i % len(images)]
        if i >= len(images):  # shift repeats by a pixel or two so no two files are equal
            image = np.roll(image, tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))
        Image.fromarray(image).save(folder / f"{i:06d}.png")
    (root / ".done").touch()
    return root


def wav_folder(work: Path, fsdd: Path, count: int) -> Path:
    """``count`` recordings: FSDD's files hard-linked under new speaker names (``take`` k of ``{speaker}{k}``)."""
    root = work / f"wav-{count}"
    if (root / ".done").exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    sources = sorted(fsdd.glob("*.wav"))
    for i in range(count):
        source = sources[i % len(sources)]
        digit, speaker, take = source.stem.split("_")
        target = root / f"{digit}_{speaker}{i // len(sources)}_{take}.wav"
        if not target.exists():
            os.link(source, target)
    (root / ".done").touch()
    return root


# --------------------------------------------------------------------------- benchmarks


def fit_args(config: str, root: Path, run: Path, steps: int, *extra: str) -> list[str]:
    """`vaekit fit` arguments for a short timed run into ``run`` (emptied first: fit refuses a used root)."""
    shutil.rmtree(run, ignore_errors=True)
    return [
        "--config", config, "--data.root", str(root), "--trainer.default_root_dir", str(run),
        "--trainer.max_steps", str(steps), "--trainer.max_epochs", "-1", "--trainer.limit_val_batches", "2",
        "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false", "--samples.num", "0",
        *extra,
    ]  # fmt: skip


def memory(args: argparse.Namespace) -> dict:
    work, cache = Path(args.work), Path(args.work) / "cache"
    os.environ["VAEKIT_CACHE"] = str(cache)
    results: dict[str, list] = {"image": [], "audio": []}
    jobs = [("image", "configs/image/tiny.yaml", n, png_folder(work, Path(args.mnist), n)) for n in args.images]
    jobs += [("audio", "configs/audio/tiny.yaml", n, wav_folder(work, Path(args.fsdd), n)) for n in args.audio]
    for kind, config, count, root in jobs:
        extra = AUDIO if kind == "audio" else ()
        row: dict = {"examples": count}
        build = fit_args(config, root, work / "run", 0, *extra, "--data.in_memory", "false")
        row["cache_build"] = run_child(["prepare", *build])
        for where in ("false", "true"):
            timer = (f"--trainer.callbacks+={STEP_TIMER}", "--trainer.callbacks.warmup", str(args.warmup))
            argv = fit_args(config, root, work / f"run-{kind}-{count}-{where}", args.steps, *extra, *timer)
            row["on_disk" if where == "false" else "in_memory"] = run_child([*argv, "--data.in_memory", where])
        results[kind].append(row)
        print(json.dumps({kind: row}), flush=True)
    return results


def throughput(args: argparse.Namespace) -> dict:
    """On-disk against in-memory examples/s, alternating runs (so drift hits both), ``--repeats`` times each."""
    work = Path(args.work)
    os.environ["VAEKIT_CACHE"] = str(work / "cache")
    timer = (f"--trainer.callbacks+={STEP_TIMER}", "--trainer.callbacks.warmup", str(args.warmup))
    jobs = [("image", "configs/image/tiny.yaml", n, png_folder(work, Path(args.mnist), n), ()) for n in args.images]
    jobs += [("audio", "configs/audio/tiny.yaml", n, wav_folder(work, Path(args.fsdd), n), AUDIO) for n in args.audio]
    results: dict[str, dict] = {"image": {}, "audio": {}}
    for kind, config, count, root, extra in jobs:
        runs: dict[str, list[float]] = {"false": [], "true": []}
        for _ in range(args.repeats):
            for where in runs:
                argv = fit_args(config, root, work / "run-throughput", args.steps, *extra, *timer)
                runs[where].append(run_child([*argv, "--data.in_memory", where])["examples_per_s"])
        ratios = [disk / memory for disk, memory in zip(runs["false"], runs["true"], strict=True)]
        row = {"on_disk": runs["false"], "in_memory": runs["true"], "ratio_median": float(np.median(ratios))}
        results[kind][count] = row
        print(json.dumps({kind: {count: row}}), flush=True)
    return results


def ddp(args: argparse.Namespace) -> dict:
    """Examples/s of one process (1 and 2 threads) and of two DDP processes of 1 thread each, same data."""
    work = Path(args.work)
    os.environ["VAEKIT_CACHE"] = str(work / "cache")
    timer = (f"--trainer.callbacks+={STEP_TIMER}", "--trainer.callbacks.warmup", str(args.warmup))

    def run(threads: int, *flags: str) -> dict[str, float]:
        argv = fit_args("configs/image/mnist.yaml", Path(args.data_root), work / "ddp", args.steps, *timer, *flags)
        return run_child(argv, threads=threads)

    run_child(["prepare", *fit_args("configs/image/mnist.yaml", Path(args.data_root), work / "ddp", 0)])
    ddp_flags = ("--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu")
    runs = {
        "one process, 1 thread": run(1),
        "one process, 2 threads": run(2),
        "two DDP processes, 1 thread each": run(1, *ddp_flags),
    }
    one = runs["one process, 1 thread"]["examples_per_s"]
    two = runs["two DDP processes, 1 thread each"]["examples_per_s"] * 2  # rank 0 sees half the global batch
    runs["two DDP processes, 1 thread each"]["global_examples_per_s"] = two
    runs["efficiency (two processes vs twice one process)"] = two / (2 * one)
    return runs


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["memory", "throughput", "ddp"])
    parser.add_argument("--images", type=int, nargs="*", default=[10_000, 100_000, 300_000])
    parser.add_argument("--audio", type=int, nargs="*", default=[3_000, 12_000, 48_000])
    parser.add_argument("--mnist", default="../shared/data/mnist")
    parser.add_argument("--fsdd", default="../shared/data/fsdd/recordings")
    parser.add_argument("--data-root", default="../shared/data/mnist")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--work", default="/tmp/vaekit-bench")
    parser.add_argument("--repeats", type=int, default=3, help="throughput: alternating runs per path")
    parser.add_argument("--out", help="write the results as JSON here too")
    args = parser.parse_args()
    result = {"memory": memory, "throughput": throughput, "ddp": ddp}[args.what](args)
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
