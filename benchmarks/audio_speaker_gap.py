"""Reconstruction quality on training speakers vs the held-out test speaker, from one checkpoint.

Separates "the model cannot fit" from "the model does not generalise to a new voice": the same
LSD / spectral convergence figures as `vaekit evaluate`, on random clips of the train and test splits.

    python benchmarks/audio_speaker_gap.py runs/fsdd/checkpoints/last.ckpt --clips 256
"""

from __future__ import annotations

import argparse
import json

import torch

from vaekit.checkpoint import load_datamodule, load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt")
    parser.add_argument("--clips", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, record = load_model(args.ckpt)
    datamodule = load_datamodule(model, record)
    datamodule.setup()
    result = {}
    for split in ("train", "test"):
        count = len(datamodule.split(split))
        pick = torch.randperm(count, generator=torch.Generator().manual_seed(0))[: args.clips]
        sums: dict[str, float] = {}
        with torch.no_grad():
            for chunk in torch.split(pick, args.batch):
                batch = datamodule.on_after_batch_transfer(datamodule.examples(split, chunk.tolist()), 0)
                for key, value in model.evaluation_extras(batch, model.elbo_terms(batch)).items():
                    sums[key] = sums.get(key, 0.0) + float(value.sum())
        result[split] = {key: total / len(pick) for key, total in sums.items()}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
