"""Speed of the importance-weighted NLL estimator (`vaekit evaluate`) against a per-example loop.

The baseline is the straightforward implementation: for each example, draw its K samples, decode
them in one pass, log-sum-exp. vaekit's estimator batches examples and samples together in chunks
of at most ``iw_max_rows`` decoder rows. Both run on the same test examples with the same K in one
process; the mean NLLs are printed too, as a check that they estimate the same quantity.

    python -m benchmarks.iw_speed runs/mnist/checkpoints/last.ckpt --examples 500 --iw-samples 1000
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from vaekit.checkpoint import load_datamodule, load_model
from vaekit.core.module import VAE, Batch, repeat_batch


def per_example_nll(model: VAE, batch: Batch, num_samples: int) -> torch.Tensor:
    results = []
    for i in range(len(batch["x"])):
        example = {k: v[i : i + 1] for k, v in batch.items()}
        posterior = model.posterior(example)
        z = posterior.rsample((num_samples,))  # (K, 1, D)
        repeated = repeat_batch(example, num_samples)
        log_px = model.log_likelihood(model.decode_params(z.reshape(num_samples, -1), repeated), repeated)
        log_w = log_px + model.prior.log_prob(z[:, 0]) - posterior.log_prob(z)[:, 0]
        results.append(-(torch.logsumexp(log_w, 0) - math.log(num_samples)))
    return torch.stack(results)


def _timed(fn, *args) -> tuple[torch.Tensor, float, float]:
    """The result, wall seconds and this process's CPU seconds (immune to other jobs' load)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    result = fn(*args)
    return result, time.perf_counter() - start, time.process_time() - cpu_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt")
    parser.add_argument("--examples", type=int, default=500)
    parser.add_argument("--iw-samples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=100, help="examples per batch for vaekit's estimator")
    parser.add_argument("--data-root")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--max-rows", type=int, help="override the model's iw_max_rows (decoder rows per chunk)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, record = load_model(args.ckpt)
    if args.max_rows:
        model.hparams.iw_max_rows = args.max_rows
    datamodule = load_datamodule(model, record, args.data_root)
    datamodule.setup("test")
    batch = datamodule.on_after_batch_transfer(datamodule.examples("test", range(args.examples)), 0)
    with torch.no_grad():
        torch.manual_seed(0)
        loop, loop_s, loop_cpu = _timed(per_example_nll, model, batch, args.iw_samples)
        torch.manual_seed(0)
        chunks = [
            {k: v[i : i + args.batch_size] for k, v in batch.items()} for i in range(0, args.examples, args.batch_size)
        ]
        batched, batched_s, batched_cpu = _timed(lambda: torch.cat([model.nll(c, args.iw_samples) for c in chunks]))
    result = {
        "ckpt": args.ckpt,
        "examples": args.examples,
        "iw_samples": args.iw_samples,
        "threads": torch.get_num_threads(),
        "iw_max_rows": model.hparams.iw_max_rows,
        "per_example_loop_examples_per_s": args.examples / loop_s,
        "vaekit_examples_per_s": args.examples / batched_s,
        "speedup_wall": loop_s / batched_s,
        "speedup_cpu_time": loop_cpu / batched_cpu,
        "per_example_loop_mean_nll": loop.mean().item(),
        "vaekit_mean_nll": batched.mean().item(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
