"""Start-up cost of the `vaekit` command: wall time and peak memory against a bare interpreter.

Each command runs as its own process (the median of ``--repeats`` runs; peak RSS from ``wait4``):
``python -c pass`` as the baseline, ``vaekit --help``, ``vaekit recipes``, an argument error, and
``vaekit sample`` of 4 images from a tiny image model trained for 3 steps first.

    OMP_NUM_THREADS=1 python benchmarks/startup.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and peak resident MB of one process running ``argv``."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, _, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def measure(argv: list[str], repeats: int) -> tuple[float, float]:
    runs = [run(argv) for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    vaekit = [shutil.which("vaekit") or sys.executable] + ([] if shutil.which("vaekit") else ["-m", "vaekit.cli"])
    work = Path(tempfile.mkdtemp(prefix="vaekit-startup-"))
    fit = ["fit", "--config", "image/tiny", "--trainer.default_root_dir", str(work / "run")]
    fit += ["--trainer.max_steps", "3", "--trainer.enable_progress_bar", "false", "--samples.num", "0"]
    subprocess.run([*vaekit, *fit], check=True, capture_output=True)
    ckpt = work / "run" / "checkpoints" / "last.ckpt"
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "vaekit --help": [*vaekit, "--help"],
        "vaekit recipes": [*vaekit, "recipes"],
        "vaekit sample (argument error)": [*vaekit, "sample"],
        "vaekit sample TINY --num 4": [
            *vaekit,
            "sample",
            str(ckpt),
            "--num",
            "4",
            "--out",
            str(work / "s"),
            "--overwrite",
        ],
    }
    base_time, base_rss = measure(cases.pop("python -c pass"), args.repeats)
    print(
        f"| command | wall s | over bare python s | peak RSS MB | (bare python: {base_time:.3f} s, {base_rss:.0f} MB) |"
    )
    print("|---|---|---|---|")
    for name, argv in cases.items():
        seconds, rss = measure(argv, args.repeats)
        print(f"| `{name}` | {seconds:.3f} | {seconds - base_time:+.3f} | {rss:.0f} |")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
