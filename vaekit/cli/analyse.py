"""Analysis commands: evaluate, encode, score (each writes one file)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from vaekit.checkpoint import load_datamodule
from vaekit.cli.session import Session, is_joint
from vaekit.core.data import label_indices
from vaekit.core.io import atomic_path, write_text
from vaekit.core.module import map_batch
from vaekit.core.storage import ROW


def cmd_evaluate(s: Session) -> list[Path]:
    result = {"split": s.args.split, **s.run("test")}
    if s.args.classifier:
        from vaekit.modalities.multimodal.coherence import cross_modal_coherence, load_classifiers

        if not is_joint(s.model):
            raise ValueError("--classifier measures cross-modal coherence, which needs a joint (multimodal) model")
        classifiers = load_classifiers(s.args.classifier, list(s.model.parts))
        loader = s.datamodule.loader(s.args.split)
        batches = (s.prepare(batch) for batch in loader)
        result["coherence"] = cross_modal_coherence(
            s.model, batches, classifiers, s.options_for_generation(), s.args.joint_samples, len(loader)
        )
    out = s.out
    write_text(out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return [out]


def cmd_encode(s: Session) -> list[Path]:
    outputs = s.run("predict")
    arrays = {k: outputs[k].numpy() for k in ("mean", "logvar", "label")}
    paths = [s.out.with_suffix(".npz")]
    if s.args.plot:
        from vaekit.plots import latent_scatter, project_2d

        points, axis = project_2d(outputs["mean"], s.args.projection, s.args.seed)
        arrays["projection"] = points.numpy()  # the plotted coordinates, beside the latents
        label_names = getattr(s.model.spec, "label_names", None) or []
        paths.append(latent_scatter(points, axis, outputs["label"], s.args.plot, label_names))
    with atomic_path(paths[0]) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    return paths


def score_inputs(s: Session, complexity: bool) -> dict[str, torch.Tensor]:
    """`score --input FILES`: per-example outputs for the given files, in their order, a batch at a time."""
    batch = s.inputs(s.args.input)
    size = s.args.batch_size or 1024
    count = len(next(iter(batch.values())))
    parts = [
        s.model.predict_values(map_batch(batch, lambda v, i=i: v[i : i + size]), s.args.iw_samples, complexity)
        for i in range(0, count, size)
    ]
    return {key: torch.cat([part[key] for part in parts]).cpu() for key in parts[0]}


def cmd_score(s: Session) -> list[Path]:
    from vaekit.scoring import anomaly_score, auroc

    correction = s.args.correction
    complexity = correction == "complexity"
    inside = score_inputs(s, complexity) if s.args.input else s.run("predict", complexity=complexity)
    key = "nll" if "nll" in inside else "neg_elbo"
    # The typical score is that of in-distribution data the model did not train on: the validation split.
    typical = float(s.run("predict", split="val")[key].mean()) if correction == "typicality" else None
    sets = {"in": inside}
    if s.args.ood_root:
        if is_joint(s.model):
            raise ValueError("--ood-root takes one dataset, and a joint model reads several; score each with --from")
        # Another dataset: the label filters the model was trained with say nothing about its classes.
        ood = load_datamodule(s.model, s.record, s.args.ood_root, labels=None, exclude_labels=None)
        sets["ood"] = s.run("predict", ood, complexity=complexity)
    scores = {name: anomaly_score(o[key], correction, typical, o.get("complexity_bits")) for name, o in sets.items()}
    with atomic_path(s.out) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "set", "label", key, "score"])
        for name, outputs in sets.items():
            # The row of the data (a table's row in its file) where batches carry it, else the position.
            index = outputs.get(ROW, torch.arange(len(outputs["label"]))).tolist()
            rows = zip(index, outputs["label"].tolist(), outputs[key].tolist(), scores[name].tolist(), strict=True)
            for i, label, raw, score in rows:
                writer.writerow([i, name, label, f"{raw:.6f}", f"{score:.6f}"])
    what = f"{key} with the {correction} correction" if correction != "none" else key
    if "ood" in sets:
        both = torch.cat([scores["in"], scores["ood"]])
        is_ood = torch.cat([torch.zeros(len(scores["in"])), torch.ones(len(scores["ood"]))])
        value = auroc(both, is_ood)
        print(f"AUROC in-distribution vs {s.args.ood_root} ({what}): {'n/a' if value is None else f'{value:.4f}'}")
    # Without --normal, the labels the data module named normal (a table's label column), if any.
    # Rows without a label (-1: an --input file without the label column) are left out of the AUROC.
    normal_names = s.args.normal if s.args.normal is not None else getattr(s.model.spec, "normal_labels", None)
    known = inside["label"] >= 0
    if normal_names and known.any():
        label_names = getattr(s.model.spec, "label_names", None) or []
        labels, normal = inside["label"][known], torch.tensor(label_indices(normal_names, label_names, "--normal"))
        scores["in"] = scores["in"][known]
        overall = auroc(scores["in"], (~torch.isin(labels, normal)).long())
        if overall is None:
            print("AUROC not computed: the split holds only normal or only anomalous examples")
        else:
            print(f"AUROC ({what}, normal labels {normal_names}): {overall:.4f}")
            for value in sorted(set(labels.tolist()) - set(normal.tolist())):
                chosen = torch.isin(labels, normal) | (labels == value)
                name = label_names[value] if 0 <= value < len(label_names) else str(value)
                print(f"  label {name} vs normal: {auroc(scores['in'][chosen], (labels[chosen] == value).long()):.4f}")
    return [s.out]
