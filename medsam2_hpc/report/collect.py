"""Read every run directory of a study into pandas: one row per run, scores kept long.

The collector trusts only metrics.json (ARCHITECTURE.md section 3), checked with
``contract.validate_metrics``; status.json says why a run has none, task.yaml says what the
run was meant to be. Nothing is dropped silently: a run without valid metrics keeps its row
with a ``state`` (failed, running, preempted, pending, missing, malformed) and a ``note``, and a
malformed or old-schema metrics.json also becomes a warning naming the file.
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
import pandas as pd
import yaml

from ..contract import validate_metrics
from ..errors import InputError

__all__ = ["GROUP", "THROUGHPUT_KEY", "PER_SLICE_CLASS_KEY", "Study", "load_study"]

# A row of the comparison tables: one model size, prompted one way, on one dataset.
GROUP = ["dataset", "model", "variant", "prompt"]
# Optional metrics.json extras the tables use when present.
THROUGHPUT_KEY = "throughput"  # training samples per second
PER_SLICE_CLASS_KEY = "per_class_per_slice"  # class -> per-slice Dice (3D runs)
_RUN_FILES = ("metrics.json", "status.json", "task.yaml")
_TASK_KEYS = ("model", "variant", "dataset", "prompt", "seed")


@dataclass
class Study:
    """What a study directory holds.

    ``runs``: one row per run dir (``ok`` True when its metrics are in the tables);
    ``classes``: long table run/metric/cls/value of per-class Dice (``dice``, ``per_slice``);
    ``cases``: run -> (case ids, each case's Dice averaged over its classes); arrays, not a long
    table, because 10,000 REFUGE runs hold 4 million case scores.
    """

    path: Path
    runs: pd.DataFrame
    classes: pd.DataFrame
    cases: dict[str, tuple[tuple[str, ...], np.ndarray]]
    warnings: list[str] = field(default_factory=list)

    @property
    def scored(self) -> pd.DataFrame:
        """Runs whose metrics.json is valid, i.e. the ones the tables average."""
        return self.runs[self.runs["ok"]]


def _run_dirs(study: Path) -> list[tuple[Path, set[str]]]:
    """Direct children holding any run file, with the run files each holds (one listdir per run).

    A study's runs live at <study>/<task_id>/ (ARCHITECTURE.md section 3).
    """
    found = []
    with os.scandir(study) as entries:
        for entry in entries:
            if entry.is_dir():
                present = set(os.listdir(entry.path)).intersection(_RUN_FILES)
                if present:
                    found.append((Path(entry.path), present))
    return sorted(found, key=lambda item: item[0].name)


def _read_json(path: Path) -> tuple[Any, str | None]:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh), None
    except (OSError, ValueError) as exc:
        return None, f"unreadable ({type(exc).__name__}: {exc})"


def _read_task(path: Path) -> dict[str, Any]:
    """What task.yaml says the run is (model, variant, ...); empty when absent or unreadable."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError):
        return {}
    return {k: data[k] for k in _TASK_KEYS if k in data} if isinstance(data, dict) else {}


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


def _case_scores(per_case: dict[str, dict[str, Any]]) -> np.ndarray:
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
        except (TypeError, ValueError):  # ragged rows or stray values: the slow, careful way
            return np.array([_row_mean(row) for row in rows], dtype=float)
    if table.ndim != 2 or table.shape[1] == 0:
        return np.full(len(per_case), math.nan)
    with warnings.catch_warnings():  # a case where every class is absent: NaN, on purpose
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(table, axis=1)


class _Loader:
    """Accumulates rows in plain lists: one DataFrame build at the end keeps 10,000 runs fast."""

    def __init__(self) -> None:
        self.runs: list[dict[str, Any]] = []
        self.classes: list[tuple[str, str, str, float]] = []  # run, metric, class, value
        self.cases: dict[str, tuple[tuple[str, ...], np.ndarray]] = {}
        self._case_ids: dict[tuple[str, ...], tuple[str, ...]] = {}  # one shared tuple per test set
        self.warnings: list[str] = []

    def add(self, run_dir: Path, present: set[str], study: Path) -> None:
        name = run_dir.name
        status, status_problem = ({}, None)
        if "status.json" in present:
            status, status_problem = _read_json(run_dir / "status.json")
            if not isinstance(status, dict):
                status_problem = status_problem or "not a JSON object"
                status = {}
        if status_problem:
            self.warnings.append(f"{run_dir / 'status.json'}: {status_problem}")
        row: dict[str, Any] = {
            "run": name, "status": status.get("state", "unknown" if status_problem else None),
            "attempts": status.get("attempts"), "error": _error_tail(status.get("error")),
            "note": "", "ok": False,
        }
        if "metrics.json" in present:
            self._add_metrics(row, run_dir / "metrics.json", study)
        else:
            row["state"] = row["status"] or "missing"
            if row["state"] == "completed":
                row["state"], row["note"] = "missing", "status says completed but metrics.json is missing"
            elif row["status"] is None:
                row["note"] = "no status.json and no metrics.json"
        if not row["ok"] and "task.yaml" in present:  # what the run was meant to be (YAML is slow: only here)
            row.update(_read_task(run_dir / "task.yaml"))
        self.runs.append(row)

    def _add_metrics(self, row: dict[str, Any], path: Path, study: Path) -> None:
        data, problem = _read_json(path)
        problems = [problem] if problem else validate_metrics(data)
        if problems:
            rel = path.relative_to(study.parent) if study.parent in path.parents else path
            self.warnings.append(f"{rel}: skipped: {'; '.join(problems[:3])}"
                                 + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""))
            row.update(state="malformed", note=problems[0])
            return
        row.update({k: data[k] for k in _TASK_KEYS}, state=row["status"] or "completed", ok=True,
                   task_id=data["task_id"], split=data["split"], dice=_number(data["dice_mean"]),
                   dice_per_slice=_number(data.get("dice_mean_per_slice")), hd95=_number(data["hd95_mean"]),
                   params_m=_number(data["params_m"]), train_hours=_number(data["train_seconds"]) / 3600.0,
                   eval_seconds=_number(data["eval_seconds"]), throughput=_number(data.get(THROUGHPUT_KEY)),
                   peak_gpu_mem_gb=_number(data["peak_gpu_mem_gb"]), n_cases=data["n_cases"],
                   epochs=data["epochs_completed"])
        if row["status"] not in (None, "completed"):
            row["note"] = f"metrics.json present while status.json says {row['status']}"
        run = row["run"]
        for metric, scores in (("dice", data["per_class"]), ("per_slice", data.get(PER_SLICE_CLASS_KEY))):
            if isinstance(scores, dict):
                self.classes.extend((run, metric, cls, _number(value)) for cls, value in scores.items())
        ids = tuple(data["per_case"])
        self.cases[run] = (self._case_ids.setdefault(ids, ids), _case_scores(data["per_case"]))

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        runs = pd.DataFrame(self.runs)
        for column in ("state", "note", "error", "ok", *_TASK_KEYS, "dice", "dice_per_slice", "hd95",
                       "params_m", "train_hours", "throughput"):
            if column not in runs:
                runs[column] = math.nan
        classes = pd.DataFrame.from_records(self.classes, columns=["run", "metric", "cls", "value"])
        return runs, classes


def load_study(study_dir: str | os.PathLike) -> Study:
    """Every run directory under ``study_dir``; InputError when it is not a study directory."""
    path = Path(study_dir)
    if not path.is_dir():
        raise InputError(f"study dir {str(path)!r}: not a directory")
    run_dirs = _run_dirs(path)
    if not run_dirs:
        raise InputError(f"study dir {str(path)!r}: no run directories (none has {', '.join(_RUN_FILES)})")
    loader = _Loader()
    for run_dir, present in run_dirs:
        loader.add(run_dir, present, path)
    runs, classes = loader.frames()
    return Study(path, runs, classes, loader.cases, loader.warnings)
