"""vaekit's table VAE against PyOD on ADBench's unsupervised protocol (issue 21; figures in docs/tabular.md).

For each ``.npz`` file (``X``, ``y``) and seed: a seeded, stratified 70/30 split; every detector fits on the 70 %
without labels (anomalies included) and scores the 30 %; AUROC and average precision of the scores against
``y``. vaekit runs `vaekit fit --config configs/tabular/adbench.yaml` on the training rows (no labels in the
file it reads) and `vaekit score --input` on the test rows, in this process; PyOD runs IForest, ECOD and its
own VAE with their defaults. Wall time (fit + score) is measured per detector, file and seed.

Files larger than ``--max-rows`` (16_http: 567k rows) are subsampled first, seeded and stratified by label,
so the whole run stays well under an hour on 2 cores; the table says so.

    OMP_NUM_THREADS=1 python -m benchmarks.tabular_anomaly ../shared/data/adbench --seeds 0 1 2 \\
        --out benchmarks/results/tabular_anomaly.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import train_test_split

from vaekit.cli import main as vaekit

CONFIG = "configs/tabular/adbench.yaml"
Detector = Callable[[np.ndarray, np.ndarray, Path], np.ndarray]  # (train X, test X, scratch) -> test scores


@dataclass
class Result:
    dataset: str
    detector: str
    seed: int
    rows: int
    auroc: float
    average_precision: float
    seconds: float


def load(path: Path, max_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        x, y = data["X"].astype(np.float64), data["y"].astype(np.int64)
    if len(x) > max_rows:  # seeded, stratified: the anomaly share is kept
        x, _, y, _ = train_test_split(x, y, train_size=max_rows, stratify=y, random_state=seed)
    return x, y


def fit_vaekit(
    train: np.ndarray, test: np.ndarray, scratch: Path, extra: list[str], score_extra: Sequence[str] = ()
) -> np.ndarray:
    """`vaekit fit` on a file of the training rows alone (no labels), `vaekit score --input` on the test rows."""
    (scratch / "data").mkdir()
    np.savez(scratch / "data" / "train.npz", X=train)  # the validation rows are split off these
    np.savez(scratch / "data" / "test.npz", X=test[:1])  # a split the data module wants; scoring reads --input
    columns = [f"x{i}" for i in range(train.shape[1])]
    with open(scratch / "test.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(test.tolist())
    run = scratch / "run"
    vaekit(["fit", "--config", CONFIG, "--data.root", str(scratch / "data"),
            "--trainer.default_root_dir", str(run), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--samples.num", "0", "--posthoc.components", "0", *extra])  # fmt: skip
    out = scratch / "scores.csv"
    score = ["score", str(run / "checkpoints" / "last.ckpt"), "--input", str(scratch / "test.csv"), "--out", str(out)]
    vaekit([*score, *score_extra])
    with open(out, newline="") as handle:
        return np.array([float(row["score"]) for row in csv.DictReader(handle)])


def vaekit_detector(extra: list[str], score_extra: Sequence[str]) -> Detector:
    def run(train: np.ndarray, test: np.ndarray, scratch: Path) -> np.ndarray:
        return fit_vaekit(train, test, scratch, extra, score_extra)

    return run


def pyod_detector(name: str, seed: int) -> Detector:
    def run(train: np.ndarray, test: np.ndarray, scratch: Path) -> np.ndarray:
        from pyod.models.ecod import ECOD
        from pyod.models.iforest import IForest
        from pyod.models.vae import VAE

        model = {
            "IForest": lambda: IForest(random_state=seed),
            "ECOD": ECOD,
            "PyOD VAE": lambda: VAE(random_state=seed, verbose=0),
        }
        detector = model[name]()
        # PyOD's deep detectors standardise internally; IForest and ECOD are invariant to per-column scaling.
        detector.fit(train)
        return detector.decision_function(test)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="the folder of ADBench .npz files")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-rows", type=int, default=20000, help="larger files are subsampled (stratified)")
    parser.add_argument("--detectors", nargs="+", default=["vaekit", "IForest", "ECOD", "PyOD VAE"])
    parser.add_argument("--files", nargs="+", help="file stems (default: every .npz in DATA)")
    parser.add_argument(
        "--vaekit-args", default="", help="extra `vaekit fit` overrides, one quoted string (trials, not results)"
    )
    parser.add_argument("--score-args", default="", help="extra `vaekit score` options, one quoted string (trials)")
    parser.add_argument("--out", type=Path, required=True, help="a JSON file of every result")
    args = parser.parse_args()

    files = sorted(args.data.glob("*.npz"))
    if args.files:
        files = [f for f in files if f.stem in args.files]
    results: list[Result] = []
    for path in files:
        for seed in args.seeds:
            x, y = load(path, args.max_rows, seed)
            train, test, _, y_test = train_test_split(x, y, test_size=0.3, stratify=y, random_state=seed)
            for name in args.detectors:
                fit_extra = ["--seed_everything", str(seed), *shlex.split(args.vaekit_args)]
                score_extra = shlex.split(args.score_args)
                detector = vaekit_detector(fit_extra, score_extra) if name == "vaekit" else pyod_detector(name, seed)
                with tempfile.TemporaryDirectory(prefix="tabular-anomaly-") as scratch:
                    start = time.perf_counter()
                    scores = detector(train, test, Path(scratch))
                    seconds = time.perf_counter() - start
                auroc, ap = roc_auc_score(y_test, scores), average_precision_score(y_test, scores)
                results.append(Result(path.stem, name, seed, len(x), auroc, ap, seconds))
                print(f"{path.stem} seed {seed} {name}: AUROC {auroc:.4f} AP {ap:.4f} ({seconds:.1f} s)", flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    print(table(results))


def table(results: list[Result]) -> str:
    """Markdown: mean AUROC / AP over seeds, and mean seconds, per dataset and detector; then the means."""
    detectors = list(dict.fromkeys(r.detector for r in results))
    datasets = list(dict.fromkeys(r.dataset for r in results))
    lines = [
        "| dataset | rows used | " + " | ".join(f"{d} AUROC / AP (s)" for d in detectors) + " |",
        "|---|---|" + "---|" * len(detectors),
    ]
    for dataset in datasets:
        cells = []
        for detector in detectors:
            chosen = [r for r in results if r.dataset == dataset and r.detector == detector]
            cells.append(
                f"{np.mean([r.auroc for r in chosen]):.3f} / {np.mean([r.average_precision for r in chosen]):.3f} "
                f"({np.mean([r.seconds for r in chosen]):.1f})"
            )
        rows = next(r.rows for r in results if r.dataset == dataset)
        lines.append(f"| {dataset} | {rows} | " + " | ".join(cells) + " |")
    means = []
    for detector in detectors:
        chosen = [r for r in results if r.detector == detector]
        auroc = np.mean([np.mean([r.auroc for r in chosen if r.dataset == d]) for d in datasets])
        ap = np.mean([np.mean([r.average_precision for r in chosen if r.dataset == d]) for d in datasets])
        means.append(f"**{auroc:.3f}** / {ap:.3f} ({sum(r.seconds for r in chosen):.0f} total)")
    lines.append("| mean | | " + " | ".join(means) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
