"""Plain data: what checkpoints and exported folders may hold besides tensors.

``torch.load(weights_only=True)`` and JSON both read plain data without running code; keeping every
saved value to str/int/float/bool/None/list/dict is what lets a stranger's model file be opened safely.
"""

from __future__ import annotations

import contextvars
import dataclasses
from argparse import Namespace
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import torch

from vaekit.core.schema import check_arguments, check_plain

PlainData = str | int | float | bool | None | list["PlainData"] | dict[str, "PlainData"]


def to_plain(value: Any, where: str = "value") -> PlainData:
    """``value`` as plain data (dataclasses, namespaces and tuples converted); anything else is an error."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, PurePath):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Namespace):
        value = vars(value)
    if isinstance(value, Mapping):
        return {str(k): to_plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(
        f"{where} is a {type(value).__name__}, which a vaekit checkpoint cannot hold (only str, int, float, bool, "
        "None, lists and dicts); pass it as plain values (a dataclass or dict of them)"
    )


def without_private(args: Mapping[str, Any] | None) -> dict[str, Any]:
    """Constructor arguments from saved hyper-parameters, without Lightning's private ``_...`` keys."""
    return {k: v for k, v in (args or {}).items() if not k.startswith("_")}


def nonfinite_tensors(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or infinity (one host sync, not one per tensor)."""
    names = [k for k, t in state.items() if t.is_floating_point()]
    if not names:
        return []
    finite = torch.stack([torch.isfinite(state[k]).all().to(state[names[0]].device) for k in names]).tolist()
    return [k for k, ok in zip(names, finite, strict=True) if not ok]


def tensors_in(value: Any, where: str = "") -> list[tuple[str, torch.Tensor]]:
    """Every tensor in a loaded checkpoint (nested dicts and lists), with where it sits."""
    if isinstance(value, torch.Tensor):
        return [(where, value)]
    if isinstance(value, Mapping):
        return [found for k, v in value.items() for found in tensors_in(v, f"{where}.{k}" if where else str(k))]
    if isinstance(value, list | tuple):
        return [found for i, v in enumerate(value) for found in tensors_in(v, f"{where}[{i}]")]
    return []


def oversized_views(value: Any) -> list[str]:
    """Tensors whose shape claims more data than their storage holds (a stride-0 or overlapping view: 4 bytes
    that read as 8 GB once anything expands them), or that reach past their storage's end."""
    bad = []
    for where, t in tensors_in(value):
        stored = t.untyped_storage().nbytes()
        if t.numel() == 0:
            continue
        last = t.storage_offset() + sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride(), strict=True))
        if t.numel() * t.element_size() > stored or (last + 1) * t.element_size() > stored:
            bad.append(f"{where} {tuple(t.shape)} in {stored} bytes")
    return bad


def instantiate(cls: type, args: dict[str, Any], where: str) -> Any:
    """``cls`` built from saved arguments through jsonargparse, as `vaekit fit` builds it from a YAML config.

    The arguments are checked against ``cls``'s declared types first (``vaekit.core.schema``): jsonargparse
    would import a string it finds where a class is expected."""
    from jsonargparse import ArgumentParser

    check_plain(args, where)
    check_arguments(cls, args, where)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "init", fail_untyped=False)
    try:
        config = parser.parse_object({"init": args})
    except Exception as err:  # jsonargparse's ArgumentError, or a type it cannot parse
        raise ValueError(f"{where}: the saved arguments do not fit {cls.__name__} ({err})") from err
    # In a fresh context: LightningCLI records the hyper-parameters of the class it is building in a context
    # variable, which a part built inside that class (a joint model's plugins) would otherwise take as its own.
    return contextvars.Context().run(parser.instantiate_classes, config).init
