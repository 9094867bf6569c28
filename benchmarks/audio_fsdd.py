"""FSDD reference recipe, after training: test-split figures and a few example WAVs for the docs.

Runs, from the checkpoint alone, `vaekit evaluate` on the held-out test speaker (IW NLL, KL, active
units, LSD and spectral convergence of reconstructions beside the plain Griffin-Lim round trip),
then `vaekit sample` and `vaekit reconstruct` on a few held-out recordings into ``--examples``.

    vaekit fit --config configs/audio/fsdd.yaml --data.root ../shared/data/fsdd/recordings \\
        --trainer.default_root_dir runs/fsdd --trainer.max_time 00:01:15:00
    python benchmarks/audio_fsdd.py runs/fsdd/checkpoints/last.ckpt --iw-samples 200 \\
        --out benchmarks/results/audio_fsdd.json --examples docs/audio
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks import write_json
from vaekit.checkpoint import read_checkpoint
from vaekit.cli import main as vaekit

# One take of four digits by the test speaker of configs/audio/fsdd.yaml (theo).
EXAMPLES = ("0_theo_5.wav", "3_theo_5.wav", "7_theo_5.wav", "9_theo_5.wav")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt")
    parser.add_argument("--iw-samples", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/audio_fsdd.json")
    parser.add_argument("--examples", help="folder for 4 samples and 4 reconstructions (WAV + PNG)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = args.ckpt
    vaekit(["evaluate", ckpt, "--split", "test", "--iw-samples", str(args.iw_samples), "--out", args.out])
    vaekit(["evaluate", ckpt, "--split", "val", "--iw-samples", "0", "--out", args.out.replace(".json", "_val.json")])
    checkpoint = read_checkpoint(ckpt)
    result = json.loads(Path(args.out).read_text())
    result.update(checkpoint=ckpt, global_step=checkpoint["global_step"], epoch=checkpoint["epoch"])
    result["lsd_gap_db"] = result["lsd_db"] - result["griffin_lim_lsd_db"]
    write_json(args.out, result)
    print(f"LSD {result['lsd_db']:.2f} dB vs Griffin-Lim ceiling {result['griffin_lim_lsd_db']:.2f} dB")
    if args.examples:
        root = Path(checkpoint["datamodule_hyper_parameters"]["root"])
        out = Path(args.examples)
        vaekit(["sample", ckpt, "--num", "4", "--out", str(out / "samples")])
        vaekit(["reconstruct", ckpt, "--out", str(out / "reconstruct"), "--input", *[str(root / e) for e in EXAMPLES]])


if __name__ == "__main__":
    main()
