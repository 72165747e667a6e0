"""``medsam2-hpc submit | status | cancel | resubmit``: a jobs.yaml study on Slurm (or locally).

argparse here -> the launcher's plain functions (``hpc.launcher``) -> submitit. ``status`` and
``cancel`` also take a study directory (``<output_root>/<study>``), so they work without the
jobs file; they read status.json of each run and the study's submissions.json record.
``status --watch`` and ``submit --wait`` block, with a timeout, saying what they wait for.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

from medsam2_hpc.errors import InputError, WaitTimeout

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
        p.add_argument("--set", action="append", default=[], metavar="profiles.NAME.KEY=VALUE",
                       help="change a resource profile without editing the file, e.g. "
                            "--set profiles.gpu.partition=a100 --set profiles.gpu.account=proj")


def _add_wait_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--timeout", type=float, default=24 * 60, metavar="MIN",
                   help=f"give up {what} after MIN minutes (exit 1; default: 1440)")
    p.add_argument("--interval", type=float, default=30.0, metavar="S", help="seconds between looks")


def _submit(args: argparse.Namespace, states: set[str] | None = None) -> int:
    from medsam2_hpc.hpc.launcher import submit
    from medsam2_hpc.spec import load

    study = load(args.jobs, args.study, args.set)
    launch = submit(study, executor=args.executor, dry_run=args.dry_run, states=states,
                    collect=getattr(args, "collect", False))
    for error in launch.errors:
        print(f"task failed: {error}", file=sys.stderr)
    if getattr(args, "wait", False) and launch.job_ids and not args.dry_run:
        ids = [t.task_id for tasks in launch.to_run.values() for t in tasks]
        rows = _watch(study.study_dir, ids, args.timeout, args.interval, quiet=True)
        return 0 if rows and all(r["state"] == "completed" for r in rows) else 1
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


def _print_rows(study_dir: Path, rows: list[dict]) -> None:
    print(f"{'task_id':<48} {'state':<10} {'att':>3}  {'job':<14} {'slurm':<13} {'elapsed':>10}  "
          f"{'reason':<14} log | error")
    for r in rows:
        print(f"{r['task_id']:<48} {r['state']:<10} {r['attempts']:>3}  {r['job'] or '-':<14} "
              f"{r['slurm'] or '-':<13} {r['elapsed'] or '-':>10}  {r['reason'] or '-':<14} "
              f"{r['log'] or '-'} | {r['error'] or ''}")
    counts = Counter(r["state"] for r in rows)
    print(f"{study_dir}: {len(rows)} task(s): " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


def _watch(study_dir: Path, task_ids: list[str] | None, timeout_min: float, interval: float,
           quiet: bool = False) -> list[dict]:
    """Look every ``interval`` s until each submitted task is completed or failed, or time is up."""
    from medsam2_hpc.hpc.status import status_rows

    deadline = time.monotonic() + timeout_min * 60
    while True:
        rows = status_rows(study_dir, task_ids)
        waiting = [r for r in rows if r["job"] and r["state"] not in ("completed", "failed")]
        if not quiet or not waiting:
            _print_rows(study_dir, rows)
        if not waiting:
            return rows
        if time.monotonic() + interval > deadline:
            raise WaitTimeout(f"still waiting for {len(waiting)} task(s) of {study_dir} to finish "
                               f"after {timeout_min:g} min (first: {waiting[0]['task_id']}, "
                               f"{waiting[0]['state']}); they keep running: look again with "
                               f"medsam2-hpc status")
        print(f"waiting for {len(waiting)} task(s) to finish (next look in {interval:g} s, "
              f"gives up in {(deadline - time.monotonic()) / 60:.0f} min)", file=sys.stderr, flush=True)
        time.sleep(interval)


def _status(args: argparse.Namespace) -> int:
    from medsam2_hpc.hpc.status import status_rows

    study_dir, task_ids = _target(args.target, args.study)
    if args.watch:
        _watch(study_dir, task_ids, args.timeout, args.interval)
        return 0
    _print_rows(study_dir, status_rows(study_dir, task_ids))
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
    p.add_argument("--wait", action="store_true", help="block until every submitted task has ended "
                                                       "(exit 0 only if all completed)")
    p.add_argument("--collect", action="store_true",
                   help="also queue a CPU job that runs `medsam2-hpc collect` after the arrays end")
    _add_wait_args(p, "--wait")
    p.set_defaults(func=_submit)

    p = sub.add_parser("resubmit", help="submit a study's failed tasks again")
    p.add_argument("jobs", help="jobs file")
    p.add_argument("--failed", action="store_true", help="the tasks whose status.json says failed")
    _add_study_args(p)
    p.set_defaults(func=_resubmit)

    p = sub.add_parser("status", help="per-task state of a study (status.json + squeue + sacct)")
    p.add_argument("target", help="jobs file or study directory")
    _add_study_args(p, executor=False)
    p.add_argument("--watch", action="store_true", help="look again until every submitted task has ended")
    _add_wait_args(p, "--watch")
    p.set_defaults(func=_status)

    p = sub.add_parser("cancel", help="scancel a study's queued Slurm jobs")
    p.add_argument("target", help="jobs file or study directory")
    _add_study_args(p, executor=False)
    p.set_defaults(func=_cancel)
