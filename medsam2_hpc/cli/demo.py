"""``medsam2-hpc demo`` (and ``make demo``): the whole study, end to end, on generated data.

It is the real pipeline, not a separate script: the ``demo`` study of jobs.yaml goes through the
launcher (local executor by default, or a running Slurm), every task trains into its run
directory, and the collector writes MODEL_COMPARISON.md, the tables and the plots. Data in the
real layouts of its datasets (each dataset's synthetic generator in the registry) is generated
first; SAM2 starts from Meta's Hiera-T checkpoint when ``checkpoints/`` has it, else from random
weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
import time
from pathlib import Path
from typing import IO

from medsam2_hpc.errors import InputError

__all__ = ["register", "run_demo"]

DEMO_STUDY = "demo"
SAM2_TINY = "sam2_hiera_tiny.pt"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the demo study end to end on generated data")
    p.add_argument("--jobs", type=Path, default=None, help="jobs file (default: ./jobs.yaml or the repo's)")
    p.add_argument("--out", type=Path, default=None,
                   help="put data, runs and tables here (default: the demo study's paths in jobs.yaml)")
    p.add_argument("--executor", metavar="NAME", default=None,
                   help="a launcher backend: local (default in jobs.yaml) or slurm (needs a running cluster)")
    p.add_argument("--checkpoints", type=Path, default=Path("checkpoints"),
                   help=f"where to look for {SAM2_TINY} (random SAM2 weights without it)")
    p.set_defaults(func=lambda a: run_demo(a.jobs, a.out, a.executor, a.checkpoints))


def _jobs_file(jobs: Path | None) -> Path:
    if jobs is not None:
        return jobs
    here = Path("jobs.yaml")
    repo = Path(__file__).resolve().parents[2] / "jobs.yaml"
    if here.is_file():
        return here
    if repo.is_file():
        return repo
    raise InputError("--jobs: no jobs.yaml in the current directory or the repository; pass --jobs FILE")


def _stage(n: int, text: str, out: IO[str]) -> None:
    print(f"\n[demo {n}/4] {text}", file=out, flush=True)


def _relocate(study, out: Path | None, checkpoints: Path):  # type: ignore[no-untyped-def]
    """A new Study whose data and runs live under ``out``, using a real Hiera-T checkpoint if present."""
    ckpt = checkpoints / SAM2_TINY
    tasks = []
    for task in study.tasks:
        changes: dict = {}
        if out is not None:
            changes["data_path"] = str(out.resolve() / "data" / Path(task.data_path).name)
            changes["output_root"] = str(out.resolve() / "runs")
        if task.variant == "hiera_t" and ckpt.is_file():  # the SAM2 kinds' tiny variant
            changes["hparams"] = {**task.hparams, "sam_ckpt": str(ckpt.resolve())}
        tasks.append(dataclasses.replace(task, **changes))
    root = Path(tasks[0].output_root) if tasks else study.output_root
    return dataclasses.replace(study, tasks=tuple(tasks), output_root=root)


def _make_data(study, out: IO[str]) -> None:  # type: ignore[no-untyped-def]
    from medsam2_hpc.registry import dataset_kind, load_entry

    seen: set[str] = set()
    for task in study.tasks:
        if task.data_path in seen:
            continue
        seen.add(task.data_path)
        path = Path(task.data_path)
        if path.exists() and any(path.iterdir()):
            print(f"  {task.dataset}: using {path}", file=out)
            continue
        kind = dataset_kind(task.dataset)
        load_entry(kind.synthetic)(path, **{"seed": 0, **kind.demo})
        print(f"  {task.dataset}: generated {path}", file=out)


class _Watcher(threading.Thread):
    """Prints each task's state changes and epoch lines while the executor runs them."""

    def __init__(self, study, out: IO[str], every: float = 2.0) -> None:  # type: ignore[no-untyped-def]
        super().__init__(daemon=True)
        self.study, self.out, self.every = study, out, every
        self.stop = threading.Event()
        self._states: dict[str, str] = {}
        self._offsets: dict[Path, int] = {}

    def poll(self) -> None:
        for task in self.study.tasks:
            state = task.run_dir.status().get("state", "pending")
            if self._states.get(task.task_id) != state:
                self._states[task.task_id] = state
                print(f"  {task.model:8s} {task.variant:12s} {task.dataset:6s} -> {state}",
                      file=self.out, flush=True)
        for log in sorted((self.study.study_dir / ".submitit").glob("*/*_log.err")):
            start = self._offsets.get(log, 0)
            with open(log, "rb") as fh:
                fh.seek(start)
                chunk = fh.read()
            self._offsets[log] = start + len(chunk)
            for line in chunk.decode(errors="replace").replace("\r", "\n").splitlines():
                if line.startswith(("[epoch", "[train]", "[yolo")):
                    print(f"    {line.strip()}", file=self.out, flush=True)

    def run(self) -> None:
        while not self.stop.wait(self.every):
            self.poll()


