"""Sample quality as a number: samples scored by a small domain classifier this script trains and caches.

MNIST (done): a 2-layer CNN digit classifier (trained here once, on the MNIST training images, cached under
``benchmarks/results/classifiers``) scores samples by

- the Inception Score, exp E_x KL(p(y|x) || p(y)): high when each sample is one clear digit and the digits
  are spread over the classes (10 at most);
- the Fréchet distance between Gaussians fitted to the classifier's 128-d penultimate features of the
  samples and of real test images (FID's formula with this classifier in Inception's place);
- the class histogram's largest/smallest count ratio (1 for a uniform spread).

Real held-out data go through the same scorer beside every figure (the test images' IS; the Fréchet distance
between 10,000 training and the test images).

FSDD: the same three figures from a spoken-digit classifier on level-normalised log-mel spectrograms (trained
on the recipe's training speakers), plus loudness: the level of each clip's loudest 32 ms in dB, averaged, for samples and real clips.
The held-out speaker's clips are the real reference for the Fréchet distance; the training speakers' level is
the one samples should match (the held-out FSDD speaker speaks 16 dB softer). The PTB scorer (issue #8) is not written yet.

    python -m benchmarks.sample_quality mnist runs/a/checkpoints/last.ckpt ... --samplers prior gmm --num 5000
    python -m benchmarks.sample_quality fsdd runs/f/checkpoints/last.ckpt --data ../shared/data/fsdd/recordings
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vaekit.checkpoint import load_model
from vaekit.modalities.image import read_idx

CACHE = Path("benchmarks/results/classifiers")


class DigitClassifier(nn.Module):
    """Two conv layers and a 128-d feature layer: ~99% test accuracy after two epochs on a CPU."""

    num_features = 128

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 5 * 5, self.num_features), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(self.num_features, 10)

    def features(self, images: Tensor) -> Tensor:
        return self.body(images)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))


def mnist_images(folder: Path, split: str) -> tuple[Tensor, Tensor]:
    stem = "train" if split == "train" else "t10k"
    images = torch.from_numpy(read_idx(folder, f"{stem}-images-idx3-ubyte", 2051).copy()).unsqueeze(1).float() / 255
    labels = torch.from_numpy(read_idx(folder, f"{stem}-labels-idx1-ubyte", 2049).astype("int64"))
    return images, labels


def cached_classifier(
    classifier: DigitClassifier,
    name: str,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    epochs: int,
    batch_size: int,
) -> DigitClassifier:
    """Trained once on ``train`` (inputs, labels), then cached (weights only); prints its accuracy on ``test``."""
    path = CACHE / f"{name}.pt"
    if path.exists():
        classifier.load_state_dict(torch.load(path, weights_only=True))
        return classifier.eval()
    inputs, labels = train
    optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for batch in torch.randperm(len(inputs), generator=generator).split(batch_size):
            loss = nn.functional.cross_entropy(classifier(inputs[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        accuracy = (classifier.eval()(test[0]).argmax(1) == test[1]).float().mean().item()
    print(f"{name} classifier: accuracy {accuracy:.4f} on held-out data")
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(classifier.state_dict(), path)
    return classifier


def inception_score(logits: Tensor) -> float:
    log_p = torch.log_softmax(logits, dim=1)
    log_marginal = torch.logsumexp(log_p, dim=0) - torch.log(torch.tensor(float(len(logits))))
    return float(torch.exp((log_p.exp() * (log_p - log_marginal)).sum(1).mean()))


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2) between Gaussians fitted to two feature sets."""
    a, b = a.double(), b.double()
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    root_trace = torch.linalg.eigvals(cov_a @ cov_b).sqrt().real.sum()
    return float((a.mean(0) - b.mean(0)).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * root_trace)


def score(classifier: DigitClassifier, images: Tensor, reference: Tensor) -> dict[str, float]:
    """IS, the Fréchet distance to ``reference`` and the class spread of ``images`` (N, 1, 28, 28) in [0, 1]."""
    with torch.no_grad():
        features = torch.cat([classifier.features(chunk) for chunk in images.split(1000)])
        reference_features = torch.cat([classifier.features(chunk) for chunk in reference.split(1000)])
        logits = classifier.head(features)
    counts = torch.bincount(logits.argmax(1), minlength=10).float()
    return {
        "inception_score": inception_score(logits),
        "frechet_distance": frechet_distance(features, reference_features),
        "class_ratio": float(counts.max() / counts.min().clamp(min=1)),
    }


