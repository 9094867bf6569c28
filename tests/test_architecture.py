"""The layers keep their direction, and what the previous release saved still loads and gives the same outputs."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import vaekit
from vaekit.checkpoint import load_model

ROOT = Path(__file__).parents[1]
V0_2 = Path(__file__).parent / "fixtures" / "v0_2"  # written by vaekit 0.2: tests/fixtures/make_v0_2.py
ABOVE_CORE = ("vaekit.modalities", "vaekit.cli", "vaekit.callbacks", "vaekit.checkpoint", "vaekit.export")


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_core_imports_nothing_above_it():
    for path in sorted((ROOT / "vaekit" / "core").glob("*.py")):
        upward = sorted(m for m in imported_modules(path) if m.startswith(ABOVE_CORE))
        assert not upward, f"{path.name} imports {upward}"


def test_no_file_names_a_built_in_modality_outside_its_plugin():
    """The CLI and the core ask a model what it can do (it has parts), never which modality it is."""
    for folder in ("core", "cli"):
        for path in sorted((ROOT / "vaekit" / folder).glob("*.py")):
            text = path.read_text()
            assert '"multimodal"' not in text and "'multimodal'" not in text, path


@pytest.mark.parametrize("modality", ["image", "text", "multimodal"])
@pytest.mark.parametrize("form", ["ckpt", "export"])
def test_a_0_2_model_decodes_exactly_as_it_did(modality, form):
    model, _ = load_model(V0_2 / (f"{modality}.ckpt" if form == "ckpt" else f"{modality}-export"))
    z = torch.load(V0_2 / f"{modality}-latents.pt", weights_only=True)
    with torch.no_grad():
        generated = model.generate(z, deterministic=True)
    if modality == "text":
        assert generated == json.loads((V0_2 / "text-generated.json").read_text())
        return
    expected = load_file(V0_2 / f"{modality}-generated.safetensors")
    tensors = {name: generated[name] for name in expected} if isinstance(generated, dict) else {"x": generated}
    for name, value in expected.items():
        torch.testing.assert_close(tensors[name], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("modality", ["image", "text", "audio", "multimodal"])
def test_a_0_2_model_evaluates_to_the_same_nats(modality, tmp_path, demo_of_0_2):
    vaekit("evaluate", V0_2 / f"{modality}.ckpt", "--iw-samples", "16", "--max-examples", "8", "--seed", "0",
           "--out", tmp_path / "eval.json")  # fmt: skip
    now = json.loads((tmp_path / "eval.json").read_text())
    before = json.loads((V0_2 / f"{modality}-evaluate.json").read_text())
    for key in ("elbo", "rec", "kl", "nll", "active_units"):
        assert now[key] == pytest.approx(before[key], rel=1e-5, abs=1e-4), key
