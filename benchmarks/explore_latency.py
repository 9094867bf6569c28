"""Latency of `vaekit explore`'s latent sliders: the time from a slider's new value to the page's HTML (decode,
the model's own writers, rendering), for the reference recipes' networks, against the bare decode in the same
process (the part no page can avoid).

    OMP_NUM_THREADS=2 python -m benchmarks.explore_latency --data ../shared/data --out benchmarks/results/explore_latency.json

Each model is the recipe's network after one training step on its real data (the latency depends on the
network, not on how well it is trained); the post-hoc sampler is left out, so the sliders follow the prior.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import markdown_table, write_json
from vaekit.cli import main as vaekit
from vaekit.cli.explore import open_explorer
from vaekit.cli.parser import build_parser

RECIPES = {
    "mnist": ("configs/image/mnist.yaml", "mnist"),
    "fsdd": ("configs/audio/fsdd.yaml", "fsdd/recordings"),
    "ptb": ("configs/text/ptb.yaml", "ptb"),
}


def one_step_model(config: str, data: Path, root: Path) -> Path:
    vaekit(["fit", "--config", config, "--data.root", str(data), "--trainer.default_root_dir", str(root),
            "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", "--posthoc.components", "0",
            "--samples.num", "0", "--model.default_sampler", "prior", "--trainer.enable_progress_bar", "false"])  # fmt: skip
    return root / "checkpoints" / "last.ckpt"


def timed(action, repeats: int) -> list[float]:
    times = []
    for i in range(repeats):
        values = torch.linspace(-2.5, 2.5, repeats)[i].item()
        start = time.perf_counter()
        action(values)
        times.append(1000 * (time.perf_counter() - start))
    return times


def measure(ckpt: Path, repeats: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        explorer = open_explorer(build_parser().parse_args(["explore", str(ckpt), "--device", "cpu"]), Path(folder))
        others = [0.0] * (len(explorer.directions.scales) - 1)

        def slide(value: float) -> None:
            explorer.slide(value, *others)

        def decode(value: float) -> None:
            with torch.no_grad():
                z = explorer.directions.latent([value, *others])
                explorer.model.generate(z, deterministic=True, **explorer.options)

        for action in (slide, decode):  # warm-up
            action(0.0)
        page, bare = timed(slide, repeats), timed(decode, repeats)
    return {
        "slider_ms_median": statistics.median(page),
        "slider_ms_p90": statistics.quantiles(page, n=10)[-1],
        "decode_ms_median": statistics.median(bare),
        "ratio_to_decode": statistics.median(page) / statistics.median(bare),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out")
    args = parser.parse_args()
    results = {"threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as root:
        for name, (config, folder) in RECIPES.items():
            ckpt = one_step_model(config, Path(args.data) / folder, Path(root) / name)
            results[name] = measure(ckpt, args.repeats)
            print(name, {k: round(v, 1) for k, v in results[name].items()}, flush=True)
    header = ["model", "slider update, median ms", "p90 ms", "bare decode, median ms", "ratio"]
    keys = [
        ("slider_ms_median", ".0f"),
        ("slider_ms_p90", ".0f"),
        ("decode_ms_median", ".0f"),
        ("ratio_to_decode", ".2f"),
    ]
    print(markdown_table(header, [[name] + [format(results[name][k], f) for k, f in keys] for name in RECIPES]))
    if args.out:
        write_json(args.out, results)


if __name__ == "__main__":
    main()
