"""Recipes: the shipped YAML configs, found by name from the source tree or an installed vaekit.

``vaekit recipes`` lists them (like ``tune ls``); ``vaekit recipes --copy image/mnist my.yaml``
copies one out to edit (like ``tune cp``). Every config's header comment is the command that runs it.
"""

from __future__ import annotations

import importlib.resources
import shutil
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

RECIPE_GROUP = "vaekit.recipes"


@dataclass(frozen=True)
class Recipe:
    name: str  # "<modality>/<config stem>"
    path: Path
    summary: str  # first comment line of the YAML


def configs_dir() -> Path:
    return Path(str(importlib.resources.files("vaekit.configs")))


def _recipe(name: str, path: Path) -> Recipe:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    return Recipe(name, path, first.lstrip("# ").strip())


def list_recipes() -> list[Recipe]:
    """vaekit's own recipes, then those plugins ship: a package named in the ``vaekit.recipes`` entry-point
    group holds ``*.yaml`` files, listed as ``<entry-point name>/<file stem>``."""
    recipes = [_recipe(f"{p.parent.name}/{p.stem}", p) for p in sorted(configs_dir().glob("*/*.yaml"))]
    for ep in sorted(entry_points(group=RECIPE_GROUP), key=lambda ep: ep.name):
        folder = Path(str(importlib.resources.files(ep.module)))
        recipes += [_recipe(f"{ep.name}/{p.stem}", p) for p in sorted(folder.glob("*.yaml"))]
    return recipes


def resolve_config(value: str) -> str:
    """A ``--config`` that exists as given wins; else a recipe name (``image/mnist``, ``configs/image/mnist.yaml``,
    or a plugin's ``vector/rows``)."""
    if Path(value).exists():
        return value
    name = value.removeprefix("configs/").removesuffix(".yaml")
    found = next((r.path for r in list_recipes() if r.name == name), None)
    return str(found) if found is not None else value


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
