"""Test-set evaluation of a text checkpoint, optionally on the first N sentences (IW NLL is costly on CPU).

Runs exactly what `vaekit evaluate` runs (the core's test step: ELBO, KL, importance-weighted NLL with K
samples, mutual information, active units, perplexity) on a prefix of the split, so a large K fits in a
CPU budget. With ``--limit 0`` it is `vaekit evaluate` on the whole split.

    python benchmarks/text_ptb.py runs/ptb/checkpoints/last.ckpt --iw-samples 500 --limit 200 --out eval500.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from vaekit.checkpoint import load_datamodule, load_model
from vaekit.core.evaluation import Evaluator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt")
    parser.add_argument("--split", choices=("val", "test"), default="test")
    parser.add_argument("--iw-samples", type=int, default=500)
    parser.add_argument("--limit", type=int, default=0, help="first N sentences of the split (0: all)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-root", help="where the data lives now, if it moved since training")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pl.seed_everything(0, verbose=False)
    model, record = load_model(args.ckpt)
    datamodule = load_datamodule(model, record, args.data_root)
    datamodule.hparams.eval_batch_size = args.batch_size
    datamodule.setup("test")
    if args.limit:
        datamodule.splits[args.split] = datamodule.split(args.split).select(range(args.limit))
    datamodule.eval_split = args.split
    evaluator = Evaluator(model, iw_samples=args.iw_samples)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    start = time.perf_counter()
    trainer.test(evaluator, datamodule=datamodule, verbose=False)
    result = {
        "ckpt": args.ckpt,
        "split": args.split,
        "limit": args.limit,
        "global_step": record.global_step,
        "epoch": record.epoch,
        **evaluator.result,
        "seconds": time.perf_counter() - start,
    }
    text = json.dumps(result, indent=2)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
