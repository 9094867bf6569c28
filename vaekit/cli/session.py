"""What a checkpoint command works with: the loaded model, its data module, the parsed flags, where to write."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from tqdm.auto import tqdm

from vaekit.checkpoint import ModelRecord, load_datamodule
from vaekit.core.data import VAEDataModule
from vaekit.core.evaluation import Evaluator, observe
from vaekit.core.module import VAE, Batch, map_batch


@dataclasses.dataclass
class Session:
    """A loaded model with its data module, on the chosen device."""

    model: VAE
    record: ModelRecord
    args: argparse.Namespace
    options: dict[str, Any]
    out: Path  # where the command writes: a staging folder for the folder-writing commands
    _datamodule: VAEDataModule | None = None

    @property
    def datamodule(self) -> VAEDataModule:
        if self._datamodule is None:
            self._datamodule = load_datamodule(self.model, self.record, self.args.data_root)
        return self._datamodule

    @property
    def observed(self) -> list[str] | None:
        """The modalities a joint model encodes (``--from``; None: all it has)."""
        return getattr(self.args, "from_", None)

    def prepare(self, batch: Batch) -> Batch:
        """Move a batch to the model's device, apply the data module's device-side transform, keep what the
        model observes."""
        batch = map_batch(batch, lambda v: v.to(self.model.device))
        return observe(self.datamodule.on_after_batch_transfer(batch, 0), self.observed)

    def examples(self, split: str, indices: Sequence[int]) -> Batch:
        self.datamodule.setup("test")
        return self.prepare(self.datamodule.examples(split, indices))

    def inputs(self, items: list[str]) -> Batch:
        if not is_joint(self.model):
            return self.prepare(self.datamodule.load_inputs(items))
        sources = getattr(self.args, "from_", None) or []
        if len(sources) != 1:
            raise ValueError("--input files are of one modality: name it with --from (e.g. --from audio)")
        return self.prepare(self.datamodule.load_part_inputs(sources[0], items))

    def options_for_generation(self) -> dict[str, Any]:
        """The model's generation options at their defaults, for commands without generation flags (evaluate)."""
        options_type = self.model.generation_options
        return {f.name: f.default for f in dataclasses.fields(options_type)} if options_type else {}

    def generate(self, z: torch.Tensor) -> Any:
        # Reconstructions, translations and interpolations follow from z alone unless a flag asks for sampling.
        deterministic = self.args.command in ("reconstruct", "interpolate", "translate")
        targets = {"targets": getattr(self.args, "to", None)} if is_joint(self.model) else {}
        return self.model.generate(z, deterministic=deterministic, **targets, **self.options)

    def save(self, data: Any, stem: str, nrow: int | None = None) -> list[Path]:
        return self.model.save_outputs(data, self.out, stem, nrow=nrow, **self.options)

    def check_budget(self, count: int, flag: str) -> None:
        """Refuse up front a command whose ``count`` outputs would not fit in memory, with the estimate: one
        output is decoded (under a forked RNG) and its size times ``OUTPUT_OVERHEAD`` (the tensor, its picture
        or waveform file in flight, the grid) times ``count`` must stay under half the available memory."""
        if count <= SMALL_COUNT:
            return
        devices = [self.model.device] if self.model.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            one = self.generate(torch.zeros(1, self.model.hparams.latent_dim, device=self.model.device))
        need = count * (size_in_bytes(one) * OUTPUT_OVERHEAD + 4 * self.model.hparams.latent_dim)
        available = available_memory()
        if need > available / 2:
            most = max(1, int(available / 2 / (need / count)))
            raise MemoryError(
                f"{flag} {count:,} would hold about {need / 2**30:.1f} GB of outputs in memory, and "
                f"{available / 2**30:.1f} GB is available; ask for at most {most:,} per run"
            )

    def evaluation_trainer(self, datamodule: VAEDataModule, split: str) -> pl.Trainer:
        """A one-device Lightning trainer over ``split`` of ``datamodule`` (progress bar, device placement), with
        the data module's batches sized for the command."""
        iw_samples = getattr(self.args, "iw_samples", 0)
        datamodule.eval_split = split
        if self.args.batch_size:
            datamodule.hparams.eval_batch_size = self.args.batch_size
        elif iw_samples > 0:
            # The IW estimator works in chunks of iw_max_rows rows whatever the batch size, so batches of that
            # many rows cost no speed and let the progress bar move (and estimate the time) batch by batch.
            datamodule.hparams.eval_batch_size = max(1, self.model.hparams.iw_max_rows // iw_samples)
        if getattr(self.args, "max_examples", None):
            # The first N of the split in its own order: text batches are sorted by length, so the first batches
            # would be the shortest sentences rather than a fair share.
            datamodule.setup("test")
            datamodule.keep_first(split, self.args.max_examples)
        return pl.Trainer(
            accelerator=self.args.device,
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
        )

    def run(
        self, stage: str, datamodule: VAEDataModule | None = None, split: str | None = None, complexity: bool = False
    ) -> Any:
        """``trainer.test`` (stage ``test``: the `evaluate` figures) or ``trainer.predict`` (per-example outputs)
        of an ``Evaluator`` over ``split`` of ``datamodule`` (the command's own by default); the command's
        settings travel as the evaluator's arguments."""
        datamodule = datamodule or self.datamodule
        trainer = self.evaluation_trainer(datamodule, split or self.args.split)
        evaluator = Evaluator(self.model, getattr(self.args, "iw_samples", 0), complexity, self.observed)
        if stage == "test":
            trainer.test(evaluator, datamodule=datamodule, verbose=False)
            return evaluator.result
        outputs = trainer.predict(evaluator, datamodule=datamodule)
        return {k: torch.cat([o[k] for o in outputs]).cpu() for k in outputs[0]}


SMALL_COUNT = 256  # outputs that need no estimate
OUTPUT_OVERHEAD = 4


def size_in_bytes(data: Any) -> int:
    """Memory of decoded outputs: tensors, strings, and lists or dicts of them."""
    if isinstance(data, torch.Tensor):
        return data.numel() * data.element_size()
    if isinstance(data, str):
        return len(data.encode())
    if isinstance(data, dict):
        return sum(size_in_bytes(v) for v in data.values())
    if isinstance(data, list | tuple):
        return sum(size_in_bytes(v) for v in data)
    return 64


def available_memory() -> int:
    """Bytes the system could give this process now (MemAvailable; all free pages where it is unknown)."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _in_batches(session: Session, z: torch.Tensor, batch: int = 256) -> list[Any]:
    chunks = list(torch.split(z, batch))
    return [session.generate(c) for c in tqdm(chunks, desc="decoding", disable=len(chunks) < 2)]


def _concat(parts: list[Any]) -> Any:
    """Decoded chunks joined: tensors, lists (sentences), or one of those per modality (a joint model's)."""
    if isinstance(parts[0], dict):
        return {name: _concat([part[name] for part in parts]) for name in parts[0]}
    return torch.cat(parts) if isinstance(parts[0], torch.Tensor) else [x for part in parts for x in part]


def is_joint(model: VAE) -> bool:
    """Whether the model joins several modalities (it has parts, whichever plugin made it)."""
    return isinstance(getattr(model, "parts", None), torch.nn.ModuleDict)


def choose_modalities(model: VAE, args: argparse.Namespace) -> None:
    """A joint model encodes the ``--from`` modalities and decodes the ``--to`` ones; others have one modality."""
    sources, targets = getattr(args, "from_", None), getattr(args, "to", None)
    if not is_joint(model):
        if args.command == "translate":
            raise ValueError(
                f"translate needs a joint model (configs/multimodal/*.yaml); {args.ckpt} is a {model.modality} model"
            )
        return
    for flag, names in (("--from", sources), ("--to", targets)):
        unknown = [n for n in names or [] if n not in model.parts]
        if unknown:
            raise ValueError(f"{flag} {' '.join(unknown)}: the model's modalities are {', '.join(model.parts)}")
