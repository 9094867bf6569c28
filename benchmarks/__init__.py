"""Benchmarks: each script measures against a baseline run in the same process and prints the table that
docs/benchmarks.md quotes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(path: str | Path, result: Any) -> None:
    """A benchmark's figures as indented JSON (its folder made), to quote and to compare runs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A table to paste into docs/benchmarks.md."""
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)