def score_samples(
    args: argparse.Namespace, classifier: DigitClassifier, reference: Tensor, extra: Any = None
) -> dict[str, dict[str, float]]:
    """Each model's ``args.num`` samples from each of ``args.samplers``, scored against ``reference`` (plus
    ``extra(samples)``'s figures)."""
    results = {}
    for ckpt in args.ckpt:
        model, _ = load_model(ckpt)
        for sampler in args.samplers:
            torch.manual_seed(0)
            with torch.no_grad():
                z = model.sample_latents(args.num, 1.0, sampler)
                samples = torch.cat([model.generate(chunk) for chunk in z.split(100)])
            row = {**score(classifier, samples, reference), **(extra(samples) if extra else {})}
            results[f"{ckpt} --sampler {sampler}"] = row
            print(json.dumps({f"{ckpt} {sampler}": row}), flush=True)
    return results


def mnist(args: argparse.Namespace) -> dict:
    folder = Path(args.data)
    train, test = mnist_images(folder, "train"), mnist_images(folder, "test")
    classifier = cached_classifier(DigitClassifier(), "mnist_digits", train, test, epochs=2, batch_size=128)
    real = score(classifier, test[0], train[0][:10000])
    return {
        "real held-out (test images; FD against 10k training images)": real,
        **score_samples(args, classifier, test[0]),
    }


class SpokenDigitClassifier(DigitClassifier):
    """The digit classifier's layout over log-mels (1, 64 mels, 97 frames), each scaled to its own peak, so
    loudness is measured separately rather than learned."""

    def __init__(self) -> None:
        super().__init__()
        self.body[7] = nn.Linear(64 * 14 * 22, self.num_features)
        import torchaudio

        self.mel = torchaudio.transforms.MelSpectrogram(8000, n_fft=256, hop_length=64, n_mels=64)

    def features(self, waveforms: Tensor) -> Tensor:
        log_mel = torch.log(self.mel(waveforms) + 1e-5)
        log_mel = log_mel - log_mel.amax(dim=(1, 2), keepdim=True)  # 0 at the loudest cell: level-free
        return self.body(log_mel.clamp(min=-12).unsqueeze(1) / 12)


def fsdd_clips(folder: Path) -> dict[str, tuple[Tensor, Tensor]]:
    """The FSDD recipe's splits (its held-out speakers) as 0.768 s waveforms and labels."""
    from vaekit.cli import build_cli

    cli = build_cli(["--config", "configs/audio/fsdd.yaml", "--data.root", str(folder)], run=False)
    cli.datamodule.setup("fit")
    return {name: (split["x"], split["label"]) for name, split in cli.datamodule.splits.items()}


def level_db(waveforms: Tensor) -> float:
    """How loud the speech is: each clip's loudest 32 ms (RMS, dB re full scale), averaged over clips. Whole-clip
    RMS would also count the silence after a short word (zeros in real clips, a noise floor in samples)."""
    frames = waveforms.unfold(1, 256, 128).pow(2).mean(-1).sqrt()
    return float((20 * torch.log10(frames.amax(1).clamp(min=1e-8))).mean())


def fsdd(args: argparse.Namespace) -> dict:
    clips = fsdd_clips(Path(args.data))
    classifier = cached_classifier(
        SpokenDigitClassifier(), "fsdd_digits", clips["train"], clips["test"], epochs=8, batch_size=64
    )
    (train, _), (test, _) = clips["train"], clips["test"]
    return {
        "real held-out speaker (FD against the training speakers)": {
            **score(classifier, test, train),
            "level_db": level_db(test),
        },
        "real training speakers (FD against the held-out speaker)": {
            **score(classifier, train, test),
            "level_db": level_db(train),
        },
        **score_samples(args, classifier, test, lambda waves: {"level_db": level_db(waves)}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=["mnist", "fsdd"])
    parser.add_argument("ckpt", nargs="*", help="models to score (checkpoints or exported folders)")
    parser.add_argument("--data", help="default: ../shared/data/mnist or ../shared/data/fsdd/recordings")
    parser.add_argument("--samplers", nargs="+", default=["prior", "gmm"])
    parser.add_argument("--num", type=int, default=5000)
    parser.add_argument("--out")
    args = parser.parse_args()
    args.data = args.data or {"mnist": "../shared/data/mnist", "fsdd": "../shared/data/fsdd/recordings"}[args.dataset]
    results = mnist(args) if args.dataset == "mnist" else fsdd(args)
    print("| samples | IS | Fréchet distance | class max/min | level dB |\n|---|---|---|---|---|")
    for name, row in results.items():
        level = f"{row['level_db']:.1f}" if "level_db" in row else ""
        print(
            f"| {name} | {row['inception_score']:.2f} | {row['frechet_distance']:.2f} | {row['class_ratio']:.2f} | {level} |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
