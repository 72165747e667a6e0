"""Checks at the edge for every value a user hands us (spec, flags, ``--set``, task.yaml).

A string may end up in an sbatch script, a command line or a path, so control characters are
refused everywhere; a name that becomes a directory matches one safe pattern; numbers are finite
and in range. YAML is parsed here, once, so every way a file can be broken (binary, too deep,
an alias bomb) reads as one line. Each check raises InputError naming the key or flag.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from .errors import InputError

__all__ = ["CONTROL", "NAME", "MAX_TASKS", "MAX_YAML_BYTES", "control_chars", "check_text", "check_tree",
           "safe_name", "check_number", "check_hparams", "check_seed", "parse_yaml", "compose_yaml",
           "read_yaml", "check_output_dir"]

CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# a directory name: no '/', no leading '.', '-' or '+', no '..'; long enough for generated task ids
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,199}")
MAX_TASKS = 10_000  # a study larger than this is refused before its sweep is expanded
MAX_YAML_BYTES = 4 * 2**20  # jobs files are a few KB; anything this large is not one
_MAX_YAML_DEPTH = 100  # a jobs file needs about 8 levels
_MAX_YAML_NODES = 200_000  # after aliases are followed: stops "billion laughs" documents


def control_chars(text: str) -> str | None:
    """The first control character of ``text`` as an escape (``'\\n'``), or None."""
    m = CONTROL.search(text)
    return None if m is None else repr(m.group())[1:-1]


def check_text(value: Any, what: str) -> Any:
    """``value`` unchanged when it is not a string with a control character (newline, NUL, ...)."""
    if isinstance(value, str) and (bad := control_chars(value)) is not None:
        raise InputError(f"{what}: control character {bad!r} is not allowed ({value[:40]!r})")
    return value


def _walk(data: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(data, dict):
        for key, value in data.items():
            sub = f"{path}.{key}" if path else str(key)
            if isinstance(key, str):
                yield sub, key
            yield from _walk(value, sub)
    elif isinstance(data, (list, tuple)):
        for i, value in enumerate(data):
            yield from _walk(value, f"{path}[{i}]")
    elif isinstance(data, str):
        yield path, data


def check_tree(data: Any, where: str) -> Any:
    """Refuse control characters in every key and string of a parsed document (or hparams dict)."""
    for path, text in _walk(data, ""):
        check_text(text, f"{where}{'.' if path and where else ''}{path}" or where)
    return data


def safe_name(value: Any, what: str) -> str:
    """A name that becomes one path component: letters, digits, '_', '.', '+', '-'; never '/' or '..'."""
    if not isinstance(value, str) or not NAME.fullmatch(value) or ".." in value:
        raise InputError(f"{what}: {str(value)[:60]!r} is not a safe name (letters, digits, '_', '.', '+' "
                         "or '-', starting with a letter or digit, no '..', at most 200 characters)")
    return value


def check_number(value: Any, what: str, *, minimum: float | None = None, positive: bool = False,
                 integer: bool = False) -> Any:
    """A finite number (an integer if asked), ``> 0`` if ``positive``, ``>= minimum`` if given."""
    wrong_type = integer and not isinstance(value, int)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or wrong_type:
        raise InputError(f"{what}: expected {'an integer' if integer else 'a number'}, got {value!r}")
    if not math.isfinite(value):
        raise InputError(f"{what}: must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise InputError(f"{what}: must be > 0, got {value!r}")
    if minimum is not None and value < minimum:
        raise InputError(f"{what}: must be >= {minimum}, got {value!r}")
    return value


# hyper-parameters every trainer reads the same way; the trainers' configs check types and the rest
_POSITIVE = ("epochs", "batch_size", "image_size", "out_size", "val_freq", "video_length", "prompt_freq",
             "lr", "memory_lr")
_NON_NEGATIVE = ("num_workers", "vis", "memory_bank_size", "patience")


def check_hparams(hparams: dict[str, Any], where: str = "hparams") -> dict[str, Any]:
    """Control characters nowhere, every float finite, sizes/epochs/lr > 0, counts >= 0."""
    check_tree(hparams, where)
    stack: list[tuple[str, Any]] = [(where, hparams)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((f"{path}.{k}", v) for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{path}: must be a finite number, got {value!r}")
    for key, value in hparams.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if key in _POSITIVE:
            check_number(value, f"{where}.{key}", positive=True)
        elif key in _NON_NEGATIVE:
            check_number(value, f"{where}.{key}", minimum=0)
    return hparams


def check_seed(value: Any, what: str) -> int:
    """Seeds are what numpy accepts: integers in [0, 2**32)."""
    check_number(value, what, minimum=0, integer=True)
    if value >= 2**32:
        raise InputError(f"{what}: must be < 2**32, got {value}")
    return int(value)


def _shape_problem(data: Any, what: str) -> str | None:
    """Too deep (libyaml reads what Python's recursion would refuse) or, with every alias followed,
    too large (a recursive alias never ends)."""
    stack, seen = [(data, 0)], 0
    while stack:
        item, depth = stack.pop()
        seen += 1
        if seen > _MAX_YAML_NODES:
            return (f"{what}: more than {_MAX_YAML_NODES} values once aliases are followed "
                    "(an alias bomb or a recursive alias)")
        if depth > _MAX_YAML_DEPTH:
            return f"{what}: nested too deeply"
        if isinstance(item, dict):
            stack.extend((x, depth + 1) for x in (*item.keys(), *item.values()))
        elif isinstance(item, list):
            stack.extend((x, depth + 1) for x in item)
    return None


# libyaml's loader where PyYAML was built with it: a 10,000-task jobs file parses in a fraction of
# the pure-Python time. It accepts the same documents; a failure is parsed again by the pure-Python
# loader, whose messages (and RecursionError on deep nesting) are the ones reported.
FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_yaml(text: str, what: str) -> Any:
    """``yaml.safe_load`` whose every failure (bad syntax, too deep, alias bombs) is one line."""
    if "\x00" in text:
        raise InputError(f"{what}: is a binary file, not YAML")
    try:
        data = yaml.load(text, Loader=FAST_LOADER)
    except Exception:  # any failure of the C loader: the Python loader names it
        data = _parse_slowly(text, what)
    problem = _shape_problem(data, what)
    if problem:
        raise InputError(problem)
    return data


def compose_yaml(text: str) -> yaml.Node | None:
    """The node tree (line numbers) of a document :func:`parse_yaml` accepted."""
    try:
        return yaml.compose(text, Loader=FAST_LOADER)
    except Exception:  # what only the pure-Python loader reads
        return yaml.compose(text, Loader=yaml.SafeLoader)


def _parse_slowly(text: str, what: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = str(getattr(exc, "problem", None) or exc).splitlines()[0]
        raise InputError(f"{what}:{where} is not valid YAML ({problem})") from None
    except RecursionError:
        raise InputError(f"{what}: nested too deeply") from None


def read_yaml(path: str | os.PathLike, what: str | None = None) -> tuple[str, Any]:
    """Text and parsed content of a YAML file; unreadable, binary or broken files are one line."""
    path = Path(path)
    what = what or str(path)
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise InputError(f"{what}: larger than {MAX_YAML_BYTES // 2**20} MiB; not a jobs file")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{what}: is a binary file, not UTF-8 YAML") from None
    except OSError as exc:
        raise InputError(f"{what}: cannot be read ({exc.strerror or exc})") from None
    return text, parse_yaml(text, what)


def check_output_dir(path: str | os.PathLike, what: str) -> Path:
    """``path`` can become a directory: it is one, or its nearest existing ancestor is a writable one."""
    path = Path(path)
    check_text(os.fspath(path), what)
    for probe in (path, *path.parents):
        if probe.exists():
            if not probe.is_dir():
                raise InputError(f"{what} {path}: {probe} is a file, not a directory")
            if not os.access(probe, os.W_OK | os.X_OK):
                raise InputError(f"{what} {path}: {probe} is not writable")
            break
    return path
