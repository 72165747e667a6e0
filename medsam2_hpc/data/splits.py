"""Train / val / test for every dataset: the carved validation set and user split files.

Selection (best checkpoint, early stopping, the best baseline) reads only ``val``; ``test`` is
scored once, from the selected weights. Datasets whose release has no validation set of its
own carve one from their training cases with :func:`carve_val`, the same rule everywhere:

    val = every 6th case of the sorted training case ids (the 6th, 12th, ...), or the last
    case when there are fewer than 6; train = the rest.

BTCV's 24 ``dataset_0.json`` training scans give 4 val cases (img0006, img0022, img0028,
img0034); REFUGE's 400 training images give 66. A user split file replaces all of it:

    {"train": ["img0001", ...], "val": ["img0002", ...], "test": ["img0035", ...]}

(JSON, case ids as the loaders name them; every id must exist, no id in two splits, no split
empty.) Pass it as ``hparams.split_file``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..errors import InputError

__all__ = ["SPLITS", "VAL_EVERY", "carve_val", "read_split_file", "assign"]

SPLITS = ("train", "val", "test")
VAL_EVERY = 6


def carve_val(cases: Sequence[str], source: str) -> dict[str, list[str]]:
    """``{"train": [...], "val": [...]}`` from training case ids (module docstring's rule)."""
    ordered = sorted(cases)
    if len(ordered) < 2:
        raise InputError(f"{source}: {len(ordered)} training case(s); a validation set is carved from "
                         "the training cases and needs at least 2 (or pass hparams.split_file)")
    val = ordered[VAL_EVERY - 1::VAL_EVERY] or ordered[-1:]
    return {"train": [c for c in ordered if c not in val], "val": val}


def read_split_file(path: str | Path) -> dict[str, list[str]]:
    """A user split file, checked: the three keys, lists of plain case ids, no case in two splits."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"hparams.split_file {path}: not a readable JSON split file ({exc})") from None
    if not isinstance(data, dict) or set(data) != set(SPLITS):
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise InputError(f"hparams.split_file {path}: expected an object with exactly the keys "
                         f"train, val, test; got {keys}")
    seen: dict[str, str] = {}
    for split in SPLITS:
        cases = data[split]
        if not isinstance(cases, list) or not cases:
            raise InputError(f"hparams.split_file {path}: {split!r} must be a non-empty list of case ids")
        for case in cases:
            if not isinstance(case, str) or not case or any(ord(ch) < 32 or ord(ch) == 127 for ch in case):
                raise InputError(f"hparams.split_file {path}: {split}: {case!r} is not a plain case id")
            if case in seen:
                raise InputError(f"hparams.split_file {path}: case {case!r} is in both "
                                 f"{seen[case]!r} and {split!r}")
            seen[case] = split
    return {split: list(data[split]) for split in SPLITS}


def assign(available: Sequence[str], split_file: str | Path, split: str) -> list[str]:
    """The cases of ``split`` in a split file, each checked against the dataset's ``available`` ids."""
    wanted = read_split_file(split_file)[split]
    known = set(available)
    missing = [c for c in wanted if c not in known]
    if missing:
        raise InputError(f"hparams.split_file {split_file}: case {missing[0]!r} ({split}) is not in the "
                         f"dataset ({len(known)} cases found)")
    return wanted