def _wait_for_queue(study, out: IO[str]) -> None:  # type: ignore[no-untyped-def]
    """Until every task has ended (status asks Slurm, so a job that dies unrecorded ends too), or
    for as long as the study's arrays could need when run one wave after another."""
    from medsam2_hpc.errors import WaitTimeout
    from medsam2_hpc.hpc.status import status_rows

    ids = [t.task_id for t in study.tasks]
    limit_min = 10 + sum(p.time_min * (1 + len(ids) // p.array_parallelism) for p in study.profiles.values())
    deadline = time.monotonic() + limit_min * 60
    print(f"  waiting for {len(ids)} Slurm task(s) to end (at most {limit_min} min)", file=out, flush=True)
    while True:
        waiting = [r for r in status_rows(study.study_dir, ids) if r["state"] not in ("completed", "failed")]
        if not waiting:
            return
        if time.monotonic() > deadline:
            first = waiting[0]
            raise WaitTimeout(f"demo: {len(waiting)} Slurm task(s) still not ended after {limit_min} min "
                              f"(first: {first['task_id']}, {first['state']}, job {first['job']})")
        time.sleep(5)


def run_demo(jobs: Path | None, out_dir: Path | None, executor: str | None, checkpoints: Path,
             out: IO[str] = sys.stdout) -> int:
    from medsam2_hpc import spec
    from medsam2_hpc.hpc import launcher
    from medsam2_hpc.report import collect_study

    t0 = time.perf_counter()
    study = _relocate(spec.load(_jobs_file(jobs), study=DEMO_STUDY), out_dir, checkpoints)
    executor = executor or study.executor
    sam2_init = "Meta's Hiera-T" if (checkpoints / SAM2_TINY).is_file() else "random weights"
    _stage(1, f"data in the real {' / '.join(sorted({t.dataset for t in study.tasks}))} layouts "
              f"(SAM2 from {sam2_init})", out)
    _make_data(study, out)

    _stage(2, f"training {len(study.tasks)} tasks through the launcher ({executor} executor)", out)
    watcher = _Watcher(study, out)
    watcher.start()
    try:
        launch = launcher.submit(study, executor=executor, out=out)
        if executor == "slurm":
            _wait_for_queue(study, out)
    finally:
        watcher.stop.set()
        watcher.join()
        watcher.poll()
    for error in launch.errors:
        print(f"  task failed: {error}", file=out)

    _stage(3, "collecting every run's metrics.json", out)
    report = collect_study(study.study_dir, study.study_dir / "comparison", ("md", "csv", "tex"),
                           with_published=True)
    for warning in report.warnings:
        print(f"  warning: {warning}", file=out)

    _stage(4, "comparison", out)
    print(report.headline_text(), file=out)
    print(f"\nwritten under {report.out_dir}:", file=out)
    for path in sorted(p for p in report.out_dir.rglob("*") if p.is_file()):
        print(f"  {path}", file=out)
    print(f"run directories: {study.study_dir}", file=out)
    print(f"demo finished in {time.perf_counter() - t0:.0f} s", file=out)
    states = [t.run_dir.status().get("state") for t in study.tasks]
    return 0 if all(s == "completed" for s in states) else 1
