"""Sharing commands: export (a staged folder) and push (an exported folder to the Hub)."""

from __future__ import annotations

import json
from pathlib import Path

from vaekit.cli.session import Session


def cmd_export(s: Session) -> list[Path]:
    from vaekit.export import export_model

    evaluation = json.loads(Path(s.args.evaluation).read_text()) if s.args.evaluation else None
    return export_model(
        s.model, s.record, s.out, evaluation=evaluation, onnx=s.args.onnx, num_samples=s.args.num, space=s.args.space
    )
