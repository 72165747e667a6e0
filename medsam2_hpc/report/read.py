"""Read a list of run directories into compact rows: the part of collecting that worker processes run.

The collector trusts only metrics.json (ARCHITECTURE.md section 3), checked with
``contract.validate_metrics``; status.json says why a run has none, task.yaml says what the
run was meant to be. Nothing is dropped silently: a run without valid metrics keeps its row
with a ``state`` (failed, running, preempted, pending, missing, malformed) and a ``note``, and a
malformed metrics.json (a missing key, an old schema, a Dice, per case too, that is not a number
in [0, 1]) also becomes a warning naming the file and its problems. A completed run whose
checkpoint was selected on cases it is then scored on (``provenance.py``) keeps its row, out of
the tables, with the reason as its note.

Decoding 10,000 metrics.json files is most of a study's collect time, so :func:`read_runs`
returns a :class:`Chunk` small enough to send back from a worker process cheaply: one dict per
run, per-class scores as (names, values) blocks and per-case scores as one array per run, never
the decoded JSON. This module imports neither pandas nor torch, so a worker starts fast.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..contract import validate_metrics
from .provenance import read_provenance

__all__ = ["THROUGHPUT_KEY", "PER_SLICE_CLASS_KEY", "RUN_FILES", "TASK_KEYS", "Chunk", "read_runs",
           "case_scores"]

# Optional metrics.json extras the tables use when present.
THROUGHPUT_KEY = "throughput"  # training samples per second
PER_SLICE_CLASS_KEY = "per_class_per_slice"  # class -> per-slice Dice (3D runs)
RUN_FILES = frozenset(("metrics.json", "status.json", "task.yaml"))
TASK_KEYS = ("model", "variant", "dataset", "prompt", "seed")

CaseEntry = tuple[tuple[str, ...], np.ndarray]  # (case ids, each case's Dice averaged over classes)
ClassBlock = tuple[str, str, tuple[str, ...], tuple[float, ...]]  # run, metric, class names, values


@dataclass
class Chunk:
    """What a list of run directories holds, in run-name order.

    ``rows``: one dict per run directory (directories without any run file are not runs);
    ``classes``: per-class Dice of each valid run, one block per metric (``dice``, ``per_slice``);
    ``cases``: run -> (case ids, case scores), case-id tuples shared between runs of one test set.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    classes: list[ClassBlock] = field(default_factory=list)
    cases: dict[str, CaseEntry] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _read_json(path: str) -> tuple[Any, str | None] | None:
    """(data, None), or (None, why) when unreadable; None when there is no such file.

    Opening and catching "no such file" is cheaper than listing every run directory first.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh), None
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return None, f"unreadable ({type(exc).__name__}: {exc})"


def _read_task(path: str) -> dict[str, Any] | None:
    """What task.yaml says the run is (model, variant, ...); empty when unreadable, None when absent."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        return None
    except (OSError, yaml.YAMLError):
        return {}
    return {k: data[k] for k in TASK_KEYS if k in data} if isinstance(data, dict) else {}


