"""Per-task status of a study: the run's own record, reconciled with what Slurm says.

A run records its state in status.json, but a job can end without the run writing a final
state: killed for memory, node failure, cancelled, time limit, or it never started (no
``apptainer`` on the node). :func:`settle` asks Slurm once (hpc/queue.py) and marks such runs
``failed`` with the Slurm state as the reason, so ``status`` shows them and
``resubmit --failed`` picks them up.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..atomic import read_json
from ..errors import InputError
from ..task import RunDir
from .queue import JobState, slurm_states

__all__ = ["FINAL", "SUBMISSIONS", "submissions", "latest_elements", "settle", "log_paths", "status_rows"]

FINAL = ("completed", "failed")
SUBMITIT_DIR = ".submitit"
SUBMISSIONS = "submissions.json"  # every submission: array job id, profile, task id -> element id
# what slurmstepd writes when jobacct_gather's OverMemoryKill ends a step (sacct: FAILED/CANCELLED)
_OOM_LINES = ("exceeded job memory limit", "exceeded memory limit", "oom-kill", "out of memory")


def submissions(study_dir: Path) -> list[dict[str, Any]]:
    path = Path(study_dir) / SUBMISSIONS
    if not path.exists():
        return []
    try:
        return list(read_json(path)["submissions"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: unreadable submissions record ({exc})") from exc


def latest_elements(study_dir: Path) -> dict[str, dict[str, str]]:
    """task id -> {'job': element id, 'executor': name, 'logs': its submission's log folder under
    .submitit ('' for submissions recorded before that folder: one folder per element)}."""
    out: dict[str, dict[str, str]] = {}
    for sub in submissions(study_dir):
        info = {"executor": sub.get("executor", ""), "logs": sub.get("logs", "")}
        for task_id, element in sub.get("tasks", {}).items():
            out[task_id] = {"job": str(element), **info}
    return out


def log_paths(study_dir: Path, element: str, logs: str = "") -> tuple[Path, Path]:
    """submitit's stdout and stderr files of one array element (every attempt appends): in its
    submission's folder ``logs``, made before sbatch; '' (older studies): a folder of its own."""
    folder = Path(study_dir) / SUBMITIT_DIR / (logs or element)
    return folder / f"{element}_0_log.out", folder / f"{element}_0_log.err"


def _tail(path: Path, size: int = 8192) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - size))
            return [ln.strip() for ln in fh.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return []


def _slurm_reason(study_dir: Path, element: str, logs: str, job: JobState | None) -> tuple[str, str]:
    """(Slurm state, error line) of an element that left the queue without a final run state."""
    lines = _tail(log_paths(study_dir, element, logs)[1])
    if job is None:
        return "GONE", (lines[-1] if lines else f"job {element} left the queue without a final status "
                        "(no accounting to say why)")
    state = job.state
    if state in ("FAILED", "CANCELLED") and any(m in ln.lower() for ln in lines for m in _OOM_LINES):
        state = "OUT_OF_MEMORY"  # a memory kill without cgroups: Slurm says so only in the log
    return state, f"Slurm state {state} (job {element})" + (f": {lines[-1]}" if lines else "")


def _ended_in(status: Mapping[str, Any]) -> str | None:
    """The element whose attempt wrote the run's state (an earlier submission's, after a resubmit)."""
    if status.get("element"):
        return str(status["element"])
    array, index = status.get("slurm_array_job_id"), status.get("slurm_array_task_id")
    return f"{array}_{index}" if array and index is not None else status.get("slurm_job_id")


def _ended_here(status: Mapping[str, Any], element: str) -> bool:
    """The run's final state belongs to ``element`` (not to a submission before a resubmit)."""
    state = status.get("state")
    return state == "completed" or (state == "failed" and _ended_in(status) in (element, None))


def settle(study_dir: Path, elements: Mapping[str, Mapping[str, str]]) -> dict[str, JobState]:
    """Ask Slurm about ``elements`` (task id -> its :func:`latest_elements` entry) once; mark the
    runs whose job ended without a final state ``failed`` (reason: the Slurm state). Returns
    Slurm's answer."""
    if not elements:
        return {}
    states, accounting = slurm_states({e["job"].split("_")[0] for e in elements.values()})
    for task_id, entry in elements.items():
        element = entry["job"]
        job = states.get(element)
        if job is not None and job.active or (job is None and accounting):
            continue  # queued, or unknown to sacct as well (submitted a moment ago, or purged)
        run = RunDir(Path(study_dir) / task_id)
        if run.metrics_json.exists() or _ended_here(run.status(), element):
            continue
        slurm, error = _slurm_reason(Path(study_dir), element, entry.get("logs", ""), job)
        run.update_status(state="failed", slurm_state=slurm, error=error, element=element,
                          ended_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    return states


def status_rows(study_dir: Path, task_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Per task: state, attempts, element id, Slurm state, pending reason, elapsed time, stderr
    log and the last error line; default: every task found in the study directory. Imports no
    torch, so ``status`` answers quickly on a login node.

    Raises:
        SlurmError: Slurm could not be asked (never read as "nothing queued").
    """
    study_dir = Path(study_dir)
    latest = latest_elements(study_dir)
    if task_ids is None:
        found = {p.parent.name for p in study_dir.glob("*/status.json")}
        found |= {p.parent.name for p in study_dir.glob("*/task.yaml")}
        task_ids = sorted(found | set(latest))
    states = settle(study_dir, {t: e for t, e in latest.items() if e.get("executor") == "slurm"})
    rows = []
    folder = str(study_dir / SUBMITIT_DIR)  # log_paths' layout, as strings: one row per task
    for task_id in task_ids:
        status = RunDir(study_dir / task_id).status()
        entry = latest.get(task_id, {})
        element = entry.get("job")
        job = states.get(element or "")
        state = status.get("state", "pending")
        if job is not None and job.active and state in FINAL and not _ended_here(status, element or ""):
            state, status = "pending", {**status, "error": None}  # resubmitted, waiting in the queue
        error = (status.get("error") or "").strip().splitlines()
        rows.append({"task_id": task_id, "state": state,
                     "attempts": int(status.get("attempts", 0)), "job": element,
                     "slurm": job.state if job else status.get("slurm_state", ""),
                     "reason": job.reason if job else "", "elapsed": job.elapsed if job else "",
                     "log": os.path.join(folder, entry.get("logs") or element, f"{element}_0_log.err")
                     if element else None,
                     "error": error[-1] if error else None})
    return rows
