"""Cost and correctness of the per-step divergence check (issue 7): no host sync, little time, nothing saved.

Three parts, on CUDA when there is a GPU (else the CPU):
1. the check's ops (loss flag, gradient-norm flag) under ``torch.cuda.set_sync_debug_mode("error")``: any
   host sync would raise;
2. steps/s of the MNIST recipe's network training with the check against the same loop with it disabled,
   interleaved repeats in this process, as a ratio;
3. a NaN on a non-logging step just before an epoch end: training stops, and every checkpoint is finite.

    OMP_NUM_THREADS=2 python -m benchmarks.nonfinite_check --out benchmarks/results/nonfinite.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from benchmarks import write_json
from tests.helpers import PoisonBatchAtStep
from vaekit.core.module import NonFiniteError
from vaekit.modalities.image import ImageDataModule, ImageVAE


def build(device: str) -> tuple[ImageVAE, ImageDataModule]:
    data = ImageDataModule(root="demo:image", batch_size=128, binarize=True)
    data.setup("fit")
    model = ImageVAE(latent_dim=32, channels=[32, 64], blocks_per_stage=1, hidden=512)  # the MNIST recipe's network
    model.attach_spec(data.spec)
    return model.to(device), data


def sync_free(device: str) -> bool | None:
    """Run the check's ops in sync-debug "error" mode: a host sync inside them raises."""
    if device != "cuda":
        return None  # host syncs are a GPU matter
    model, data = build(device)
    batch = data.on_after_batch_transfer({k: v.to(device) for k, v in data.examples("train", range(128)).items()}, 0)
    terms = model.elbo_terms(batch)
    terms.loss.backward()
    model.on_train_start()  # as Lightning calls it before the first step
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        model._flag_nonfinite(terms.loss)
        model.on_before_optimizer_step(None)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return int(model._first_nonfinite_step) == -1


def steps_per_second(device: str, checked: bool, steps: int) -> float:
    model, data = build(device)
    if not checked:  # the same loop with the check's two per-step hooks turned off
        model._flag_nonfinite = lambda value: None
        model.on_before_optimizer_step = lambda optimizer: None
    trainer = pl.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu", devices=1, max_steps=steps, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, log_every_n_steps=50,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    if device == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def nan_run(device: str) -> dict[str, object]:
    from pytorch_lightning.callbacks import ModelCheckpoint

    model, data = build(device)
    with tempfile.TemporaryDirectory() as root:
        saver = ModelCheckpoint(dirpath=root, filename="last", every_n_train_steps=5, save_on_train_epoch_end=True)
        trainer = pl.Trainer(
            accelerator="gpu" if device == "cuda" else "cpu", devices=1, max_epochs=3, limit_train_batches=10,
            limit_val_batches=0, log_every_n_steps=50, logger=False, enable_progress_bar=False,
            callbacks=[saver, PoisonBatchAtStep(9)],
        )  # fmt: skip
        try:
            trainer.fit(model, datamodule=data)
            message = "no error"
        except NonFiniteError as err:
            message = str(err)
        finite = all(
            bool(torch.isfinite(t).all())
            for path in Path(root).glob("*.ckpt")
            for t in torch.load(path, weights_only=True)["state_dict"].values()
            if t.is_floating_point()
        )
        step = torch.load(Path(root) / "last.ckpt", weights_only=True)["global_step"]
    return {"message": message, "all_checkpoints_finite": finite, "last_ckpt_step": step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/nonfinite.json")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    steps_per_second(device, True, 20)  # warm-up (kernels, allocator)
    rates: dict[str, list[float]] = {"checked": [], "unchecked": []}
    for _ in range(args.repeats):
        for name in rates:
            rates[name].append(steps_per_second(device, name == "checked", args.steps))
    best = {name: max(values) for name, values in rates.items()}
    result = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "sync_free": sync_free(device),
        "steps_per_s": rates,
        "ratio_checked_to_unchecked": best["checked"] / best["unchecked"],
        "nan_run": nan_run(device),
    }
    write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
