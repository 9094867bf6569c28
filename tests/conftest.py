"""Helpers shared by the test modules: running the CLI in-process or as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from vaekit.cli import main

TESTS = Path(__file__).parent
# Decoded-data caches of this run (and of the subprocesses it starts) stay out of the user's cache folder.
os.environ.setdefault("VAEKIT_CACHE", tempfile.mkdtemp(prefix="vaekit-test-cache-"))
# No test reaches a hub, in this process or the ones it starts. Set before anything imports huggingface_hub or
# datasets: both read it once, at import.
os.environ["HF_HUB_OFFLINE"] = "1"


def vaekit(*args: str) -> None:
    """Run `vaekit ARGS` in this process (fast; LightningCLI and the commands are re-entrant)."""
    argv = [str(a) for a in args]
    saved, sys.argv = sys.argv, ["vaekit"]  # LightningCLI reads args=, not pytest's own argv
    try:
        main(argv)
    finally:
        sys.argv = saved


def vaekit_subprocess(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run `vaekit ARGS` as its own process, as a user would (needed for DDP and for kills)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "vaekit.cli", *map(str, args)], capture_output=True, text=True, env=full_env, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"vaekit {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def fit_args(config: str, root: Path, *extra: str) -> list[str]:
    """`vaekit fit` arguments for a quick run into ``root``."""
    return [
        "fit",
        "--config",
        config,
        "--trainer.default_root_dir",
        str(root),
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]


def install_plugin(site: Path) -> None:
    """Register tests/plugin_example as an installed distribution would: a .dist-info with entry points for
    its modality and for a package of recipes (``vector/rows``)."""
    dist = site / "vecvae_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vecvae-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[vaekit.modalities]\nvector = vecvae:MODALITY\n\n[vaekit.recipes]\nvector = vecvae_recipes\n"
    )
    (site / "vecvae.py").write_text((TESTS / "plugin_example" / "vecvae.py").read_text())
    (site / "vecvae_recipes").mkdir()
    (site / "vecvae_recipes" / "__init__.py").write_text("")
    (site / "vecvae_recipes" / "rows.yaml").write_text((TESTS / "plugin_example" / "vector.yaml").read_text())


@pytest.fixture(scope="session")
def image_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short fit of the tiny image recipe, shared by the tests that only read its checkpoint."""
    root = tmp_path_factory.mktemp("image-tiny")
    vaekit(*fit_args("configs/image/tiny.yaml", root, "--trainer.max_epochs", "2"))
    return root / "checkpoints" / "last.ckpt"


@pytest.fixture
def demo_of_0_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``demo:audio`` as vaekit 0.2 shipped it, for the fixtures that record what 0.2 computed on it: take 0 of
    each digit by each speaker, a subset of today's demo clips (the same samples, re-encoded losslessly)."""
    from vaekit.core import data

    bundled = data.demo_path
    audio = tmp_path / "demo-0.2" / "audio"
    audio.mkdir(parents=True)
    for clip in bundled("audio").glob("*_0.flac"):
        (audio / clip.name).symlink_to(clip)
    assert len(list(audio.iterdir())) == 60
    monkeypatch.setattr(data, "demo_path", lambda name: audio if name == "audio" else bundled(name))
