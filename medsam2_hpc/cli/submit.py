"""``medsam2-hpc submit | status | cancel | resubmit``: a jobs.yaml study on Slurm (or locally).

argparse here -> the launcher's plain functions (``hpc.launcher``) -> submitit. ``status`` and
``cancel`` also take a study directory (``<output_root>/<study>``), so they work without the
jobs file; they read status.json of each run and the study's submissions.json record.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from medsam2_hpc.errors import InputError

__all__ = ["register"]


def _add_study_args(p: argparse.ArgumentParser, *, executor: bool = True) -> None:
    p.add_argument("--study", help="which study of the jobs file (default: its only or default_study)")
    if executor:
        # Checked against launcher.BACKENDS when used: importing the launcher here (torch) would slow
        # down every command.
        p.add_argument("--executor", metavar="NAME",
                       help="override the file's executor: a launcher backend, e.g. slurm or local")
        p.add_argument("--dry-run", action="store_true",
                       help="print the task table and the sbatch script(s); submit and write nothing")


def _submit(args: argparse.Namespace, states: set[str] | None = None) -> int:
    from medsam2_hpc.hpc.launcher import submit
    from medsam2_hpc.spec import load

    study = load(args.jobs, args.study)
    launch = submit(study, executor=args.executor, dry_run=args.dry_run, states=states)
    for error in launch.errors:
        print(f"task failed: {error}", file=sys.stderr)
    return 1 if launch.errors else 0


def _resubmit(args: argparse.Namespace) -> int:
    if not args.failed:
        raise InputError("resubmit: say which tasks to submit again: --failed")
    return _submit(args, states={"failed"})


def _target(path: str, study: str | None) -> tuple[Path, list[str] | None]:
    """A jobs file (its study's dir and task ids) or a study directory (ids found there)."""
    target = Path(path)
    if target.is_dir():
        return target, None
    if not target.exists():
        raise InputError(f"{path}: neither a jobs file nor a study directory")
    from medsam2_hpc.spec import load

    spec = load(target, study)
    return spec.study_dir, [t.task_id for t in spec.tasks]


def _status(args: argparse.Namespace) -> int:
    from medsam2_hpc.hpc.launcher import status_rows

    study_dir, task_ids = _target(args.target, args.study)
    rows = status_rows(study_dir, task_ids)
    print(f"{'task_id':<48} {'state':<10} {'att':>3}  {'job':<14} {'queue':<10} error")
    for r in rows:
        print(f"{r['task_id']:<48} {r['state']:<10} {r['attempts']:>3}  {r['job'] or '-':<14} "
              f"{r['queue'] or '-':<10} {r['error'] or ''}")
    counts = Counter(r["state"] for r in rows)
    print(f"{study_dir}: {len(rows)} task(s): " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from medsam2_hpc.hpc.launcher import cancel

    study_dir, _ = _target(args.target, args.study)
    cancelled = cancel(study_dir)
    print(f"cancelled {', '.join(cancelled)}" if cancelled else f"{study_dir}: no queued Slurm jobs")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="submit a jobs.yaml study: one Slurm array per resource profile")
    p.add_argument("jobs", help="jobs file (see jobs.yaml)")
    _add_study_args(p)
    p.set_defaults(func=_submit)

    p = sub.add_parser("resubmit", help="submit a study's failed tasks again")
    p.add_argument("jobs", help="jobs file")
    p.add_argument("--failed", action="store_true", help="the tasks whose status.json says failed")
    _add_study_args(p)
    p.set_defaults(func=_resubmit)

    p = sub.add_parser("status", help="per-task state of a study (status.json + squeue)")
    p.add_argument("target", help="jobs file or study directory")
    _add_study_args(p, executor=False)
    p.set_defaults(func=_status)

    p = sub.add_parser("cancel", help="scancel a study's queued Slurm jobs")
    p.add_argument("target", help="jobs file or study directory")
    _add_study_args(p, executor=False)
    p.set_defaults(func=_cancel)
