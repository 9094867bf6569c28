"""Data held whole on the accelerator: batches gathered there, with no loader workers and no copy per step.

A small dataset (MNIST, FSDD features, PTB token ids: tens of MB) fits on a GPU many times over, and a
3 M-parameter VAE steps faster than a DataLoader can feed it. ``DeviceBatches`` is what the data module's
loaders return when its splits live on the device (``--data.on_device``): each epoch the module's own batch
sampler picks the indices on the host (shuffled, or bucketed by length for text), they go to the device in
one copy, and each batch is one gather per column followed by the module's ``collate`` on device tensors.
Evaluation batches are fixed, so they are gathered and collated once and kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor

from vaekit.core.storage import TensorSplit

Batch = dict[str, Tensor]
HOST_PREFIX = "host_"  # batch keys that stay on the host: copies of small columns the host needs (text lengths)


class DeviceBatches:
    """One split's batches, gathered from columns on ``device``; ``len`` batches per epoch and process.

    ``host_columns`` are also kept on the host and handed to ``collate`` as ``host_<name>``, for the values a
    collate must read as numbers (a padding width) without reading the device back. Under several processes
    each takes every ``world``-th batch, the list wrapped round so that all take as many.
    """

    def __init__(
        self,
        split: TensorSplit,
        device: torch.device,
        batch_sampler: Iterable[list[int]],
        collate: Callable[[Batch], Batch],
        host_columns: tuple[str, ...] = (),
        fixed: bool = False,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.columns = {name: column.to(device) for name, column in split.columns.items()}
        self.host = {name: split[name] for name in host_columns}
        self.device, self.batch_sampler, self.collate = device, batch_sampler, collate
        self.rank, self.world = rank, world
        self.cached: list[Batch] | None = None
        if fixed:  # the batches themselves kept; the columns they came from are not needed again
            self.cached, self.columns = list(self._gather()), {}

    def __len__(self) -> int:
        return -(-len(self.batch_sampler) // self.world)

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.cached) if self.cached is not None else self._gather()

    def _gather(self) -> Iterator[Batch]:
        batches = [list(b) for b in self.batch_sampler]
        batches += batches[: (-len(batches)) % self.world]
        mine = batches[self.rank :: self.world]
        if not mine:
            return
        host_index = torch.tensor([i for b in mine for i in b])
        sizes = [len(b) for b in mine]
        if self.device.type == "cuda":
            host_index = host_index.pin_memory()  # so the copy below is truly asynchronous
        device_index = host_index.to(self.device, non_blocking=True)  # the epoch's one copy to the device
        for rows, on_host in zip(device_index.split(sizes), host_index.split(sizes), strict=True):
            batch = {name: column.index_select(0, rows) for name, column in self.columns.items()}
            batch |= {HOST_PREFIX + name: column[on_host] for name, column in self.host.items()}
            yield self.collate(batch)


def fits_on_device(nbytes: int, device: torch.device, share: float = 0.25) -> bool:
    """Whether data of ``nbytes`` takes at most ``share`` of the device's free memory (CUDA), leaving the
    rest to the model, its activations and other processes."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= share * free
