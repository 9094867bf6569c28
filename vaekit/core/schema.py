"""Saved arguments checked against the types their constructors declare, before anything is built.

A checkpoint or exported folder holds constructor arguments as plain data. jsonargparse, which turns
them into objects, reads a string where a class is expected as an import path: ``beta: "this.X"``
would import ``this`` before any check. So vaekit checks every value against the declared annotation
first, with its own rules: a string is accepted only where the type admits ``str`` (or is a
``Literal`` of it), a class such as ``BetaSchedule`` only as a JSON object of its fields, numbers
only finite and of bounded size, and unknown names are refused. Nothing here imports or resolves
anything a file names.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, Union

# Largest integer a saved argument may hold: far above any real size or seed, far below what would
# overflow or allocate absurdly before the weights are compared with the architecture.
MAX_INT = 2**31 - 1
MAX_ITEMS = 100_000  # entries of a list or dict argument
MAX_DEPTH = 16  # nesting of lists and dicts
# Keys by which jsonargparse and Lightning name a class to import; a saved file must never carry one.
IMPORT_KEYS = frozenset({"class_path", "_class_path", "_instantiator", "init_args", "dict_kwargs", "__path__"})
SEQUENCES = (list, tuple, typing.Sequence, collections.abc.Sequence)
# The scalar types: what accepts a value of each, and what an error says it expected.
SCALARS: dict[Any, tuple[Callable[[Any], bool], str]] = {
    type(None): (lambda v: v is None, "null"),
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and abs(v) <= MAX_INT,
        f"a whole number of at most {MAX_INT}",
    ),
    float: (
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and abs(v) <= 1e30,
        "a finite number of at most 1e30",
    ),
    str: (lambda v: isinstance(v, str), "a string"),
}
MAPPINGS = (dict, typing.Mapping, collections.abc.Mapping)


class SchemaError(ValueError):
    """A saved value that does not fit its declared type."""


def shorten(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: errors name a bad value without echoing megabytes."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 20]}... ({len(text)} characters)"


def constructor_types(cls: type) -> dict[str, Any]:
    """Name -> annotation of every argument ``cls(...)`` accepts, following ``**kwargs`` up the class chain
    as jsonargparse does (a plugin's ``**core`` reaches ``VAE.__init__``)."""
    found: dict[str, Any] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        hints = typing.get_type_hints(init)
        parameters = list(inspect.signature(init).parameters.values())[1:]  # without self
        for p in parameters:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                found.setdefault(p.name, hints.get(p.name, Any))
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return found


def check_arguments(cls: type, args: Mapping[str, Any], where: str) -> None:
    """Raise SchemaError (naming ``where`` and the argument) unless ``args`` fit ``cls``'s declared arguments."""
    if not isinstance(args, Mapping):
        raise SchemaError(f"{where}: expected an object of arguments, got {type(args).__name__}")
    types_ = constructor_types(cls)
    for name, value in args.items():
        if name not in types_:
            known = ", ".join(sorted(types_))
            raise SchemaError(f"{where}: {shorten(name)} is not an argument of {cls.__name__} (it takes {known})")
        check_value(value, types_[name], f"{where}.{name}")


def check_fields(cls: type, values: Mapping[str, Any], where: str) -> None:
    """As ``check_arguments``, for a dataclass's fields (a saved spec); missing required fields are named too."""
    if not isinstance(values, Mapping):
        raise SchemaError(f"{where}: expected an object of {cls.__name__} fields, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    missing = [
        name
        for name, f in fields.items()
        if name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise SchemaError(f"{where}: lacks {', '.join(missing)} of {cls.__name__}")
    for name, value in values.items():
        if name not in fields:
            raise SchemaError(f"{where}: {shorten(name)} is not a field of {cls.__name__}")
        check_value(value, hints[name], f"{where}.{name}")


def check_value(value: Any, annotation: Any, where: str, depth: int = 0) -> None:
    """Raise SchemaError unless ``value`` (plain data) is of type ``annotation``."""
    if depth > MAX_DEPTH:
        raise SchemaError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if annotation is Any:
        _check_plain_any(value, where, depth)
        return
    origin, members = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        errors = []
        for member in members:
            try:
                check_value(value, member, where, depth)
                return
            except SchemaError as err:
                errors.append(err)
        reasons = "; ".join(str(err).removeprefix(f"{where}: ") for err in errors)
        raise SchemaError(f"{where}: {shorten(value)} is none of {_name(annotation)} ({reasons})")
    if origin is Literal:
        if not any(type(value) is type(m) and value == m for m in members):
            raise SchemaError(f"{where}: {shorten(value)} is not one of {', '.join(map(repr, members))}")
        return
    if origin in SEQUENCES:
        _check_list(value, where)
        item = members[0] if members else Any
        for i, v in enumerate(value):
            check_value(v, item, f"{where}[{i}]", depth + 1)
        return
    if origin in MAPPINGS:
        _check_dict(value, where)
        item = members[1] if len(members) == 2 else Any
        for k, v in value.items():
            check_value(v, item, f"{where}.{k}", depth + 1)
        return
    scalar = SCALARS.get(type(None) if annotation is None else annotation)
    if scalar is not None:
        accepts, expected = scalar
        if not accepts(value):
            raise SchemaError(f"{where}: expected {expected}, got {shorten(value)}")
        return
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        # A class as data: only a JSON object of its fields. A string here is what jsonargparse would import.
        if not isinstance(value, Mapping):
            raise SchemaError(
                f"{where}: expected {annotation.__name__} as an object of its fields, got {shorten(value)}; a saved "
                "model never names a class"
            )
        check_fields(annotation, value, where)
        return
    raise SchemaError(f"{where}: arguments of type {_name(annotation)} cannot be restored from a saved file")


def _check_list(value: Any, where: str) -> None:
    if not isinstance(value, list):
        raise SchemaError(f"{where}: expected a list, got {shorten(value)}")
    if len(value) > MAX_ITEMS:
        raise SchemaError(f"{where}: {len(value)} items, more than {MAX_ITEMS}")


def _check_dict(value: Any, where: str) -> None:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise SchemaError(f"{where}: expected an object with string keys, got {shorten(value)}")
    if len(value) > MAX_ITEMS:
        raise SchemaError(f"{where}: {len(value)} entries, more than {MAX_ITEMS}")
    named = sorted(IMPORT_KEYS.intersection(value))
    if named:
        raise SchemaError(f"{where}: {named[0]!r} names code to import; vaekit refuses such entries in saved models")


def check_plain(value: Any, where: str) -> None:
    """Raise unless ``value`` is plain data (str, int, float, bool, None, lists, string-keyed dicts), bounded,
    with no key by which jsonargparse or Lightning name a class to import."""
    check_value(value, Any, where)


def _check_plain_any(value: Any, where: str, depth: int) -> None:
    """An untyped argument: any plain data, bounded, without the keys by which jsonargparse names a class."""
    if isinstance(value, list):
        _check_list(value, where)
        for i, v in enumerate(value):
            check_value(v, Any, f"{where}[{i}]", depth + 1)
    elif isinstance(value, Mapping):
        _check_dict(value, where)
        for k, v in value.items():
            check_value(v, Any, f"{where}.{k}", depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise SchemaError(f"{where}: expected a finite number, got {value}")
    elif not (value is None or isinstance(value, str | bool | int | float)):
        raise SchemaError(f"{where}: a {type(value).__name__} where only plain data may be")


def _name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
