"""Sampling throughput of a text checkpoint: sentences/s for batched prior sampling, greedy and beam search.

Each strategy decodes the same prior draws; batched decoding runs ``--batch`` sentences per call, the
one-at-a-time row shows what batching buys. Sentences/s counts decoded sentences; tokens/s counts
generated tokens up to and including EOS.

    python benchmarks/text_sampling.py runs/ptb/checkpoints/last.ckpt --num 512 --batch 256 --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from vaekit.checkpoint import load_model
from vaekit.modalities.text import TextGenerationOptions, TextVAE


def measure(model: TextVAE, z: torch.Tensor, batch: int, options: TextGenerationOptions) -> dict[str, float]:
    max_length = options.max_length or model.spec.max_length + 1
    start = time.perf_counter()
    tokens = 0
    for chunk in torch.split(z, batch):
        if options.strategy == "beam":
            ids = model.beam_search(chunk, options.beam_width, max_length)
        else:
            ids = model.decode_tokens(chunk, max_length, options)
        tokens += int((ids != model.pad_id).sum())
        model.to_text(ids)
    seconds = time.perf_counter() - start
    return {"sentences_per_s": len(z) / seconds, "tokens_per_s": tokens / seconds, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt")
    parser.add_argument("--num", type=int, default=512, help="sentences per batched measurement")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--single", type=int, default=32, help="sentences for the one-at-a-time row")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, _ = load_model(args.ckpt)
    z = model.sample_latents(args.num)
    rows = {}
    with torch.no_grad():
        rows["sample, one at a time"] = measure(model, z[: args.single], 1, TextGenerationOptions())
        rows[f"sample, batch {args.batch}"] = measure(model, z, args.batch, TextGenerationOptions())
        rows[f"sample top-p 0.9, batch {args.batch}"] = measure(model, z, args.batch, TextGenerationOptions(top_p=0.9))
        rows[f"greedy, batch {args.batch}"] = measure(model, z, args.batch, TextGenerationOptions(strategy="greedy"))
        for width in (4, 8):
            options = TextGenerationOptions(strategy="beam", beam_width=width)
            rows[f"beam {width}, batch {args.batch // width}"] = measure(model, z, args.batch // width, options)
    result = {"ckpt": args.ckpt, "threads": torch.get_num_threads(), "num": args.num, "rows": rows}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
