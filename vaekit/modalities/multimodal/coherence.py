"""Cross-modal coherence of a joint model: do its translations and joint samples keep the meaning (the class)?

A classifier per target modality judges decoded outputs (Shi et al. 2019; Sutter et al. 2021):

- translation coherence ``S->t``: the share of held-out tuples whose modality t, decoded from the posterior
  of the modalities S, is classified as the tuple's label;
- joint coherence: the share of prior samples whose decoded modalities are all classified alike.

Classifiers are ONNX graphs (outputs as the modality's ``generate`` returns them -> logits over the joint
model's label names, in order): files anyone can run and vaekit can load without unpickling code.
`benchmarks/multimodal_digits.py` writes the MNIST and spoken-digit classifiers of the sample-quality benchmark
this way.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from vaekit.core.evaluation import observe
from vaekit.modalities.multimodal.model import present

Classifier = Callable[[Tensor], Tensor]


class OnnxClassifier:
    """An ONNX classifier run by onnxruntime on the CPU: a batch of outputs -> logits."""

    def __init__(self, path: str | Path) -> None:
        try:
            import onnxruntime
        except ImportError as err:
            raise ValueError("--classifier needs onnxruntime: pip install 'vaekit[onnx]'") from err
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such classifier (an .onnx file)")
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own types for files it cannot parse
            raise ValueError(f"{path}: not an ONNX graph onnxruntime can run ({err})") from err
        self.input = self.session.get_inputs()[0].name
        self.path = path

    def __call__(self, outputs: Tensor) -> Tensor:
        array = outputs.detach().float().cpu().numpy()
        return torch.from_numpy(np.asarray(self.session.run(None, {self.input: array})[0]))


def load_classifiers(specs: list[str], parts: list[str]) -> dict[str, Classifier]:
    """``MOD=FILE.onnx`` pairs (``--classifier image=mnist.onnx``) as classifiers by modality."""
    classifiers: dict[str, Classifier] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or name not in parts:
            raise ValueError(f"--classifier {spec!r}: write MOD=FILE.onnx with MOD one of {', '.join(parts)}")
        classifiers[name] = OnnxClassifier(path)
    return classifiers


def _predict(classifier: Classifier, outputs: Any) -> Tensor:
    if not isinstance(outputs, Tensor):
        raise ValueError("coherence needs classifiers of tensor outputs (images, waveforms), not of text")
    return classifier(outputs).argmax(-1).cpu()


def cross_modal_coherence(
    model: Any,
    batches: Iterable[dict[str, dict[str, Tensor]]],
    classifiers: dict[str, Classifier],
    options: dict[str, Any],
    joint_samples: int = 1000,
    total: int | None = None,
) -> dict[str, float]:
    """Translation coherence for every subset S -> modality t (t classified, t not in S), over the tuples of
    ``batches`` that hold S and t; and the joint coherence of ``joint_samples`` prior samples."""
    names = list(model.parts)
    routes = [
        (subset, target)
        for target in classifiers
        for size in range(1, len(names))
        for subset in itertools.combinations([n for n in names if n != target], size)
    ]
    hits = {route: [0, 0] for route in routes}
    for batch in tqdm(batches, desc="coherence", total=total):
        for subset, target in routes:
            rows = torch.stack([present(batch[n]) for n in (*subset, target)]).all(0).cpu()
            z = model.posterior(observe(batch, list(subset))).mode()
            decoded = model.generate(z, deterministic=True, targets=[target], **options)[target]
            correct = _predict(classifiers[target], decoded) == batch[target]["label"].cpu()
            hits[(subset, target)][0] += int(correct[rows].sum())
            hits[(subset, target)][1] += int(rows.sum())
    result = {f"{'+'.join(s)}->{t}": h / n for (s, t), (h, n) in hits.items() if n}
    if joint_samples and len(classifiers) >= 2:
        for sampler in ("prior", *model.samplers):
            key = "joint" if sampler == "prior" else f"joint_{sampler}"
            result[key] = _joint_coherence(model, classifiers, options, joint_samples, sampler)
    return result


def _joint_coherence(
    model: Any, classifiers: dict[str, Classifier], options: dict[str, Any], num: int, sampler: str
) -> float:
    """The share of ``num`` samples (from the prior or a fitted sampler) whose modalities are classified alike."""
    z = model.sample_latents(num, sampler=sampler)
    predictions = []
    for chunk in tqdm(z.split(256), desc=f"joint samples ({sampler})", disable=len(z) <= 256):
        decoded = model.generate(chunk, targets=list(classifiers), **options)
        predictions.append(torch.stack([_predict(classifiers[t], decoded[t]) for t in classifiers]))
    labels = torch.cat(predictions, 1)
    return float((labels == labels[:1]).all(0).float().mean())
