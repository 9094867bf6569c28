"""Recipes: the shipped YAML configs, found by name from the source tree or an installed vaekit.

``vaekit recipes`` lists them (like ``tune ls``); ``vaekit recipes --copy image/mnist my.yaml``
copies one out to edit (like ``tune cp``). Every config's header comment is the command that runs it.
"""

from __future__ import annotations

import importlib.resources
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Recipe:
    name: str  # "<modality>/<config stem>"
    path: Path
    summary: str  # first comment line of the YAML


def configs_dir() -> Path:
    return Path(str(importlib.resources.files("vaekit.configs")))


def list_recipes() -> list[Recipe]:
    recipes = []
    for path in sorted(configs_dir().glob("*/*.yaml")):
        first = path.read_text(encoding="utf-8").splitlines()[0]
        recipes.append(Recipe(f"{path.parent.name}/{path.stem}", path, first.lstrip("# ").strip()))
    return recipes


def resolve_config(value: str) -> str:
    """A ``--config`` that exists as given wins; else ``configs/<m>/<n>.yaml`` or ``<m>/<n>`` from the package."""
    if Path(value).exists():
        return value
    name = value.removeprefix("configs/").removesuffix(".yaml")
    packaged = configs_dir() / f"{name}.yaml"
    return str(packaged) if packaged.is_file() else value


def copy_recipe(name: str, destination: str) -> Path:
    source = Path(resolve_config(name))
    if not source.is_file():
        known = ", ".join(r.name for r in list_recipes())
        raise FileNotFoundError(f"no recipe {name!r}; known recipes: {known}")
    target = Path(destination)
    if target.exists():
        raise FileExistsError(f"{target} exists; choose another destination")
    shutil.copyfile(source, target)
    return target
