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
on the recipe's training speakers), plus loudness: the level of each clip's loudest 32 ms in dB, averaged, for samples
and real clips, and the share of near-silent clips (loudest 32 ms under -45 dB).
The held-out speaker's clips are the real reference for the Fréchet distance; the training speakers' level is
the one samples should match (the held-out FSDD speaker speaks 16 dB softer).

PTB: a GRU language model (trained here once on the training sentences, cached) gives the perplexity of the
samples, beside its perplexity on as many real test sentences; distinct-1/2 (unique n-grams over all n-grams
of the set) and the share of duplicate sentences are computed on sets of the same size, since both depend on it.

    python -m benchmarks.sample_quality mnist runs/a/checkpoints/last.ckpt ... --samplers prior gmm --num 5000
    python -m benchmarks.sample_quality fsdd runs/f/checkpoints/last.ckpt --data ../shared/data/fsdd/recordings
    python -m benchmarks.sample_quality ptb runs/p/checkpoints/last.ckpt --data ../shared/data/ptb --num 1000
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vaekit.checkpoint import load_model
from vaekit.modalities.audio.spectral import MelSpectrogram
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


def score_samples(args: argparse.Namespace, scorer: Callable[[Any], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each model's ``args.num`` samples (images, waveforms or sentences) from each of ``args.samplers``,
    with ``scorer(samples)``'s figures."""
    results = {}
    for ckpt in args.ckpt:
        model, _ = load_model(ckpt)
        for sampler in args.samplers:
            torch.manual_seed(0)
            with torch.no_grad():
                z = model.sample_latents(args.num, 1.0, sampler)
                parts = [model.generate(chunk) for chunk in z.split(100)]
            samples = torch.cat(parts) if isinstance(parts[0], Tensor) else [x for part in parts for x in part]
            row = scorer(samples)
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
        **score_samples(args, lambda samples: score(classifier, samples, test[0])),
    }


class SpokenDigitClassifier(DigitClassifier):
    """The digit classifier's layout over log-mels (1, 64 mels, 97 frames), each scaled to its own peak, so
    loudness is measured separately rather than learned."""

    def __init__(self) -> None:
        super().__init__()
        self.body[7] = nn.Linear(64 * 14 * 22, self.num_features)
        # The power mel spectrogram torchaudio's MelSpectrogram(8000, n_fft=256, hop_length=64, n_mels=64) gave.
        self.mel = MelSpectrogram(8000, n_fft=256, hop_length=64, n_mels=64, f_min=0.0, f_max=4000.0, power=2.0)

    def features(self, waveforms: Tensor) -> Tensor:
        log_mel = torch.log(self.mel(waveforms) + 1e-5)
        log_mel = log_mel - log_mel.amax(dim=(1, 2), keepdim=True)  # 0 at the loudest cell: level-free
        return self.body(log_mel.clamp(min=-12).unsqueeze(1) / 12)


def fsdd_clips(folder: Path) -> dict[str, tuple[Tensor, Tensor]]:
    """The FSDD recipe's splits (its held-out speakers) as 0.768 s waveforms and labels."""
    from vaekit.cli.fit import build_cli

    cli = build_cli(["--config", "configs/audio/fsdd.yaml", "--data.root", str(folder)], run=False)
    cli.datamodule.setup("fit")
    return {name: (split["x"], split["label"]) for name, split in cli.datamodule.splits.items()}


def loudness(waveforms: Tensor) -> dict[str, float]:
    """How loud the speech is: each clip's loudest 32 ms (RMS, dB re full scale), averaged over clips, and the
    share of near-silent clips (loudest 32 ms under -45 dB). Whole-clip RMS would also count the silence after
    a short word (zeros in real clips, a noise floor in samples)."""
    frames = waveforms.unfold(1, 256, 128).pow(2).mean(-1).sqrt()
    peaks = 20 * torch.log10(frames.amax(1).clamp(min=1e-8))
    return {"level_db": float(peaks.mean()), "quiet_share": float((peaks < -45).float().mean())}


def fsdd(args: argparse.Namespace) -> dict:
    clips = fsdd_clips(Path(args.data))
    classifier = cached_classifier(
        SpokenDigitClassifier(), "fsdd_digits", clips["train"], clips["test"], epochs=8, batch_size=64
    )
    (train, _), (test, _) = clips["train"], clips["test"]
    return {
        "real held-out speaker (FD against the training speakers)": {
            **score(classifier, test, train),
            **loudness(test),
        },
        "real training speakers (FD against the held-out speaker)": {
            **score(classifier, train, test),
            **loudness(train),
        },
        **score_samples(args, lambda waves: {**score(classifier, waves, test), **loudness(waves)}),
    }


class WordLM(nn.Module):
    """The scorer for sentences: a one-layer GRU word LM with an adaptive softmax (test PPL about 145 on PTB after its 3 epochs)."""

    def __init__(self, vocab: int, width: int = 256) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.rnn = nn.GRU(width, width, batch_first=True)
        self.out = nn.AdaptiveLogSoftmaxWithLoss(width, vocab, [2000], div_value=4.0)

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        """Summed log-probability of each padded sentence (BOS ... EOS) after its BOS."""
        features, _ = self.rnn(self.embed(ids[:, :-1]))
        real = torch.arange(ids.shape[1] - 1) < (lengths - 1)[:, None]
        per_token = features.new_zeros(real.shape)
        per_token[real] = self.out(features[real], ids[:, 1:][real]).output
        return per_token.sum(1)


class Vocabulary:
    """Words of the training split, most frequent first; BOS/EOS/unknown around them (PTB already says <unk>)."""

    def __init__(self, sentences: list[str]) -> None:
        from collections import Counter

        counts = Counter(word for sentence in sentences for word in sentence.split())
        self.words = ["<s>", "</s>", "<unk>", *(w for w, _ in counts.most_common() if w != "<unk>")]
        self.index = {word: i for i, word in enumerate(self.words)}

    def batch(self, sentences: list[str]) -> tuple[Tensor, Tensor]:
        rows = [[0, *(self.index.get(w, 2) for w in s.split()), 1] for s in sentences]
        lengths = torch.tensor([len(r) for r in rows])
        ids = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        return ids, lengths


def lm_perplexity(lm: WordLM, vocab: Vocabulary, sentences: list[str]) -> float:
    """exp(NLL per token, EOS counted): each sentence scored on its own."""
    log_prob = tokens = 0.0
    with torch.no_grad():
        for start in range(0, len(sentences), 256):
            ids, lengths = vocab.batch(sentences[start : start + 256])
            log_prob += float(lm(ids, lengths).sum())
            tokens += float((lengths - 1).sum())
    return math.exp(-log_prob / tokens)


def cached_lm(vocab: Vocabulary, train: list[str], valid: list[str], epochs: int = 3) -> WordLM:
    path = CACHE / "ptb_lm.pt"
    lm = WordLM(len(vocab.words))
    if path.exists():
        lm.load_state_dict(torch.load(path, weights_only=True))
        return lm.eval()
    optimizer = torch.optim.Adam(lm.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    order = sorted(range(len(train)), key=lambda i: len(train[i].split()))  # length-bucketed batches
    batches = [order[i : i + 64] for i in range(0, len(order), 64)]
    for _ in range(epochs):
        for b in torch.randperm(len(batches), generator=generator).tolist():
            ids, lengths = vocab.batch([train[i] for i in batches[b]])
            loss = -lm(ids, lengths).sum() / (lengths - 1).sum()
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
            optimizer.step()
    print(f"ptb LM: validation perplexity {lm_perplexity(lm.eval(), vocab, valid):.1f}")
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(lm.state_dict(), path)
    return lm


def diversity(sentences: list[str]) -> dict[str, float]:
    """distinct-1/2 over the whole set and the share of sentences that repeat an earlier one."""
    words = [s.split() for s in sentences]
    figures = {}
    for n in (1, 2):
        grams = [tuple(w[i : i + n]) for w in words for i in range(len(w) - n + 1)]
        figures[f"distinct_{n}"] = len(set(grams)) / max(len(grams), 1)
    figures["duplicates"] = 1 - len(set(sentences)) / len(sentences)
    figures["mean_words"] = sum(map(len, words)) / len(words)
    return figures


def ptb(args: argparse.Namespace) -> dict:
    folder = Path(args.data)
    read = {name: [ln.strip() for ln in (folder / f"ptb.{name}.txt").read_text().splitlines() if ln.strip()]
            for name in ("train", "valid", "test")}  # fmt: skip
    vocab = Vocabulary(read["train"])
    lm = cached_lm(vocab, read["train"], read["valid"])
    real = [read["test"][i] for i in torch.randperm(len(read["test"]), generator=torch.Generator().manual_seed(0))]
    real = real[: args.num]

    def scorer(sentences: list[str]) -> dict[str, Any]:
        return {
            "lm_perplexity": lm_perplexity(lm, vocab, sentences),
            **diversity(sentences),
            "examples": sentences[:10],
        }

    return {"real held-out (test sentences, as many as samples)": scorer(real), **score_samples(args, scorer)}


def print_table(results: dict[str, dict[str, Any]]) -> None:
    if any("lm_perplexity" in row for row in results.values()):
        print(
            "| samples | LM perplexity | distinct-1 | distinct-2 | duplicates | words/sentence |\n|---|---|---|---|---|---|"
        )
        for name, row in results.items():
            print(f"| {name} | {row['lm_perplexity']:.1f} | {row['distinct_1']:.3f} | {row['distinct_2']:.3f} "
                  f"| {row['duplicates']:.3f} | {row['mean_words']:.1f} |")  # fmt: skip
        return
    print("| samples | IS | Fréchet distance | class max/min | level dB | near-silent |\n|---|---|---|---|---|---|")
    for name, row in results.items():
        level = f"{row['level_db']:.1f} | {row['quiet_share']:.3f}" if "level_db" in row else " | "
        print(
            f"| {name} | {row['inception_score']:.2f} | {row['frechet_distance']:.2f} | {row['class_ratio']:.2f} | {level} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=["mnist", "fsdd", "ptb"])
    parser.add_argument("ckpt", nargs="*", help="models to score (checkpoints or exported folders)")
    parser.add_argument("--data", help="default: ../shared/data/mnist or ../shared/data/fsdd/recordings")
    parser.add_argument("--samplers", nargs="+", default=["prior", "gmm"])
    parser.add_argument("--num", type=int, default=5000)
    parser.add_argument("--out")
    args = parser.parse_args()
    defaults = {"mnist": "../shared/data/mnist", "fsdd": "../shared/data/fsdd/recordings", "ptb": "../shared/data/ptb"}
    args.data = args.data or defaults[args.dataset]
    results = {"mnist": mnist, "fsdd": fsdd, "ptb": ptb}[args.dataset](args)
    print_table(results)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
