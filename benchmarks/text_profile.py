"""Where a text training step's time goes: sentences/s over fixed batches, then the ops that took it.

Builds the recipe as `vaekit fit` does (with any ``--model.*``/``--data.*`` overrides), times
``--steps`` optimiser steps on the same pre-loaded batches (data loading left out) and prints
``torch.profiler``'s table of the costliest operators over a few more.

    python -m benchmarks.text_profile --config configs/text/ptb.yaml --data.root ../shared/data/ptb --model.softmax full
"""

from __future__ import annotations

import argparse
import json
import time

import pytorch_lightning as pl
import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.throughput import build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/text/ptb.yaml")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args, overrides = parser.parse_known_args()
    torch.set_num_threads(args.threads)
    pl.seed_everything(0, verbose=False)
    model, datamodule, _ = build(args.config, overrides)
    optimizer = model.configure_optimizers()
    model.train()
    loader = iter(datamodule.train_dataloader())
    batches = [next(loader) for _ in range(args.warmup + args.steps)]

    def step(batch: dict[str, torch.Tensor], index: int) -> None:
        loss = model.elbo_terms(batch, model.beta(index)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for index, batch in enumerate(batches[: args.warmup]):
        step(batch, index)
    timed = batches[args.warmup :]
    start = time.perf_counter()
    for index, batch in enumerate(timed):
        step(batch, index)
    seconds = time.perf_counter() - start
    tokens = sum(int(model.num_units(b).sum()) for b in timed)
    result = {
        "overrides": overrides,
        "threads": args.threads,
        "sentences_per_s": sum(len(b["x"]) for b in timed) / seconds,
        "tokens_per_s": tokens / seconds,
    }
    print(json.dumps(result, indent=2))
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for index, batch in enumerate(batches[: args.warmup]):
            step(batch, index)
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
