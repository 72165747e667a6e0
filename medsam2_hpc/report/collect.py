"""Read every run directory of a study into pandas: one row per run, scores kept long.

What one run contributes, and how a bad one is reported, is ``read.py``. This module lists
the run directories, reads them (in a process pool for large studies: JSON decoding is most
of the time and each file is independent) and builds the DataFrames once, at the end.
"""

from __future__ import annotations

import itertools
import math
import os
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from .provenance import COLUMNS as PROVENANCE_COLUMNS
from .read import PER_SLICE_CLASS_KEY, RUN_FILES, TASK_KEYS, THROUGHPUT_KEY, CaseEntry, Chunk, read_runs

__all__ = ["GROUP", "THROUGHPUT_KEY", "PER_SLICE_CLASS_KEY", "Study", "load_study"]

# A row of the comparison tables: one model size, prompted one way, on one dataset, with one
# hyper-parameter set (canonical JSON; "" for runs that did not record theirs), so sweeps stay apart.
GROUP = ["dataset", "model", "variant", "prompt", "hparams"]
_CHUNK_RUNS = 250  # directories per pool task: few enough tasks to keep pickling cheap, enough to balance
_RUN_COLUMNS = ("state", "note", "error", "ok", *TASK_KEYS, "dice", "dice_per_slice", "hd95", "params_m",
                "train_hours", "throughput", *PROVENANCE_COLUMNS)


@dataclass
class Study:
    """What a study directory holds.

    ``runs``: one row per run dir (``ok`` True when its metrics are in the tables: valid, and not
    selected on the cases it is scored on);
    ``classes``: long table run/metric/cls/value of per-class Dice (``dice``, ``per_slice``);
    ``cases``: run -> (case ids, each case's Dice averaged over its classes); arrays, not a long
    table, because 10,000 REFUGE runs hold 4 million case scores.
    """

    path: Path
    runs: pd.DataFrame
    classes: pd.DataFrame
    cases: dict[str, CaseEntry]
    warnings: list[str] = field(default_factory=list)

    @property
    def scored(self) -> pd.DataFrame:
        """Runs whose metrics.json is valid, i.e. the ones the tables average."""
        return self.runs[self.runs["ok"]]


def _subdirs(study: Path) -> list[str]:
    """Names of the direct subdirectories, sorted; a study's runs live at <study>/<task_id>/."""
    with os.scandir(study) as entries:
        return sorted(entry.name for entry in entries if entry.is_dir())


def _read(study: Path, names: list[str], pool: Executor | None) -> list[Chunk]:
    """``read_runs`` over ``names``, in slices on ``pool``'s processes when given; results in order."""
    if pool is None:
        return [read_runs(study, names)]
    slices = [names[i:i + _CHUNK_RUNS] for i in range(0, len(names), _CHUNK_RUNS)]
    return list(pool.map(read_runs, itertools.repeat(study), slices))


def _runs_frame(chunks: list[Chunk]) -> pd.DataFrame:
    runs = pd.DataFrame([row for chunk in chunks for row in chunk.rows])
    for column in _RUN_COLUMNS:
        if column not in runs:
            runs[column] = math.nan
    return runs


def _classes_frame(chunks: list[Chunk]) -> pd.DataFrame:
    """The long run/metric/cls/value table, built column-wise from the chunks' per-run blocks."""
    blocks = [block for chunk in chunks for block in chunk.classes]
    columns = ["run", "metric", "cls", "value"]
    if not blocks:
        return pd.DataFrame.from_records([], columns=columns)
    counts = [len(names) for _, _, names, _ in blocks]
    total = sum(counts)
    return pd.DataFrame({
        "run": np.repeat(np.array([b[0] for b in blocks], dtype=object), counts),
        "metric": np.repeat(np.array([b[1] for b in blocks], dtype=object), counts),
        "cls": np.fromiter(itertools.chain.from_iterable(b[2] for b in blocks), dtype=object, count=total),
        "value": np.fromiter(itertools.chain.from_iterable(b[3] for b in blocks), dtype=float, count=total),
    })


def _cases(chunks: list[Chunk]) -> dict[str, CaseEntry]:
    """Every run's case scores; runs on one test set share one case-id tuple across chunks too."""
    shared: dict[tuple[str, ...], tuple[str, ...]] = {}
    return {run: (shared.setdefault(ids, ids), scores)
            for chunk in chunks for run, (ids, scores) in chunk.cases.items()}


def load_study(study_dir: str | os.PathLike, pool: Executor | None = None) -> Study:
    """Every run directory under ``study_dir``; InputError when it is not a study directory.

    ``pool``: worker processes that read slices of the run directories (see ``pool.py`` for when
    that pays); without one the directories are read in this process.
    """
    path = Path(study_dir)
    if not path.is_dir():
        raise InputError(f"study dir {str(path)!r}: not a directory")
    chunks = _read(path, _subdirs(path), pool)
    if not any(chunk.rows for chunk in chunks):
        files = ", ".join(sorted(RUN_FILES))
        raise InputError(f"study dir {str(path)!r}: no run directories (none has {files})")
    warnings = [warning for chunk in chunks for warning in chunk.warnings]
    return Study(path, _runs_frame(chunks), _classes_frame(chunks), _cases(chunks), warnings)
