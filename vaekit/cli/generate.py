"""Generation commands: sample, reconstruct, interpolate, translate, traverse (each writes a staged folder)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vaekit.cli.session import Session, _concat, _in_batches
from vaekit.core.io import write_text


def cmd_sample(s: Session) -> list[Path]:
    s.check_budget(s.args.num, "--num")
    z = s.model.sample_latents(s.args.num, s.args.temperature, s.args.sampler)
    return s.save(_concat(_in_batches(s, z)), "samples")


def cmd_reconstruct(s: Session) -> list[Path]:
    s.check_budget(2 * s.args.num, "--num")  # inputs and reconstructions
    batch = s.inputs(s.args.input) if s.args.input else s.examples("test", range(s.args.num))
    reconstructions = s.generate(s.model.posterior(batch).mode())
    return s.save(s.model.as_outputs(batch), "inputs") + s.save(reconstructions, "reconstructions")


def cmd_interpolate(s: Session) -> list[Path]:
    if (s.args.a is None) != (s.args.b is None):
        raise SystemExit("give both --a and --b, or neither (then two test examples are used)")
    batch = s.inputs([s.args.a, s.args.b]) if s.args.a is not None else s.examples("test", [0, 1])
    s.check_budget(s.args.steps, "--steps")
    z = s.model.posterior(batch).mode()
    path = s.model.interpolate_latents(z[0], z[1], s.args.steps)
    return s.save(s.generate(path), "interpolation", nrow=s.args.steps)


def cmd_translate(s: Session) -> list[Path]:
    """Decode the ``--to`` modalities from the ``--from`` ones: given files, or the first N tuples of the test split."""
    s.check_budget(2 * s.args.num, "--num")
    batch = s.inputs(s.args.input) if s.args.input else s.examples("test", range(s.args.num))
    paths = s.save(s.model.as_outputs(batch), "inputs")
    paths += s.save(s.generate(s.model.posterior(batch).mode()), "translations")
    if not s.args.input:  # which digit (class) each test tuple was, for a reader checking the translations
        names = s.model.spec.label_names
        labels = batch[s.args.from_[0]]["label"].tolist()
        rows = ["index,label"] + [f"{i},{names[y] if 0 <= y < len(names) else y}" for i, y in enumerate(labels)]
        paths.append(write_text(s.out / "labels.csv", "\n".join(rows) + "\n"))
    return paths


def cmd_traverse(s: Session) -> list[Path]:
    latent_dim = s.model.hparams.latent_dim
    dims = s.args.dims if s.args.dims is not None else list(range(min(latent_dim, 10)))
    s.check_budget(len(dims) * s.args.steps, "--dims times --steps")
    base = torch.zeros(1, latent_dim, device=s.model.device)
    grid = s.model.traverse_latents(base, dims, s.args.span, s.args.steps)
    paths = s.save(_concat(_in_batches(s, grid)), "traversal", nrow=s.args.steps)
    write_text(s.out / "traversal.json", json.dumps({"dims": dims, "span": s.args.span, "steps": s.args.steps}))
    return paths
