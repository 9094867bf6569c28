"""Synthetic rows: vaekit's `sample` against SDV's TVAE at equal training time (issue 21; docs/tabular.md).

For each table: a seeded 70/30 split; vaekit fits its recipe on the 70 % (`vaekit fit`, timed) and samples as many
rows as it trained on (from the prior and from the Gaussian mixture fitted after training); TVAE trains on the same
rows for as many epochs as fit in vaekit's training time (solved from timed fits). The label column is left
out of both. Fidelity against the real training rows:

- ``ks``: Kolmogorov-Smirnov statistic per numeric column (missing cells left out), averaged;
- ``tv``: total variation distance per categorical column (missing as its own value), averaged;
- ``corr``: mean absolute difference of the numeric columns' Pearson correlations (off-diagonal);
- ``c2st``: AUROC of a gradient-boosted classifier telling real held-out rows from synthetic ones (5-fold);
  0.5 means it cannot tell them apart.

    OMP_NUM_THREADS=1 python -m benchmarks.tabular_fidelity ../shared/data/adbench --tables 6_cardio 2_annthyroid --out tabular_fidelity.json
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import cross_val_score, train_test_split

from benchmarks import markdown_table, write_json
from vaekit.cli import main as vaekit

DEMO = Path(__file__).parents[1] / "vaekit" / "demo" / "tabular" / "transactions.csv"


@dataclass
class Fidelity:
    table: str
    generator: str
    train_seconds: float
    ks: float
    tv: float
    corr: float
    c2st: float


def tables(adbench: Path, names: list[str]) -> dict[str, tuple[pd.DataFrame, str]]:
    """Each table without its label, and the vaekit recipe that models it."""
    found = {"tiny (demo)": (pd.read_csv(DEMO).drop(columns="label"), "configs/tabular/tiny.yaml")}
    for name in names:
        with np.load(adbench / f"{name}.npz", allow_pickle=False) as data:
            x = data["X"]
        found[name] = (pd.DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])]), "configs/tabular/adbench.yaml")
    return found


def fidelity(real: pd.DataFrame, held_out: pd.DataFrame, synthetic: pd.DataFrame, seed: int) -> dict[str, float]:
    numeric = [c for c in real.columns if pd.api.types.is_numeric_dtype(real[c])]
    categorical = [c for c in real.columns if c not in numeric]
    synthetic = synthetic[real.columns]
    ks = [ks_2samp(real[c].dropna(), pd.to_numeric(synthetic[c], errors="coerce").dropna()).statistic for c in numeric]
    tv = []
    for c in categorical:
        p = real[c].fillna("<missing>").value_counts(normalize=True)
        q = synthetic[c].fillna("<missing>").value_counts(normalize=True)
        tv.append(0.5 * p.subtract(q, fill_value=0).abs().sum())
    corr = 0.0
    if len(numeric) > 1:
        a = real[numeric].corr().to_numpy()
        b = synthetic[numeric].apply(pd.to_numeric, errors="coerce").corr().to_numpy()
        off = ~np.eye(len(numeric), dtype=bool)
        corr = float(np.nanmean(np.abs(a - b)[off]))
    both = pd.concat(
        [held_out, synthetic.sample(len(held_out), random_state=seed, replace=len(synthetic) < len(held_out))]
    )
    for c in categorical:
        both[c] = both[c].astype("category").cat.codes
    target = np.r_[np.zeros(len(held_out)), np.ones(len(held_out))]
    classifier = HistGradientBoostingClassifier(random_state=seed)
    c2st = cross_val_score(classifier, both.astype(float), target, cv=5, scoring="roc_auc").mean()
    return {
        "ks": float(np.mean(ks)) if ks else 0.0,
        "tv": float(np.mean(tv)) if tv else 0.0,
        "corr": corr,
        "c2st": c2st,
    }


def run_vaekit(train: pd.DataFrame, recipe: str, scratch: Path, seed: int) -> tuple[float, dict[str, pd.DataFrame]]:
    (scratch / "data").mkdir()
    train.to_csv(scratch / "data" / "train.csv", index=False)
    train.head(2).to_csv(scratch / "data" / "test.csv", index=False)  # a split the data module wants; unused
    run = scratch / "run"
    start = time.perf_counter()
    # adbench.yaml's three choices for scoring rows that hold anomalies are undone: synthetic rows should follow
    # every training row, tails too (trim 0), from the decoder's own mixture (no marginal) at the plain ELBO (beta 1)
    vaekit(["fit", "--config", recipe, "--data.root", str(scratch / "data"), "--seed_everything", str(seed),
            "--trainer.default_root_dir", str(run), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--samples.num", "0",
            "--model.trim", "0", "--model.marginal_weight", "0", "--model.beta.max", "1"])  # fmt: skip
    seconds = time.perf_counter() - start
    samples = {}
    for sampler in ("prior", "gmm"):
        out = scratch / f"samples-{sampler}"
        vaekit(["sample", str(run / "checkpoints" / "last.ckpt"), "--num", str(len(train)), "--sampler", sampler,
                "--seed", str(seed), "--out", str(out)])  # fmt: skip
        samples[f"vaekit ({sampler})"] = pd.read_csv(out / "samples.csv")
    return seconds, samples


def run_tvae(train: pd.DataFrame, budget: float, seed: int) -> tuple[float, int, pd.DataFrame]:
    """TVAE for as many epochs as fit in ``budget`` seconds of fitting: of up to seven timed fits, the closest."""
    import torch
    from sdv.metadata import Metadata
    from sdv.single_table import TVAESynthesizer

    metadata = Metadata.detect_from_dataframes({"table": train}, infer_keys=None)

    def fit(epochs: int) -> tuple[float, TVAESynthesizer]:
        torch.manual_seed(seed)
        synthesizer = TVAESynthesizer(metadata, epochs=epochs)
        start = time.perf_counter()
        synthesizer.fit({"table": train})  # SDV 2 takes (and gives) a table by name
        seconds = time.perf_counter() - start
        print(f"TVAE: {epochs} epochs in {seconds:.1f} s (budget {budget:.1f} s)", flush=True)
        return seconds, synthesizer

    # A fit costs a fixed part (metadata, transforms: about 5 s on cardio) plus one per epoch. The epochs are solved
    # from the line through the last two fits, each step at most 4 times the last (timing noise of a second can
    # tilt a line through two short fits), until within 5 % of the budget. A first, untimed fit pays one-off costs
    # (on cardio in a new process a first one-epoch fit took 14 s, the next 6).
    fit(1)
    fits = [(1, *fit(1))]
    for _ in range(6):
        e1, s1, _ = fits[-1]
        if abs(s1 - budget) < 0.05 * budget:
            break
        guess = e1 * budget / s1  # as if a fit were all epochs: too few while the fixed part dominates
        if len(fits) > 1 and (slope := (s1 - fits[-2][1]) / (e1 - fits[-2][0])) > 0:
            guess = e1 + (budget - s1) / slope
        epochs = min(max(round(guess), 1, e1 // 4), 4 * e1)
        if epochs == e1:
            break
        fits.append((epochs, *fit(epochs)))
    epochs, seconds, synthesizer = min(fits, key=lambda f: abs(f[1] - budget))
    rows = synthesizer.sample(len(train))
    return seconds, epochs, rows["table"] if isinstance(rows, dict) else rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("adbench", type=Path, help="the folder of ADBench .npz files")
    parser.add_argument("--tables", nargs="*", default=["6_cardio", "2_annthyroid"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    results: list[Fidelity] = []
    for name, (frame, recipe) in tables(args.adbench, args.tables).items():
        train, held_out = train_test_split(frame, test_size=0.3, random_state=args.seed)
        with tempfile.TemporaryDirectory(prefix="tabular-fidelity-") as scratch:
            seconds, samples = run_vaekit(train, recipe, Path(scratch), args.seed)
        tvae_seconds, epochs, tvae_rows = run_tvae(train, seconds, args.seed)
        samples[f"SDV TVAE ({epochs} epochs)"] = tvae_rows
        for generator, synthetic in samples.items():
            spent = tvae_seconds if generator.startswith("SDV") else seconds
            scores = fidelity(train, held_out, synthetic, args.seed)
            results.append(Fidelity(name, generator, spent, **scores))
            print(results[-1], flush=True)
        write_json(args.out, [asdict(r) for r in results])
    header = ["table", "generator", "training s", "KS (num.)", "TV (cat.)", "corr. diff", "C2ST AUROC"]
    keys = [("train_seconds", ".0f"), ("ks", ".3f"), ("tv", ".3f"), ("corr", ".3f"), ("c2st", ".3f")]
    print(
        markdown_table(header, [[r.table, r.generator] + [format(getattr(r, k), f) for k, f in keys] for r in results])
    )


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
