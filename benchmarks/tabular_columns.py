"""Which columns drive a table VAE's anomaly score: each column's own term of the reconstruction NLL (the
decoder at the posterior mean), its AUROC at finding the anomalies, and its spread over the test rows (a
column whose terms spread widely without signal drowns the others in the sum).

    OMP_NUM_THREADS=2 python -m benchmarks.tabular_columns ../shared/data/adbench/6_cardio.npz --likelihoods mixture gaussian
    # the recipe without its marginal component and with beta 1:
    ... --likelihoods mixture --vaekit-args "--model.marginal_weight 0 --model.beta.max 1"

The split and the fit are `benchmarks/tabular_anomaly.py`'s (seeded, stratified 70/30; the adbench recipe).
"""

from __future__ import annotations

import argparse
import shlex
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from benchmarks.tabular_anomaly import fit_vaekit, load
from vaekit.checkpoint import load_datamodule, load_model


def column_terms(run: Path, rows_csv: Path) -> np.ndarray:
    """(rows, columns): each cell's negative log-likelihood under the decoder at the row's posterior mean."""
    model, record = load_model(run / "checkpoints" / "last.ckpt")
    x = load_datamodule(model, record).load_inputs([str(rows_csv)])["x"].float()
    with torch.no_grad():
        params = model.decoder(model.posterior({"x": x}).mean)
        masks = torch.eye(x.shape[1]).unsqueeze(1).expand(-1, len(x), -1)
        return torch.stack([-model.likelihood.log_prob(params, x, mask) for mask in masks], 1).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path, help="an ADBench .npz file (X, y)")
    parser.add_argument("--likelihoods", nargs="+", default=["mixture", "gaussian"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-rows", type=int, default=20000)
    parser.add_argument("--vaekit-args", default="", help="extra `vaekit fit` overrides, one quoted string")
    args = parser.parse_args()
    x, y = load(args.file, args.max_rows, args.seed)
    train, test, _, labels = train_test_split(x, y, test_size=0.3, stratify=y, random_state=args.seed)
    for likelihood in args.likelihoods:
        with tempfile.TemporaryDirectory() as scratch:
            scores = fit_vaekit(
                train, test, Path(scratch), ["--model.numeric_likelihood", likelihood, *shlex.split(args.vaekit_args)]
            )
            terms = column_terms(Path(scratch) / "run", Path(scratch) / "test.csv")
        print(f"{likelihood}: score AUROC {roc_auc_score(labels, scores):.3f}")
        print("| column | " + " | ".join(str(j) for j in range(terms.shape[1])) + " |")
        print("|---|" + "---|" * terms.shape[1])
        print("| AUROC | " + " | ".join(f"{roc_auc_score(labels, t):.2f}" for t in terms.T) + " |")
        print("| spread (std, nats) | " + " | ".join(f"{t.std():.1f}" for t in terms.T) + " |")


if __name__ == "__main__":
    main()
