"""What Slurm says about a study's jobs: squeue for what is queued, sacct for how the rest ended.

A failing Slurm command is an error (:class:`~medsam2_hpc.errors.SlurmError`), never an empty
answer: reading "nothing queued" during a controller hiccup would make ``resubmit`` submit
running tasks a second time. The one answer that does mean "not queued" is squeue's
"Invalid job id" for jobs that all left the queue. ``sacct`` is asked only where accounting
is configured; without it a job that left the queue has no final state to report.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import SlurmError

__all__ = ["ACTIVE", "JobState", "queued", "finished", "slurm_states"]

# Slurm states of a job that has not ended (a requeued job passes through REQUEUED to PENDING)
ACTIVE = frozenset({"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
                    "COMPLETING", "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED",
                    "RESV_DEL_HOLD", "SPECIAL_EXIT"})
_NO_ACCOUNTING = "accounting storage is disabled"
_RANGE = re.compile(r"^(\d+)_\[([^\]]+)\]$")


@dataclass(frozen=True)
class JobState:
    """One array element as Slurm reports it."""

    state: str  # PENDING, RUNNING, COMPLETED, FAILED, OUT_OF_MEMORY, TIMEOUT, NODE_FAIL, CANCELLED, ...
    reason: str = ""  # why it is pending (squeue %r), or sacct's reason
    elapsed: str = ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    if shutil.which(argv[0]) is None:
        raise SlurmError(f"{argv[0]} is not on PATH (not a Slurm login node?)")
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired as exc:
        raise SlurmError(f"{argv[0]} gave no answer in {exc.timeout:.0f} s (is slurmctld up?)") from exc


def _failed(argv: list[str], out: subprocess.CompletedProcess) -> SlurmError:
    lines = [ln.strip() for ln in (out.stderr or out.stdout).splitlines() if ln.strip()]
    return SlurmError(f"{argv[0]} failed (exit {out.returncode}): {lines[-1] if lines else 'no message'}")


def _elements(job_id: str) -> list[str]:
    """``123_4`` -> [123_4]; sacct's pending ``123_[5-7,9%2]`` -> [123_5, 123_6, 123_7, 123_9]."""
    match = _RANGE.match(job_id)
    if not match:
        return [job_id]
    out = []
    for part in match.group(2).split("%")[0].split(","):
        low, _, high = part.partition("-")
        out += [f"{match.group(1)}_{i}" for i in range(int(low), int(high or low) + 1)]
    return out


def _state(text: str) -> str:
    return text.split()[0] if text.split() else "UNKNOWN"  # "CANCELLED by 1000" -> CANCELLED


def queued(arrays: Iterable[str]) -> dict[str, JobState]:
    """Element id -> state of every element of ``arrays`` still in squeue."""
    arrays = sorted(set(arrays))
    if not arrays:
        return {}
    argv = ["squeue", "-h", "-r", "-o", "%i|%T|%r|%M", "-j", ",".join(arrays)]
    out = _run(argv)
    if out.returncode != 0:
        if "Invalid job id" in out.stderr:  # every one of them has left the queue
            return {}
        raise _failed(argv, out)
    states = {}
    for line in out.stdout.splitlines():
        parts = line.split("|")
        if len(parts) == 4:
            reason = "" if parts[2] in ("None", "(null)") else parts[2]
            states[parts[0]] = JobState(_state(parts[1]), reason, parts[3])
    return states


def finished(arrays: Iterable[str]) -> dict[str, JobState] | None:
    """Element id -> state from sacct (final states included); None when there is no accounting."""
    arrays = sorted(set(arrays))
    if shutil.which("sacct") is None:
        return None
    if not arrays:
        return {}
    argv = ["sacct", "-n", "-P", "-X", "--duplicates", "-o", "JobID,State,Reason,Elapsed", "-j",
            ",".join(arrays)]
    out = _run(argv)
    if out.returncode != 0:
        if _NO_ACCOUNTING in out.stderr:
            return None
        raise _failed(argv, out)
    states: dict[str, JobState] = {}
    for line in out.stdout.splitlines():  # --duplicates lists every attempt, the latest last
        parts = line.split("|")
        if len(parts) == 4:
            reason = "" if parts[2] in ("None", "(null)") else parts[2]
            for element in _elements(parts[0]):
                states[element] = JobState(_state(parts[1]), reason, parts[3])
    return states


def slurm_states(arrays: Iterable[str]) -> tuple[dict[str, JobState], bool]:
    """squeue's view, completed by sacct's for elements that left the queue.

    Returns:
        (element id -> state, whether accounting answered).
    """
    arrays = sorted(set(arrays))
    live = queued(arrays)
    done = finished(arrays)
    if done is None:
        return live, False
    return {**{k: v for k, v in done.items() if not v.active}, **live}, True