def _error_tail(error: Any, lines: int = 3) -> str:
    if not error:
        return ""
    kept = [line for line in str(error).strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def _row_mean(values: list[Any]) -> float:
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return sum(numbers) / len(numbers) if numbers else math.nan


def case_scores(per_case: dict[str, dict[str, Any]]) -> np.ndarray:
    """Each case's Dice averaged over its scored classes (None = absent organ, skipped; NaN if none).

    One numpy array per run (None becomes NaN), because a study of 10,000 REFUGE runs holds
    4 million case scores and a Python loop per case would dominate the collect time.
    """
    widths = set(map(len, per_case.values()))
    try:  # fast: every case has the same classes and none is absent (None fails float())
        if len(widths) != 1:
            raise ValueError("ragged")
        (width,) = widths
        flat = itertools.chain.from_iterable(map(dict.values, per_case.values()))
        table = np.fromiter(flat, dtype=float, count=len(per_case) * width).reshape(len(per_case), width)
    except (TypeError, ValueError):
        rows = [list(classes.values()) for classes in per_case.values()]
        try:
            table = np.array(rows, dtype=float)  # None -> NaN
        except (TypeError, ValueError):  # ragged rows (validated: numbers or None): the slow way
            return np.array([_row_mean(row) for row in rows], dtype=float)
    if table.ndim != 2 or table.shape[1] == 0:
        return np.full(len(per_case), math.nan)
    means = table.mean(axis=1)  # a quarter of nanmean's cost; the same sums when nothing is NaN
    if np.isnan(means).any():
        with warnings.catch_warnings():  # a case where every class is absent: NaN, on purpose
            warnings.simplefilter("ignore", RuntimeWarning)
            means = np.nanmean(table, axis=1)
    return means


class _Reader:
    """Turns run directories into a :class:`Chunk`, one directory at a time."""

    def __init__(self, study: Path) -> None:
        self.study = study
        self.chunk = Chunk()
        self._shared: dict[tuple[str, ...], tuple[str, ...]] = {}  # one tuple per test set / class list

    def _share(self, names: tuple[str, ...]) -> tuple[str, ...]:
        return self._shared.setdefault(names, names)

    def add(self, run_dir: str) -> None:
        """One directory; without any run file (metrics.json, status.json, task.yaml) it is no run."""
        status_read = _read_json(os.path.join(run_dir, "status.json"))
        metrics_read = _read_json(os.path.join(run_dir, "metrics.json"))
        task = None
        if status_read is None and metrics_read is None:
            task = _read_task(os.path.join(run_dir, "task.yaml"))
            if task is None:
                return
        status, status_problem = status_read or ({}, None)
        if status_read is not None and not isinstance(status, dict):
            status_problem = status_problem or "not a JSON object"
            status = {}
        if status_problem:
            self.chunk.warnings.append(f"{os.path.join(run_dir, 'status.json')}: {status_problem}")
        row: dict[str, Any] = {
            "run": os.path.basename(run_dir),
            "status": status.get("state", "unknown" if status_problem else None),
            "attempts": status.get("attempts"), "error": _error_tail(status.get("error")),
            "note": "", "ok": False,
        }
        if metrics_read is not None:
            self._add_metrics(row, os.path.join(run_dir, "metrics.json"), *metrics_read)
        else:
            row["state"] = row["status"] or "missing"
            if row["state"] == "completed":
                row["state"], row["note"] = "missing", "status says completed but metrics.json is missing"
            elif row["status"] is None:
                row["note"] = "no status.json and no metrics.json"
        if not row["ok"]:  # what the run was meant to be (YAML is slow: only here)
            if task is None:
                task = _read_task(os.path.join(run_dir, "task.yaml"))
            row.update(task or {})
        self.chunk.rows.append(row)

    def _shown(self, path: str) -> Path:
        """``path`` as warnings show it: from the study's parent (``<study>/<run>/metrics.json``)."""
        file = Path(path)
        return file.relative_to(self.study.parent) if self.study.parent in file.parents else file

    def _add_metrics(self, row: dict[str, Any], path: str, data: Any, problem: str | None) -> None:
        problems = [problem] if problem else validate_metrics(data)
        if isinstance(data, dict):  # every problem at once, the round-2 fields' too
            provenance, more = read_provenance(data)
            problems = list(dict.fromkeys([*problems, *more]))  # the contract may name the same ones
        if problems:
            self.chunk.warnings.append(f"{self._shown(path)}: skipped: {'; '.join(problems[:3])}"
                                       + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""))
            row.update(state="malformed", note=problems[0])
            return
        row.update({k: data[k] for k in TASK_KEYS}, **provenance.row(), state=row["status"] or "completed",
                   ok=not provenance.overlap,
                   task_id=data["task_id"], split=data["split"], dice=_number(data["dice_mean"]),
                   dice_per_slice=_number(data.get("dice_mean_per_slice")), hd95=_number(data["hd95_mean"]),
                   params_m=_number(data["params_m"]), train_hours=_number(data["train_seconds"]) / 3600.0,
                   eval_seconds=_number(data["eval_seconds"]), throughput=_number(data.get(THROUGHPUT_KEY)),
                   peak_gpu_mem_gb=_number(data["peak_gpu_mem_gb"]), n_cases=data["n_cases"],
                   epochs=data["epochs_completed"])
        if row["status"] not in (None, "completed"):
            row["note"] = f"metrics.json present while status.json says {row['status']}"
        if provenance.overlap:  # listed with the reason, never averaged
            row["note"] = f"not tabulated: {provenance.overlap}"
            self.chunk.warnings.append(f"{self._shown(path)}: {row['note']}")
            return
        run = row["run"]
        for metric, scores in (("dice", data["per_class"]), ("per_slice", data.get(PER_SLICE_CLASS_KEY))):
            if isinstance(scores, dict) and scores:
                values = tuple(map(_number, scores.values()))
                self.chunk.classes.append((run, metric, self._share(tuple(scores)), values))
        self.chunk.cases[run] = (self._share(tuple(data["per_case"])), case_scores(data["per_case"]))


def read_runs(study: Path, names: list[str]) -> Chunk:
    """The run directories among ``study/<name>`` (those holding any run file), read in order.

    A module-level function of picklable arguments, so a process pool can run it on a slice.
    """
    reader = _Reader(study)
    for name in names:
        reader.add(os.path.join(study, name))
    return reader.chunk
