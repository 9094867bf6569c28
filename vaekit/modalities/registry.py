"""Modality plugins, discovered through the ``vaekit.modalities`` entry-point group.

The registry is also the only way a saved model's class names become classes: a checkpoint or an exported
folder names its classes, and they are looked up among what the installed plugins register, never imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points

from vaekit.core.data import VAEDataModule
from vaekit.core.module import VAE, class_name
from vaekit.errors import ModalityNotFound

GROUP = "vaekit.modalities"
__all__ = ["GROUP", "Modality", "ModalityNotFound", "get_modality"]


@dataclass(frozen=True)
class Modality:
    """What a plugin registers: its default model class (a ``VAE``) and data module class, and any others.

    ``extra_classes`` lists further model or data-module classes of the plugin (variants a config may name
    with ``class_path``); only registered classes can be restored from a checkpoint.
    """

    name: str
    model: type[VAE]
    datamodule: type[VAEDataModule]
    extra_classes: tuple[type, ...] = ()
    # Names earlier releases recorded for classes that have moved (checkpoints keep loading).
    former_names: dict[str, type] = field(default_factory=dict)

    def resolve(self, name: str | None, base: type) -> type:
        """The registered subclass of ``base`` recorded as ``name`` (the default one when ``name`` is empty)."""
        default = self.model if base is VAE else self.datamodule
        if not name:
            return default
        candidates = [c for c in (self.model, self.datamodule, *self.extra_classes) if issubclass(c, base)]
        for cls in candidates:
            if class_name(cls) == name:
                return cls
        if name in self.former_names and self.former_names[name] in candidates:
            return self.former_names[name]
        raise ValueError(
            f"the saved model names the class {name!r}, which the installed {self.name!r} plugin does not register "
            f"(it registers {', '.join(class_name(c) for c in candidates)}); vaekit never imports a class named by a "
            "file. If the class is yours, add it to your plugin's Modality(extra_classes=...)"
        )


def available() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=GROUP)})


def entry_point(name: str) -> EntryPoint:
    """The installed entry point of modality ``name`` (its ``dist`` says which package provides it)."""
    found = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not found:
        raise ModalityNotFound(
            f"no installed vaekit modality {name!r} (installed: {', '.join(available()) or 'none'}); "
            f"install the package that provides it (it registers under the entry-point group {GROUP!r})"
        )
    return found[0]


def get_modality(name: str) -> Modality:
    found = entry_point(name)
    plugin = found.load()
    if not isinstance(plugin, Modality) or plugin.name != name:
        raise TypeError(f"entry point {found.value!r} must be a vaekit Modality named {name!r}")
    return plugin
