"""Modality plugins, discovered through the ``vaekit.modalities`` entry-point group."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points

from vaekit.core.data import VAEDataModule
from vaekit.core.module import VAE

GROUP = "vaekit.modalities"


class ModalityNotFound(LookupError):
    """No installed plugin provides the requested modality."""


@dataclass(frozen=True)
class Modality:
    """What a plugin registers: its model class (a ``VAE``) and its data module class."""

    name: str
    model: type[VAE]
    datamodule: type[VAEDataModule]


def available() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=GROUP)})


def get_modality(name: str) -> Modality:
    found = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not found:
        raise ModalityNotFound(
            f"no installed vaekit modality {name!r} (installed: {', '.join(available()) or 'none'}); "
            f"install the package that provides it (it registers under the entry-point group {GROUP!r})"
        )
    plugin = found[0].load()
    if not isinstance(plugin, Modality) or plugin.name != name:
        raise TypeError(f"entry point {found[0].value!r} must be a vaekit Modality named {name!r}")
    return plugin
