"""How a run's numbers were chosen, as its metrics.json records it, and whether they may be tabulated.

A reviewer asks of every row: was the checkpoint picked on the cases that are then scored?
which hyper-parameters? which HD95 unit? Round-2 runs record this (``selection_split``,
``selection_cases``, ``selection_dice``, ``checkpoint``, ``hparams``, ``hd95_unit``); older runs
do not, and are read as ``unknown`` (labelled in the tables), never guessed. A run whose
selection cases overlap its scored cases is kept out of the tables with the reason.
Pure Python (no pandas, no torch): it runs in the collector's worker processes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["UNKNOWN", "NONE", "HD95_UNITS", "COLUMNS", "Provenance", "read_provenance", "canonical_hparams"]

UNKNOWN = "unknown"  # the run predates the field
NONE = "none"  # recorded as null: no selection on any split (e.g. select: last without validation)
HD95_UNITS = ("mm", "px")
CHECKPOINT_SELECT = ("best", "last", "given")  # given: weights from outside the run (inference)
_SHOWN_CASES = 3
# What a run contributes to ``Study.runs`` and runs.csv.
COLUMNS = ("selection_split", "selection_dice", "checkpoint", "checkpoint_epoch", "validated", "hd95_unit",
           "hparams")


@dataclass(frozen=True)
class Provenance:
    """The round-2 fields of one metrics.json, each ``UNKNOWN`` when the run predates it.

    ``hparams``: canonical JSON of the resolved hyper-parameters ("" when not recorded), the
    key that keeps sweep points apart. ``overlap``: why the run may not be tabulated ("" if it may).
    """

    selection_split: str
    selection_dice: float
    checkpoint: str
    checkpoint_epoch: float
    validated: bool | None
    hd95_unit: str
    hparams: str
    overlap: str

    def row(self) -> dict[str, Any]:
        """The columns a run contributes to ``Study.runs`` (and runs.csv)."""
        return {column: getattr(self, column) for column in COLUMNS}


def canonical_hparams(hparams: dict[str, Any]) -> str:
    """One string per hyper-parameter set: equal dicts give equal strings whatever their key order."""
    return json.dumps(hparams, sort_keys=True, separators=(",", ":"), default=str)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _split(data: dict[str, Any], problems: list[str]) -> str:
    if "selection_split" not in data:
        return UNKNOWN
    value = data["selection_split"]
    if value is None:
        return NONE
    if not isinstance(value, str):
        problems.append(f"key 'selection_split' should be str, got {type(value).__name__}")
        return UNKNOWN
    return value


def _checkpoint(data: dict[str, Any], problems: list[str]) -> tuple[str, float, bool | None]:
    """(select, epoch, validated) from ``checkpoint``: {"select": best|last, "epoch", "validated"}."""
    if "checkpoint" not in data:
        return UNKNOWN, math.nan, None
    value = data["checkpoint"]
    if not isinstance(value, dict):
        problems.append(f"key 'checkpoint' should be dict, got {type(value).__name__}")
        return UNKNOWN, math.nan, None
    select, epoch, validated = value.get("select"), value.get("epoch"), value.get("validated")
    if select not in CHECKPOINT_SELECT:
        problems.append(f"checkpoint.select {select!r} is not one of {CHECKPOINT_SELECT}")
        select = UNKNOWN
    if epoch is not None and not (isinstance(epoch, int) and not isinstance(epoch, bool)):
        problems.append(f"checkpoint.epoch should be int or null, got {type(epoch).__name__}")
        epoch = None
    if not isinstance(validated, bool):
        problems.append("checkpoint.validated should be true or false")
        validated = None
    return select, math.nan if epoch is None else float(epoch), validated


def _overlap(data: dict[str, Any], selection_split: str, problems: list[str]) -> str:
    """Why selection touched the scored cases, or "" when it did not (or cannot be told)."""
    cases = data.get("selection_cases")
    if cases is not None and not (isinstance(cases, list) and all(isinstance(c, str) for c in cases)):
        problems.append("selection_cases should be a list of case ids (strings)")
        cases = None
    scored = data.get("per_case") if isinstance(data.get("per_case"), dict) else {}
    if selection_split not in (UNKNOWN, NONE) and selection_split == data.get("split"):
        return f"checkpoint selected on the scored split {selection_split!r}"
    if cases:
        shared = sorted(set(cases).intersection(scored))
        if shared:
            shown = ", ".join(shared[:_SHOWN_CASES]) + (", ..." if len(shared) > _SHOWN_CASES else "")
            return (f"{len(shared)} of {len(cases)} selection cases ({selection_split}) are scored "
                    f"{data.get('split')} cases: {shown}")
    return ""


def read_provenance(data: dict[str, Any]) -> tuple[Provenance, list[str]]:
    """The round-2 fields of a metrics dict, and every problem with them (empty: all fine).

    Reads any dict, so that a file with other problems too has all of them named at once. The
    problems are worded as ``contract.validate_metrics`` words them, so the reader can drop the
    ones the contract already named (schema 2 checks these fields too).
    """
    problems: list[str] = []
    selection_split = _split(data, problems)
    selection_dice = data.get("selection_dice")
    if selection_dice is not None and not _is_number(selection_dice):
        kind = type(selection_dice).__name__
        problems.append(f"key 'selection_dice' should be float/int/NoneType, got {kind}")
        selection_dice = None
    select, epoch, validated = _checkpoint(data, problems)
    unit = data.get("hd95_unit") or UNKNOWN  # null: no HD95 computed, so no unit either
    if unit not in (*HD95_UNITS, UNKNOWN):
        problems.append(f"hd95_unit {unit!r} is not one of {HD95_UNITS}")
        unit = UNKNOWN
    hparams = data.get("hparams")
    if hparams is not None and not isinstance(hparams, dict):
        problems.append(f"key 'hparams' should be dict, got {type(hparams).__name__}")
        hparams = None
    overlap = _overlap(data, selection_split, problems)
    dice = math.nan if selection_dice is None else float(selection_dice)
    return Provenance(selection_split, dice, select, epoch, validated, unit,
                      "" if hparams is None else canonical_hparams(hparams), overlap), problems
