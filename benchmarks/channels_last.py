"""Training steps per CPU-second of an image recipe with and without channels-last layout.

The two layouts alternate in one process; this process's CPU time is measured, so other jobs on a
shared machine do not enter the ratio (run with OMP_NUM_THREADS=1 so spinning threads do not either).

python benchmarks/channels_last.py --config configs/image/mnist.yaml --data.root ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from benchmarks.throughput import build


def steps_per_cpu_second(model, batches) -> float:
    optimizer = model.configure_optimizers()
    start = time.process_time()
    for batch in batches:
        loss = model.elbo_terms(batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return len(batches) / (time.process_time() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/image/mnist.yaml")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=4)
    args, overrides = parser.parse_known_args()
    runs = {}
    for layout in ("false", "true"):
        torch.manual_seed(0)
        model, datamodule, _ = build(args.config, [*overrides, "--model.init_args.channels_last", layout])
        loader = iter(datamodule.train_dataloader())
        batches = [datamodule.on_after_batch_transfer(next(loader), 0) for _ in range(args.steps)]
        runs[layout] = (model, batches, [])
    for _ in range(args.repeats):
        for model, batches, results in runs.values():
            results.append(steps_per_cpu_second(model, batches))
    default, channels_last = (statistics.median(runs[k][2]) for k in ("false", "true"))
    print(json.dumps({
        "config": args.config,
        "threads": torch.get_num_threads(),
        "contiguous_steps_per_cpu_s": [round(x, 3) for x in runs["false"][2]],
        "channels_last_steps_per_cpu_s": [round(x, 3) for x in runs["true"][2]],
        "speedup_median": channels_last / default,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
