"""The joint digits model (configs/multimodal/digits.yaml) measured: coherence, sample quality and a picture.

    python -m benchmarks.multimodal_digits runs/digits/checkpoints/last.ckpt --out benchmarks/results/multimodal_digits.json

1. The sample-quality benchmark's MNIST and spoken-digit classifiers (trained once on the training data and
   cached; the spoken-digit one on the FSDD recipe's training speakers) are written as ONNX graphs, the form
   `vaekit evaluate --classifier` reads.
2. `vaekit evaluate CKPT --split test --classifier image=... audio=...`: the per-subset ELBO and IW NLL, the
   cross-modal coherence audio->image and image->audio over the test tuples (each of the held-out FSDD
   speaker's clips once, with an MNIST test image of its digit), and the joint coherence of prior and GMM
   samples.
3. Each modality's samples from the joint model scored as the unimodal recipes' samples are
   (benchmarks/sample_quality.py): IS, Fréchet distance, class spread, and loudness for audio.
4. ``--picture``: the held-out speaker saying each digit (log-mel spectrograms) above the images the model
   draws from the sound alone.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import Image

from benchmarks import write_json
from benchmarks.sample_quality import (
    CACHE,
    DigitClassifier,
    SpokenDigitClassifier,
    cached_classifier,
    fsdd_clips,
    loudness,
    mnist_images,
    score,
)
from vaekit.checkpoint import load_datamodule, load_model
from vaekit.cli import main as vaekit
from vaekit.core.evaluation import observe


def onnx_classifiers(mnist: Path, fsdd: Path) -> tuple[dict[str, Path], dict[str, DigitClassifier], dict]:
    """The cached classifiers as ONNX files, the classifiers themselves, and real data for the Fréchet distances."""
    train, test = mnist_images(mnist, "train"), mnist_images(mnist, "test")
    clips = fsdd_clips(fsdd)
    classifiers = {
        "image": cached_classifier(DigitClassifier(), "mnist_digits", train, test, epochs=2, batch_size=128),
        "audio": cached_classifier(
            SpokenDigitClassifier(), "fsdd_digits", clips["train"], clips["test"], epochs=8, batch_size=64
        ),
    }
    examples = {"image": test[0][:2], "audio": clips["test"][0][:2]}
    paths = {}
    for name, classifier in classifiers.items():
        paths[name] = CACHE / f"{name}_digits.onnx"
        if not paths[name].exists():
            torch.onnx.export(
                classifier.eval(),
                (examples[name],),
                str(paths[name]),
                input_names=["x"],
                output_names=["logits"],
                dynamic_shapes=[{0: torch.export.Dim("batch", min=1)}],
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    return paths, classifiers, {"image": test[0], "audio": clips["test"][0]}


def sample_quality(model, classifiers, real, num: int) -> dict[str, dict[str, float]]:
    """Each modality of ``num`` joint samples (prior and fitted sampler) through the unimodal scorers."""
    rows = {}
    for sampler in ("prior", *model.samplers):
        torch.manual_seed(0)
        with torch.no_grad():
            z = model.sample_latents(num, sampler=sampler)
            chunks = [model.generate(chunk) for chunk in z.split(250)]
        for name in ("image", "audio"):
            samples = torch.cat([c[name] for c in chunks])
            row = score(classifiers[name], samples, real[name])
            rows[f"{name} --sampler {sampler}"] = {**row, **(loudness(samples) if name == "audio" else {})}
    return rows


def picture(model, record, out: Path) -> Path:
    """The first test clip of each digit (the held-out speaker), its spectrogram above the image drawn from it."""
    datamodule = load_datamodule(model, record)
    datamodule.setup("test")
    pairing = datamodule.split("test")
    labels = pairing.labels[pairing.anchor]
    rows = [int((labels == digit).nonzero()[0]) for digit in range(10)]
    batch = datamodule.on_after_batch_transfer(datamodule.examples("test", rows), 0)
    with torch.no_grad():
        z = model.posterior(observe(batch, ["audio"])).mode()
        drawn = model.generate(z, deterministic=True, targets=["image"])["image"]
    spectrograms = model.parts["audio"].spectrograms(batch["audio"]["x"])
    width, height = spectrograms[0].size
    canvas = Image.new("RGB", (10 * (width + 4) + 4, height + width + 12), "white")
    for i, (spectrogram, image) in enumerate(zip(spectrograms, drawn, strict=True)):
        canvas.paste(spectrogram.convert("RGB"), (4 + i * (width + 4), 4))
        array = (image[0].clamp(0, 1) * 255).byte().cpu().numpy()
        canvas.paste(
            Image.fromarray(array).resize((width, width), Image.Resampling.NEAREST), (4 + i * (width + 4), height + 8)
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt")
    parser.add_argument("--mnist", default="../shared/data/mnist")
    parser.add_argument("--fsdd", default="../shared/data/fsdd/recordings")
    parser.add_argument("--iw-samples", type=int, default=100)
    parser.add_argument("--num", type=int, default=2000, help="samples per sampler for the sample quality")
    parser.add_argument("--picture", default="docs/images/digits_audio_to_image.png")
    parser.add_argument("--out", default="benchmarks/results/multimodal_digits.json")
    args = parser.parse_args()

    paths, classifiers, real = onnx_classifiers(Path(args.mnist), Path(args.fsdd))
    evaluation = Path(args.out).with_suffix(".evaluate.json")
    evaluation.unlink(missing_ok=True)
    command = ["evaluate", args.ckpt, "--split", "test", "--iw-samples", str(args.iw_samples), "--out", str(evaluation)]
    vaekit([*command, "--classifier", *(f"{name}={path}" for name, path in paths.items())])
    model, record = load_model(args.ckpt)
    result = {
        "evaluate": json.loads(evaluation.read_text()),
        "sample_quality": sample_quality(model, classifiers, real, args.num),
        "picture": str(picture(model, record, Path(args.picture))),
    }
    write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
