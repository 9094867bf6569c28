"""MoPoE, MoE and PoE aggregation compared on the digits recipe at equal steps: coherence and subset NLLs.

    python -m benchmarks.multimodal_aggregation --steps 800 --out benchmarks/results/multimodal_aggregation.json

Each aggregation trains configs/multimodal/digits.yaml for ``--steps`` optimiser steps (one run at a time;
equal steps rather than equal time, so that other load on the machine does not favour one), then
`vaekit evaluate --classifier` measures it on the test tuples (the held-out FSDD speaker).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks import write_json
from benchmarks.multimodal_digits import onnx_classifiers
from vaekit.cli import main as vaekit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", default="../shared/data/mnist")
    parser.add_argument("--fsdd", default="../shared/data/fsdd/recordings")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--aggregations", nargs="+", default=["mopoe", "moe", "poe"])
    parser.add_argument("--runs", default="runs/aggregation")
    parser.add_argument("--out", default="benchmarks/results/multimodal_aggregation.json")
    args = parser.parse_args()
    paths, _, _ = onnx_classifiers(Path(args.mnist), Path(args.fsdd))
    results = {}
    for aggregation in args.aggregations:
        root = Path(args.runs) / aggregation
        vaekit(
            [
                "fit", "--config", "configs/multimodal/digits.yaml",
                "--data.image_root", args.mnist, "--data.audio_root", args.fsdd,
                "--model.init_args.aggregation", aggregation,
                "--trainer.max_steps", str(args.steps),
                "--trainer.default_root_dir", str(root),
                "--trainer.enable_progress_bar", "false", "--samples.num", "0",
            ]
        )  # fmt: skip
        out = root / "evaluate.json"
        vaekit(
            [
                "evaluate", str(root / "checkpoints" / "last.ckpt"), "--iw-samples", "10", "--out", str(out),
                "--classifier", *(f"{name}={path}" for name, path in paths.items()),
            ]
        )  # fmt: skip
        results[aggregation] = json.loads(out.read_text())
        write_json(args.out, results)
    for aggregation, row in results.items():
        coherence = row["coherence"]
        nll = {key: round(s["nll"], 1) for key, s in row["subsets"].items()}
        print(aggregation, json.dumps(coherence), json.dumps(nll))


if __name__ == "__main__":
    main()
