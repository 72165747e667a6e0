"""Process pools for large studies: reading run directories and drawing figures on idle CPUs.

Decoding 10,000 metrics.json files and drawing three figures are seconds of pure-Python work,
which threads cannot share out (the GIL); separate processes can, but only on CPUs nobody else
is using: Linux shares a busy machine between sessions, not processes, so on a shared login
node extra workers only split this session's share and add their overhead (measured: slower).
Small studies skip the pool too: starting workers would cost more than it saves.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

__all__ = ["PARALLEL_MIN_RUNS", "MAX_WORKERS", "idle_cpus", "auto_workers", "process_pool"]

# Below this many run directories the collector works in one process.
PARALLEL_MIN_RUNS = 500
MAX_WORKERS = 8


def idle_cpus() -> int:
    """CPUs this process may use (a Slurm allocation narrows the affinity) that the load leaves idle.

    Idle: the machine's CPUs minus its 1-minute load average (the rule of ``make -l``), plus one
    for this process, which the load counts; a job with its own cores on a busy node still finds
    them idle, a saturated login node does not.
    """
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity API on this platform
        allowed = os.cpu_count() or 1
    try:
        idle = round((os.cpu_count() or 1) - os.getloadavg()[0] + 1)
    except OSError:  # load average unavailable
        idle = allowed
    return max(1, min(allowed, idle, MAX_WORKERS))


def auto_workers(study_dir: str | os.PathLike) -> int:
    """``idle_cpus()`` for a study of ``PARALLEL_MIN_RUNS`` entries or more, else 1 (no pool)."""
    try:
        entries = len(os.listdir(study_dir))
    except OSError:  # not a directory: load_study says so
        return 1
    return idle_cpus() if entries >= PARALLEL_MIN_RUNS else 1


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes, forked where the platform can.

    A forked worker inherits the imported modules (pandas, matplotlib) and starts at once; a
    spawned one would import them again, which costs about as much as the work it takes over.
    The workers start at the first task: make the pool before loading a study, so that they are
    forked from a small process rather than one holding the study (copy-on-write faults).
    """
    methods = multiprocessing.get_all_start_methods()
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(
        "fork" if "fork" in methods else None))
