"""Cost of turning log-mels back into sound: inverse mel + Griffin-Lim, seconds per second of audio.

Times ``AudioVAE.to_waveform`` (``vaekit.modalities.audio.spectral``'s inverse mel, then Griffin-Lim) on a batch of
clips at once and on the same clips one by one, with the spectrogram settings of a recipe.
Content does not change the cost, so the clips are noise bursts.

    python benchmarks/audio_griffinlim.py --config configs/audio/fsdd.yaml --batch 64 --iters 64 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import yaml

from benchmarks import write_json
from vaekit import recipes
from vaekit.modalities.audio import AudioSpec, AudioVAE


def spec_from_config(config: str) -> AudioSpec:
    """The recipe's spectrogram settings (statistics do not matter for timing)."""
    data = yaml.safe_load(Path(recipes.resolve_config(config)).read_text())["data"]["init_args"]
    rate, n_mels = data.get("sample_rate", 8000), data.get("n_mels", 64)
    return AudioSpec(
        sample_rate=rate,
        num_samples=round(data.get("duration", 0.768) * rate),
        n_fft=data.get("n_fft", 256),
        hop_length=data.get("hop_length", 64),
        n_mels=n_mels,
        f_min=float(data.get("f_min", 0.0)),
        f_max=float(data.get("f_max") or rate / 2),
        log_floor=data.get("log_floor", 1e-5),
        mel_mean=[0.0] * n_mels,
        mel_std=[1.0] * n_mels,
    )


def seconds(fn, repeats: int) -> float:
    """Median wall time of ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/audio/fsdd.yaml")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--iters", type=int, default=64, help="Griffin-Lim iterations")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", help="write the result as JSON here too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = spec_from_config(args.config)
    model = AudioVAE(latent_dim=2, griffin_lim_iters=args.iters)
    model.attach_spec(spec)
    model = model.to(args.device).eval()
    waves = 0.1 * torch.randn(args.batch, spec.num_samples, device=args.device)
    with torch.no_grad():
        mels = model.features(waves)

        def sync() -> None:
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()

        def batched() -> None:
            model.to_waveform(mels)
            sync()

        def one_by_one() -> None:
            for mel in mels:
                model.to_waveform(mel.unsqueeze(0))
            sync()

        audio_seconds = args.batch * spec.num_samples / spec.sample_rate
        result = {
            "config": args.config,
            "device": args.device,
            "threads": torch.get_num_threads(),
            "batch": args.batch,
            "clip_seconds": spec.num_samples / spec.sample_rate,
            "griffin_lim_iters": args.iters,
            "n_fft": spec.n_fft,
            "hop_length": spec.hop_length,
            "n_mels": spec.n_mels,
            "batched_s_per_audio_s": seconds(batched, args.repeats) / audio_seconds,
            "one_by_one_s_per_audio_s": seconds(one_by_one, args.repeats) / audio_seconds,
        }
    result["batching_speedup"] = result["one_by_one_s_per_audio_s"] / result["batched_s_per_audio_s"]
    print(json.dumps(result, indent=2))
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
