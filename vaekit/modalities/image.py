"""Image modality: convolutional encoder/decoder, Bernoulli or Gaussian likelihood, PNG output."""

from __future__ import annotations

import gzip
import io
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from vaekit.core.data import VAEDataModule
from vaekit.core.likelihoods import LIKELIHOODS
from vaekit.core.module import VAE, Batch, bits_per_dim
from vaekit.core.networks import ConvDecoder, ConvEncoder
from vaekit.core.storage import ROW, Rows, Split, canonical_split, file_stats, fingerprint, scan_folder, walk_files
from vaekit.modalities.pictures import grid, save_png
from vaekit.modalities.registry import Modality

# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class ImageSpec:
    """What the image data tells the model; stored in every checkpoint."""

    channels: int
    height: int
    width: int
    binarized: bool
    label_names: list[str] = field(default_factory=list)


IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _open_maybe_gz(folder: Path, stem: str) -> tuple[Path, bytes]:
    for path in (folder / stem, folder / f"{stem}.gz"):
        if path.exists():
            try:
                raw = path.read_bytes()
                return path, gzip.decompress(raw) if path.suffix == ".gz" else raw
            except (OSError, EOFError, gzip.BadGzipFile) as err:
                raise ValueError(f"{path}: cannot decompress ({err}); download the file again") from err
    raise FileNotFoundError(f"{folder / stem}(.gz) is missing")


def read_idx(folder: Path, stem: str, magic: int) -> np.ndarray:
    """Read one MNIST IDX file (optionally gzipped), checking its header against its length."""
    path, data = _open_maybe_gz(folder, stem)
    dims = magic & 0xFF
    header = 4 + 4 * dims
    if len(data) < header or struct.unpack(">I", data[:4])[0] != magic:
        raise ValueError(f"{path}: not an IDX file with magic {magic} (wrong or corrupt file)")
    shape = struct.unpack(f">{dims}I", data[4:header])
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise ValueError(f"{path}: {len(data)} bytes but the header promises {expected}; the file is truncated")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def is_mnist_folder(folder: Path) -> bool:
    """MNIST IDX files of either split (a test-only folder is enough for the checkpoint commands)."""
    return any((folder / f"{images}{ext}").exists() for images, _ in MNIST_FILES.values() for ext in ("", ".gz"))


def _mnist_examples(folder: Path, images: str, labels: str) -> Iterator[dict[str, Any]]:
    """One split's examples, read from its IDX files only when a cache is being written."""
    x = read_idx(folder, images, 2051)
    y = read_idx(folder, labels, 2049)
    if len(x) != len(y):
        raise ValueError(f"{folder}: {len(x)} images in {images} but {len(y)} labels in {labels}")
    for image, label in zip(x, y, strict=True):
        yield {"x": image[None], "label": int(label)}


def _labelled_files(folder: Path, label_names: list[str]) -> Iterator[dict[str, Any]]:
    """The folder's images as rows shaped like a ``datasets`` image row: {"image": {"path"}, "label"}."""
    for path in walk_files(folder, IMAGE_EXTENSIONS):
        parent = path.parent.name if path.parent != folder else None
        label = label_names.index(parent) if parent in label_names else -1
        yield {"image": {"path": str(path), "bytes": None}, "label": label}


def _as_list(example: dict[str, Any]) -> list[dict[str, Any]]:
    return [example]


