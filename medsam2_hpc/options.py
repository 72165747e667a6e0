"""Option checking that reports the near miss (MONAI's look_up_option idea).

Used by jobs.yaml validation and by every trainer's typed config, so a typo in a spec
key or a flag value reads "unknown key 'lrr' in experiments[0].hparams (did you mean 'lr'?)".
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Iterable
from typing import Any, TypeVar

from .errors import InputError

__all__ = ["suggest", "look_up", "config_from_dict"]

C = TypeVar("C")


def suggest(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' when a choice is close to ``word``, else ''."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def look_up(value: str, choices: Iterable[str], what: str) -> str:
    """Return ``value`` if it is one of ``choices``; else InputError naming ``what``."""
    choices = list(choices)
    if value in choices:
        return value
    raise InputError(f"{what}: {value!r} is not one of {', '.join(map(str, choices))}"
                     f"{suggest(value, choices)}")


def _check_type(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        errors = []
        for arg in args:
            try:
                return _check_type(value, arg, where)
            except InputError as exc:
                errors.append(str(exc))
        raise InputError(errors[0])
    if origin is typing.Literal:
        return look_up(value, typing.get_args(hint), where)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and isinstance(value, hint) and not (
            hint is int and isinstance(value, bool)):
        return value
    if origin in (list, tuple) and isinstance(value, (list, tuple)):
        (inner, *_) = typing.get_args(hint) or (Any,)
        return [v if inner is Any else _check_type(v, inner, f"{where}[{i}]")
                for i, v in enumerate(value)]
    if origin is dict and isinstance(value, dict):
        return value
    if hint is Any:
        return value
    name = getattr(hint, "__name__", str(hint))
    raise InputError(f"{where}: expected {name}, got {type(value).__name__} {value!r}")


@functools.cache
def _fields_of(cls: type) -> tuple[dict[str, Any], list[str]]:
    """Type hints and field names of a config class (resolving hints is slow; submit checks
    thousands of tasks)."""
    return typing.get_type_hints(cls), [f.name for f in dataclasses.fields(cls)]


def config_from_dict(cls: type[C], data: dict[str, Any], where: str) -> C:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types by name."""
    hints, names = _fields_of(cls)
    unknown = [k for k in data if k not in names]
    if unknown:
        key = unknown[0]
        raise InputError(f"unknown key {key!r} in {where}{suggest(key, names)}")
    values = {k: _check_type(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**values)
