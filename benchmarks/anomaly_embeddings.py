"""Anomaly scores and latent projections on MNIST (issue 11), from one model trained on digits 0-8.

1. `vaekit fit` of the MNIST recipe on digits 0-8 only (``--data.exclude_labels [9]``), bounded in minutes.
2. `vaekit score` with each correction (none, typicality, complexity): the AUROC of held-out digit 9 against
   0-8 on the test split, and of three out-of-distribution sets against the in-distribution test split:
   blank (all-zero) images, inverted digits and uniform noise, made here from MNIST's test images.
3. `vaekit encode --plot --projection {pca,tsne,umap}`: the 5-NN accuracy (5-fold) of the 32-d latent means
   and of each 2-D projection, so a plot's faithfulness to the latent is a number. Pictures go to --pictures.

    OMP_NUM_THREADS=2 python -m benchmarks.anomaly_embeddings ../shared/data/mnist --minutes 8 \\
        --out benchmarks/results/anomaly.json --pictures docs/images
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks import write_json
from vaekit.cli import main as vaekit
from vaekit.modalities.image import read_idx
from vaekit.scoring import CORRECTIONS, auroc


def make_ood_sets(mnist: Path, root: Path, count: int) -> dict[str, Path]:
    """Folders in the imagefolder test layout, so `--ood-root` scores all of each."""
    digits = read_idx(mnist, "t10k-images-idx3-ubyte", 2051)[:count]
    rng = np.random.default_rng(0)
    kinds = {
        "blank": np.zeros_like(digits),
        "inverted": 255 - digits,
        "noise": rng.integers(0, 256, digits.shape, dtype=np.uint8),
    }
    folders = {}
    for name, images in kinds.items():
        folder = root / name / "test" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            Image.fromarray(image).save(folder / f"{i:04d}.png")
        folders[name] = root / name
    return folders


def read_scores(path: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    score = torch.tensor([float(r["score"]) for r in rows])
    label = torch.tensor([int(r["label"]) for r in rows])
    is_ood = torch.tensor([r["set"] == "ood" for r in rows])
    return score, label, is_ood


def knn_accuracy(points: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    return float(cross_val_score(KNeighborsClassifier(5), points, labels, cv=5).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mnist", type=Path, help="the folder of MNIST IDX files")
    parser.add_argument("--minutes", type=int, default=8)
    parser.add_argument("--run", type=Path, default=Path("runs/anomaly"))
    parser.add_argument("--examples", type=int, default=2000, help="test examples scored and embedded")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/anomaly.json"))
    parser.add_argument("--pictures", type=Path, help="where to write the latent plots")
    args = parser.parse_args()
    ckpt = args.run / "checkpoints" / "last.ckpt"
    started = time.time()
    if not ckpt.is_file():
        vaekit([
            "fit", "--config", "configs/image/mnist.yaml", "--data.root", str(args.mnist),
            "--data.exclude_labels", "[9]", "--trainer.default_root_dir", str(args.run),
            "--trainer.max_time", f"00:00:{args.minutes:02d}:00", "--trainer.enable_progress_bar", "false",
        ])  # fmt: skip
    result: dict[str, object] = {"checkpoint": str(ckpt), "train_seconds": round(time.time() - started)}
    work = args.run / "bench"
    ood = make_ood_sets(args.mnist, work / "ood", count=args.examples // 4)
    common = ["--max-examples", str(args.examples), "--batch-size", "250"]
    aurocs: dict[str, dict[str, float | None]] = {}
    for correction in CORRECTIONS:
        figures: dict[str, float | None] = {}
        for name, folder in ood.items():
            out = work / f"scores-{correction}-{name}.csv"
            vaekit(
                ["score", str(ckpt), "--correction", correction, "--ood-root", str(folder), "--out", str(out), *common]
            )
            score, label, is_ood = read_scores(out)
            figures[f"ood_{name}"] = auroc(score, is_ood.long())
            if name == "blank":  # the in-distribution rows are the same in every file
                inside = ~is_ood
                figures["digit_9_vs_0_8"] = auroc(score[inside], (label[inside] == 9).long())
        aurocs[correction] = figures
    result["auroc"] = aurocs
    knn: dict[str, float] = {}
    for projection in ("pca", "tsne", "umap"):
        plot = (args.pictures or work) / f"mnist_latent_{projection}.png"
        out = work / f"z-{projection}.npz"
        vaekit(["encode", str(ckpt), "--plot", str(plot), "--projection", projection, "--out", str(out), *common])
        arrays = np.load(out)
        knn["latent_32d"] = knn_accuracy(arrays["mean"], arrays["label"])
        knn[projection] = knn_accuracy(arrays["projection"], arrays["label"])
    result["knn5_accuracy"] = knn
    write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