class _FolderDecoder:
    """Decodes the rows of an image folder or hub split; every image must match the first one's shape."""

    def __init__(self, datamodule: ImageDataModule, split: str, image_column: str, label_column: str | None) -> None:
        self.datamodule, self.split = datamodule, split
        self.image_column, self.label_column = image_column, label_column
        self.shape: tuple[int, ...] | None = None

    def __call__(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        item = row[self.image_column]
        where = item.get("path") or f"{self.datamodule.source} {self.split} example"
        array = self.datamodule._decode_one(item, where, expected=self.shape)
        if array is None:
            return []
        self.shape = array.shape
        label = row[self.label_column] if self.label_column else -1
        return [{"x": np.ascontiguousarray(array.transpose(2, 0, 1)), "label": int(label)}]


class ImageDataModule(VAEDataModule):
    """Images from an MNIST IDX folder, an image folder, or a hub dataset id.

    Image folders follow the ``datasets`` imagefolder layout: ``root/{train,test}/<label>/*.png``
    (or ``root/<label>/*.png``, in which case ``test_fraction`` is held out as the test split).
    Every image must have one size, unless ``image_size`` asks for resizing. ``binarize`` turns
    grey levels into {0,1}: dynamically (a fresh draw every batch) for training, and for validation
    and test once per image, with a fixed seed (the IWAE protocol), whichever batch it lands in.
    """

    DEVICE_COLLATE = True

    def __init__(
        self,
        root: str,
        binarize: bool = True,
        image_size: tuple[int, int] | None = None,
        grayscale: bool | None = None,
        **common: Any,
    ) -> None:
        super().__init__(root, **common)

    # ---------------------------------------------------------------- loading
    def load_splits(self) -> dict[str, Rows]:
        if self.source.local is not None and is_mnist_folder(self.source.local):
            splits = self._mnist_rows(self.source.local)
        else:
            splits = self._folder_rows()
        if "train" not in splits and self.spec is None:
            raise ValueError(f"{self.source}: no training images (a train split, or MNIST train-* files)")
        return splits

    def _mnist_rows(self, folder: Path) -> dict[str, Rows]:
        self.label_names = [str(d) for d in range(10)]
        splits = {}
        for split, stems in MNIST_FILES.items():
            paths = [p for stem in stems for p in (folder / stem, folder / f"{stem}.gz") if p.exists()]
            if paths:
                examples = _mnist_examples(folder, *stems)
                splits[split] = Rows(examples, _as_list, fingerprint("mnist", file_stats(paths)), count=None)
        return splits

    def _local_rows(self, root: Path) -> dict[str, Rows]:
        """An image folder, listed without reading it: split folders, then one folder per label."""
        folders = {canonical_split(p.name): p for p in sorted(root.iterdir()) if canonical_split(p.name)}
        folders = folders or {"train": root}
        labels = sorted({p.name for folder in folders.values() for p in folder.iterdir() if p.is_dir()})
        self.label_names = self.spec.label_names if self.spec is not None else labels
        options = (self.hparams.grayscale, self.hparams.image_size, self.label_names)
        splits = {}
        for split, folder in folders.items():
            digest, count = scan_folder(folder, IMAGE_EXTENSIONS)
            if count:
                rows = _labelled_files(folder, self.label_names)
                decode = _FolderDecoder(self, split, "image", "label")
                splits[split] = Rows(rows, decode, fingerprint(digest, options), count=count)
        if not splits:
            raise FileNotFoundError(
                f"{root}: no MNIST IDX files and no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found; "
                "point --data.root at a folder of images (root/<label>/*.png) or MNIST IDX files"
            )
        return splits

    def _folder_rows(self) -> dict[str, Rows]:
        import datasets

        if self.source.local is not None:
            return self._local_rows(self.source.local)
        dataset = self.hub_dataset()
        features = next(iter(dataset.values())).features  # the train split's, or the only one (a test folder)
        image_column = next((c for c in ("image", "img", "pixel_values") if c in features), None)
        if image_column is None:
            raise ValueError(f"{self.source}: no image column (looked for image, img) in {features}")
        label_column = next((c for c in ("label", "labels") if c in features), None)
        if label_column is not None and hasattr(features[label_column], "names"):
            self.label_names = list(features[label_column].names)
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
        options = (self.hparams.grayscale, self.hparams.image_size, image_column, label_column)
        splits = {}
        for found in dataset:
            name = canonical_split(found)
            if name is not None and name not in splits:
                rows = dataset[found]
                decode = _FolderDecoder(self, found, image_column, label_column)
                key = fingerprint(getattr(rows, "_fingerprint", None), *options)  # a stream has none, and no cache
                splits[name] = Rows(rows, decode, key, count=getattr(rows, "num_rows", None))
        return splits

    def _decode_one(self, item: dict[str, Any], where: str, expected: tuple[int, ...] | None) -> np.ndarray | None:
        try:
            source = io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"]
            with Image.open(source) as image:
                image.load()
                image = self._convert(image)
        except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as err:
            self.skip_or_raise(f"{where}: not a readable image ({err}); delete or replace the file")
            return None
        array = np.asarray(image, dtype=np.uint8)
        array = array[..., None] if array.ndim == 2 else array
        if expected is not None and array.shape != expected:
            self.skip_or_raise(
                f"{where}: image is {array.shape[1]}x{array.shape[0]}x{array.shape[2]} but earlier images are "
                f"{expected[1]}x{expected[0]}x{expected[2]}; resize them all with --data.image_size H W"
            )
            return None
        return array

    def _convert(self, image: Image.Image) -> Image.Image:
        grayscale = self.hparams.grayscale
        if grayscale is None:
            grayscale = image.mode in ("1", "L", "LA", "I", "I;16", "F")
        image = image.convert("L" if grayscale else "RGB")
        if self.hparams.image_size is not None:
            height, width = self.hparams.image_size
            image = image.resize((width, height), Image.Resampling.BILINEAR)
        return image

    def make_spec(self, train: Split) -> ImageSpec:
        channels, height, width = train.take([0])["x"].shape[1:]
        return ImageSpec(channels, height, width, bool(self.hparams.binarize), self.label_names)

    def load_inputs(self, items: list[str]) -> dict[str, Tensor]:
        arrays = []
        for item in items:
            if not Path(item).is_file():
                raise FileNotFoundError(f"{item}: no such image file")
            arrays.append(self._decode_one({"path": item}, item, expected=None))
        spec = self.spec
        for item, array in zip(items, arrays, strict=True):
            if array.shape != (spec.height, spec.width, spec.channels):
                raise ValueError(
                    f"{item}: image is {array.shape[1]}x{array.shape[0]}x{array.shape[2]} but the model takes "
                    f"{spec.width}x{spec.height}x{spec.channels}; resize it first"
                )
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        if self.hparams.binarize:
            x = (x > 127).to(torch.uint8) * 255
        return {"x": x, "label": torch.full((len(items),), -1)}

    def collate(self, batch: Batch, split: str) -> Batch:
        """Validation and test images binarised once: each image's draw is seeded by its row, not its batch."""
        if not self.hparams.binarize or split == "train":
            return batch
        shape = batch["x"].shape[1:]
        noise = np.stack([np.random.default_rng([self.hparams.seed, row]).random(shape) for row in batch[ROW].tolist()])
        noise = torch.from_numpy(noise).to(batch["x"].device)
        return {**batch, "x": (noise * 255 < batch["x"]).to(torch.uint8) * 255}

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        """uint8 -> [0, 1] on the device; a fresh binarisation of training batches (dynamic binarisation)."""
        x = batch["x"].float().div_(255)
        trainer = self.trainer
        if self.hparams.binarize and trainer is not None and trainer.training:
            x = torch.bernoulli(x)
        return {**batch, "x": x}


# --------------------------------------------------------------------------- model


class ImageVAE(VAE):
    """Convolutional VAE for images of any size divisible by ``2 ** len(channels)``.

    ``likelihood``: ``bernoulli`` for binarised data (logits out); ``discretized_logistic`` for 8-bit
    grey or colour images as they are (a mixture of ``logistic_mixtures`` logistics per pixel, NLL in
    comparable bits/dim); ``gaussian`` for continuous pixel values in [0, 1] (a learned per-channel scale
    unless ``gaussian_scale`` fixes it).
    ``channels_last`` runs the convolutions in NHWC layout: measured faster on CPU (docs/benchmarks.md)
    and the layout tensor cores prefer.
    """

    modality = "image"
    spec_type = ImageSpec

    def __init__(
        self,
        latent_dim: int = 32,
        channels: list[int] = [32, 64],  # noqa: B006 - jsonargparse needs a literal default
        blocks_per_stage: int = 1,
        hidden: int = 512,
        likelihood: Literal["bernoulli", "discretized_logistic", "gaussian"] = "bernoulli",
        gaussian_scale: float | None = None,
        logistic_mixtures: int = 1,
        channels_last: bool = True,
        **core: Any,
    ) -> None:
        super().__init__(latent_dim=latent_dim, **core)

    def build(self, spec: ImageSpec) -> None:
        hp = self.hparams
        scale = 2 ** len(hp.channels)
        if spec.height % scale or spec.width % scale:
            raise ValueError(
                f"images of {spec.height}x{spec.width} cannot be halved {len(hp.channels)} times; "
                f"use sizes divisible by {scale} (--data.image_size) or fewer --model.channels"
            )
        if hp.likelihood == "bernoulli" and not spec.binarized:
            raise ValueError(
                "the Bernoulli likelihood needs binary data: set --data.binarize true, or use discretized_logistic"
            )
        if hp.likelihood == "discretized_logistic" and spec.binarized:
            raise ValueError("the discretised logistic models 8-bit images: set --data.binarize false")
        self.likelihood = LIKELIHOODS[hp.likelihood].for_data(spec.channels, hp.gaussian_scale, hp.logistic_mixtures)
        outputs = spec.channels * getattr(self.likelihood, "params_per_channel", 1)
        size, stages = (spec.height, spec.width), list(hp.channels)
        self.encoder = ConvEncoder(spec.channels, size, stages, hp.blocks_per_stage, hp.hidden, hp.latent_dim)
        self.decoder = ConvDecoder(outputs, size, stages, hp.blocks_per_stage, hp.hidden, hp.latent_dim)
        if hp.channels_last:
            self.encoder.to(memory_format=torch.channels_last)
            self.decoder.to(memory_format=torch.channels_last)

    def encode_params(self, batch: Batch) -> tuple[Tensor, Tensor]:
        x = batch["x"]
        return self.encoder(x.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else x)

    def summary_metrics(self, nll_sum: float, units_sum: float) -> dict[str, float]:
        return {"bits_per_dim": bits_per_dim(nll_sum, units_sum)}

    def compressed_sizes(self, batch: Batch) -> list[int]:
        """PNG size of each image (as Serrà et al. 2020 use it)."""
        sizes = []
        for image in _to_uint8(batch["x"]):
            buffer = io.BytesIO()
            _to_pil(image).save(buffer, format="PNG", optimize=True)
            sizes.append(len(buffer.getvalue()))
        return sizes

    def encoder_example(self) -> Tensor:
        return torch.zeros(2, self.spec.channels, self.spec.height, self.spec.width, device=self.device)

    def generate(self, z: Tensor, **options: Any) -> Tensor:
        """Images in [0, 1]: the likelihood's mean (Bernoulli probabilities, the logistics' or Gaussian mean)."""
        return self.likelihood.mean(self.decoder(z)).clamp(0, 1)

    def log_media(self, writer: Any, tag: str, data: Tensor, step: int) -> None:
        writer.add_image(tag, make_grid(_to_uint8(data), max(1, math.ceil(math.sqrt(len(data))))), step)

    def save_outputs(
        self, data: Tensor, out_dir: Path, stem: str, nrow: int | None = None, **options: Any
    ) -> list[Path]:
        """One PNG grid (``stem``.png) plus one PNG per image (``stem``_0000.png...)."""
        images = [_to_pil(image) for image in _to_uint8(data)]
        paths = [save_png(grid(images, nrow), out_dir / f"{stem}.png")]
        paths += [save_png(image, out_dir / f"{stem}_{i:04d}.png") for i, image in enumerate(images)]
        return paths


def _to_uint8(images: Tensor) -> Tensor:
    return (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)


def make_grid(images: Tensor, nrow: int, pad: int = 2) -> Tensor:
    """(N, C, H, W) uint8 -> one (C, H', W') image, ``nrow`` images per row, with white padding (TensorBoard's)."""
    pictures = grid([_to_pil(image) for image in images], nrow, pad)
    array = torch.from_numpy(np.asarray(pictures).copy())
    return array.unsqueeze(0) if array.dim() == 2 else array.permute(2, 0, 1)


def _to_pil(image: Tensor) -> Image.Image:
    """A (C, H, W) uint8 image as PIL: grey for one channel, RGB for three."""
    array = image.permute(1, 2, 0).numpy()
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


MODALITY = Modality(name="image", model=ImageVAE, datamodule=ImageDataModule)
