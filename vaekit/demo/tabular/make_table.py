"""Writes transactions.csv, the bundled demo table: synthetic card transactions, a few of them fraudulent.

Generated, not collected: no real person or card is in it. Run from this folder: python make_table.py
(numpy's seeded generator, so the file is reproducible).
"""

from __future__ import annotations

import csv

import numpy as np

ROWS = 400
FRAUD_SHARE = 0.06
MERCHANTS = ["grocery", "fuel", "restaurant", "travel", "electronics"]


def main() -> None:
    rng = np.random.default_rng(0)
    fraud = rng.random(ROWS) < FRAUD_SHARE
    merchant = rng.choice(MERCHANTS, ROWS, p=[0.4, 0.2, 0.25, 0.1, 0.05])
    # Normal spending depends on the merchant; fraud is larger, at night, online and abroad.
    base = {"grocery": 3.5, "fuel": 3.8, "restaurant": 3.3, "travel": 5.5, "electronics": 5.0}
    amount = np.exp(np.array([base[m] for m in merchant]) + 0.5 * rng.standard_normal(ROWS) + 1.5 * fraud)
    hour = np.where(fraud, rng.integers(0, 6, ROWS), np.clip(rng.normal(14, 4, ROWS).round(), 0, 23)).astype(int)
    channel = np.where(
        fraud,
        rng.choice(["online", "in_store"], ROWS, p=[0.85, 0.15]),
        rng.choice(["online", "in_store", "atm"], ROWS, p=[0.3, 0.6, 0.1]),
    )
    country = np.where(
        fraud, rng.choice(["home", "abroad"], ROWS, p=[0.3, 0.7]), rng.choice(["home", "abroad"], ROWS, p=[0.93, 0.07])
    )
    age = rng.integers(18, 85, ROWS)
    with open("transactions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["amount", "hour", "merchant", "channel", "country", "age", "label"])
        for i in range(ROWS):
            # Missing cells: some amounts and ages were not recorded, some merchants not known.
            cells = [
                "" if rng.random() < 0.03 else f"{amount[i]:.2f}",
                hour[i],
                "" if rng.random() < 0.03 else merchant[i],
                channel[i],
                country[i],
                "" if rng.random() < 0.08 else age[i],
                int(fraud[i]),
            ]
            writer.writerow(cells)


if __name__ == "__main__":
    main()
