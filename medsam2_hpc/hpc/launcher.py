"""The launcher: a validated Study -> one submitit job array per resource profile.

One code path for every executor; the backends (``slurm``, ``local``, ``debug``) differ only in
small hooks, as submitit's own executors do: which executor to build, which parameters it takes,
the python command (inside the container or not), how tasks are grouped into submissions, what
happens after submitting, what a dry run shows, and how to ask the queue about (or cancel) jobs.
A backend is a :class:`Backend` subclass registered with ``@register_backend``; ``BACKENDS`` is the
one list (jobs.yaml's ``executor``, ``--executor``, ``status`` and ``cancel`` read it).

Submitting is idempotent: tasks with metrics.json are skipped, and so are tasks whose recorded
Slurm job is still in squeue. Each submission is appended to ``<study dir>/submissions.json``
(array job id, profile, task id -> element id), which ``status`` and ``cancel`` read.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import submitit
from submitit.slurm.slurm import _make_sbatch_string

from ..atomic import read_json, write_json
from ..errors import InputError
from ..options import suggest
from ..spec import Bind, Profile, Study
from ..task import RunDir, Task
from .requeue import TaskCall, wrapper_path, write_helpers

__all__ = ["BACKENDS", "Backend", "register_backend", "backend_for", "Launch", "plan", "submit",
           "render_dry_run", "submissions", "status_rows", "cancel"]

SUBMISSIONS = "submissions.json"
SUBMITIT_DIR = ".submitit"


# ---------------------------------------------------------------------------------------------
# Backends: the hooks


class Backend:
    """Hooks shared by the executors; subclasses override only what differs."""

    name = "base"
    in_process = False  # runs the tasks in this process: no container, no python argv

    def executor(self, folder: Path, python: str | None, profile: Profile) -> submitit.Executor:
        raise NotImplementedError

    def parameters(self, profile: Profile, job_name: str) -> dict[str, Any]:
        return {}

    def waves(self, tasks: list[Task], profile: Profile) -> list[list[Task]]:
        """One array per profile; executors without arrays throttle by waves instead."""
        return [tasks]

    def after_submit(self, jobs: Sequence[Any]) -> list[str]:
        """Return error summaries of finished jobs (backends that wait); Slurm returns at once."""
        return []

    def wrap_python(self, prefix: list[str], folder: Path) -> list[str]:
        return prefix

    def prepare(self, folder: Path, argv: list[str] | None) -> None:
        """Write what the jobs need beside the submitit folder (never during a dry run)."""

    def dry_run(self, command: str, folder: Path, tasks: Sequence[Task], profile: Profile,
                job_name: str) -> str:
        """What a dry run prints for one profile's submission."""
        waves = len(self.waves(list(tasks), profile))
        return (f"# {self.name} executor: {len(tasks)} process(es) in {waves} wave(s), "
                f"time limit {profile.time_min} min\n{command}")

    def active(self, job_ids: Iterable[str]) -> dict[str, str]:
        """Element id -> queue state for jobs still queued or running; {} when unknown."""
        return {}

    def cancel(self, job_ids: Sequence[str]) -> list[str]:
        return []


BACKENDS: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator: add a backend to ``BACKENDS`` under its ``name``."""
    if cls.name in BACKENDS:
        raise ValueError(f"launcher backend {cls.name!r} is registered twice")
    BACKENDS[cls.name] = cls
    return cls


def backend_for(name: str) -> Backend:
    """A new backend ``name``, or InputError naming ``--executor`` with the near miss."""
    if name not in BACKENDS:
        raise InputError(f"--executor {name!r} is not one of {', '.join(BACKENDS)}{suggest(name, BACKENDS)}")
    return BACKENDS[name]()


@register_backend
class SlurmBackend(Backend):
    name = "slurm"

    def executor(self, folder: Path, python: str | None, profile: Profile) -> submitit.Executor:
        if shutil.which("sbatch") is None or shutil.which("srun") is None:
            raise InputError("--executor slurm: sbatch/srun are not on PATH (not a Slurm login node?); "
                             "use --executor local, or --dry-run to see the scripts")
        return submitit.SlurmExecutor(folder=folder, max_num_timeout=profile.max_requeues, python=python)

    def parameters(self, profile: Profile, job_name: str) -> dict[str, Any]:
        params: dict[str, Any] = {
            "job_name": job_name,
            "partition": profile.partition,
            "account": profile.account,
            "qos": profile.qos,
            "time": profile.time_min,
            "nodes": profile.nodes,
            "ntasks_per_node": profile.ntasks_per_node,
            "cpus_per_task": profile.cpus,
            "gpus_per_node": profile.gpus or None,
            "mem": _mem(profile.mem_gb),
            "constraint": profile.constraint,
            "array_parallelism": profile.array_parallelism,
            "signal_delay_s": profile.signal_delay_s,
            "setup": list(profile.setup) or None,
            "additional_parameters": dict(profile.sbatch) or None,
            # srun opens its output files with truncate by default: append keeps earlier attempts
            "srun_args": ["--open-mode=append"],
        }
        return {k: v for k, v in params.items() if v is not None}

    def dry_run(self, command: str, folder: Path, tasks: Sequence[Task], profile: Profile,
                job_name: str) -> str:
        count = len(tasks) if len(tasks) > 1 else None  # submitit sends one task as a plain job
        return _make_sbatch_string(command=command, folder=folder, map_count=count,
                                   **self.parameters(profile, job_name))

    def wrap_python(self, prefix: list[str], folder: Path) -> list[str]:
        # scontrol is absent inside the image: requeue from the host (see hpc/requeue.py)
        return [str(wrapper_path(folder)), *prefix] if prefix else prefix

    def prepare(self, folder: Path, argv: list[str] | None) -> None:
        if argv and argv[0] == str(wrapper_path(folder)):
            write_helpers(folder)

    def active(self, job_ids: Iterable[str]) -> dict[str, str]:
        arrays = sorted({j.split("_")[0] for j in job_ids})
        if not arrays or shutil.which("squeue") is None:
            return {}
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(arrays)],
                             capture_output=True, text=True, timeout=60, check=False)
        if out.returncode != 0:  # finished jobs have left squeue (and sacct may not exist)
            return {}
        return dict(line.split("|", 1) for line in out.stdout.splitlines() if "|" in line)

    def cancel(self, job_ids: Sequence[str]) -> list[str]:
        if not job_ids:
            return []
        if shutil.which("scancel") is None:
            raise InputError("cancel: scancel is not on PATH (not a Slurm login node?)")
        subprocess.run(["scancel", *job_ids], check=True, timeout=60)
        return list(job_ids)


def _mem(gb: float | None) -> str | None:
    if gb is None:
        return None
    return f"{int(gb)}G" if float(gb).is_integer() else f"{max(1, round(gb * 1024))}M"


@register_backend
class LocalBackend(Backend):
    name = "local"

    def executor(self, folder: Path, python: str | None, profile: Profile) -> submitit.Executor:
        if profile.nodes > 1:
            raise InputError(f"profiles.{profile.name}.nodes: the local executor runs on one node")
        return submitit.LocalExecutor(folder=folder, max_num_timeout=profile.max_requeues, python=python)

    def parameters(self, profile: Profile, job_name: str) -> dict[str, Any]:
        params = {"timeout_min": profile.time_min, "gpus_per_node": profile.gpus,
                  "tasks_per_node": profile.ntasks_per_node, "signal_delay_s": profile.signal_delay_s}
        return {**params, "setup": list(profile.setup)} if profile.setup else params

    def waves(self, tasks: list[Task], profile: Profile) -> list[list[Task]]:
        """Local processes have no array throttle: run ``array_parallelism`` at a time."""
        step = profile.array_parallelism
        return [tasks[i:i + step] for i in range(0, len(tasks), step)]

    def after_submit(self, jobs: Sequence[Any]) -> list[str]:
        errors = [job.exception() for job in jobs]  # waits for each process
        return [_last_line(e) for e in errors if e is not None]


@register_backend
class DebugBackend(Backend):
    """Runs the tasks in this process, one after the other (no container, no signals)."""

    name = "debug"
    in_process = True

    def executor(self, folder: Path, python: str | None, profile: Profile) -> submitit.Executor:
        return submitit.DebugExecutor(folder=folder)

    def after_submit(self, jobs: Sequence[Any]) -> list[str]:
        # exception() runs the task; result() would open pdb on a failure
        errors = [job.exception() for job in jobs]
        return [f"{type(e).__name__}: {_last_line(e)}" for e in errors if e is not None]



def _last_line(exc: BaseException) -> str:
    """The line of an exception that names the error (submitit wraps the job's traceback)."""
    lines = [ln for ln in str(exc).splitlines() if ln.strip() and not set(ln.strip()) <= {"-"}]
    tail = [ln for ln in lines if not ln.startswith((" ", "Traceback", "You can check", "or at paths"))]
    return (tail[-1] if tail else (lines[-1] if lines else type(exc).__name__)).strip()


# ---------------------------------------------------------------------------------------------
# Planning


@dataclass
class Launch:
    """What a submit call decided and did."""

    study: Study
    executor: str
    to_run: dict[str, list[Task]]  # profile -> tasks
    skipped: dict[str, str]  # task id -> reason
    job_ids: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def n_to_run(self) -> int:
        return sum(len(t) for t in self.to_run.values())


def submissions(study_dir: Path) -> list[dict[str, Any]]:
    path = Path(study_dir) / SUBMISSIONS
    if not path.exists():
        return []
    try:
        return list(read_json(path)["submissions"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: unreadable submissions record ({exc})") from exc


def _latest_elements(study_dir: Path) -> dict[str, dict[str, str]]:
    """task id -> {'job': element id, 'executor': name} of its latest submission."""
    out: dict[str, dict[str, str]] = {}
    for sub in submissions(study_dir):
        for task_id, element in sub.get("tasks", {}).items():
            out[task_id] = {"job": str(element), "executor": sub.get("executor", "")}
    return out


def plan(study: Study, executor: str | None = None, *, states: set[str] | None = None) -> Launch:
    """Choose the tasks to submit: not completed, not queued, and (if given) in ``states``."""
    name = executor or study.executor
    backend = backend_for(name)
    latest = _latest_elements(study.study_dir)
    queued = backend.active(e["job"] for e in latest.values() if e["executor"] == name)
    to_run: dict[str, list[Task]] = {}
    skipped: dict[str, str] = {}
    for task in study.tasks:
        run = task.run_dir
        run.claim(task)
        element = latest.get(task.task_id, {}).get("job")
        state = run.status().get("state", "pending")
        if run.metrics_json.exists():
            skipped[task.task_id] = "completed"
        elif element in queued:
            skipped[task.task_id] = f"in queue as {element} ({queued[element]})"
        elif states is not None and state not in states:
            skipped[task.task_id] = f"state {state}"
        else:
            to_run.setdefault(task.profile, []).append(task)
    return Launch(study=study, executor=name, to_run=to_run, skipped=skipped)


# ---------------------------------------------------------------------------------------------
# The python each element runs


def _binds(study: Study, tasks: Iterable[Task]) -> list[Bind]:
    """Output root read-write (run dirs, submitit folder, caches); each data path read-only."""
    root = str(study.output_root)
    binds = [Bind(root, root, "rw")]
    for path in sorted({t.data_path for t in tasks}):
        if not (path + os.sep).startswith(root + os.sep):
            binds.append(Bind(path, path, "ro"))
    return binds


def python_argv(study: Study, profile: Profile, tasks: Sequence[Task], backend: Backend,
                folder: Path) -> list[str] | None:
    """argv the executor runs python with; None: this interpreter, on the host."""
    container = study.container
    if not container.enabled:
        return None
    from .containers import exec_prefix

    cache = study.output_root / ".cache"
    spec = dataclasses.replace(container, nv=container.nv and profile.gpus > 0,
                               env={"HOME": str(cache / "home"), **container.env})
    prefix = exec_prefix(spec, gpus=profile.gpus, binds=_binds(study, tasks), cache=cache)
    return backend.wrap_python(prefix, folder) + ["python"]


def _submitit_folder(study: Study) -> Path:
    return study.study_dir / SUBMITIT_DIR


def _job_name(study: Study, profile: Profile) -> str:
    return f"{study.name}-{profile.name}"


# ---------------------------------------------------------------------------------------------
# Dry run


def render_dry_run(launch: Launch, out: IO[str]) -> None:
    """The task table and, per profile, the sbatch script (or local command) that would be used."""
    study = launch.study
    print(f"study {study.name}: {len(study.tasks)} tasks, {launch.n_to_run} to submit, "
          f"{len(launch.skipped)} skipped; executor {launch.executor}; output {study.study_dir}", file=out)
    print(f"{'#':>4}  {'task_id':<48} {'profile':<10} {'action'}", file=out)
    for i, task in enumerate(study.tasks):
        action = f"skip: {launch.skipped[task.task_id]}" if task.task_id in launch.skipped else "submit"
        print(f"{i:>4}  {task.task_id:<48} {task.profile:<10} {action}", file=out)
    backend = backend_for(launch.executor)
    folder = _submitit_folder(study) / "%j"
    for name, tasks in launch.to_run.items():
        profile = study.profiles[name]
        argv = python_argv(study, profile, tasks, backend, folder.parent)
        python = shlex.join(argv) if argv else shlex.quote(sys.executable)
        command = " ".join([python, "-u -m submitit.core._submit", shlex.quote(str(folder))])
        print(f"\n# ---- profile {name}: {len(tasks)} task(s) ----", file=out)
        print(backend.dry_run(command, folder, tasks, profile, _job_name(study, profile)), file=out)


# ---------------------------------------------------------------------------------------------
# Submit


def _check_inputs(study: Study, tasks: Iterable[Task]) -> None:
    """What a job would only discover after queueing: missing data or image."""
    missing = sorted({t.data_path for t in tasks if not Path(t.data_path).exists()})
    if missing:
        raise InputError(f"study {study.name}: data_path {missing[0]} does not exist"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    image = study.container.image
    if study.container.enabled and image and "://" not in image and not Path(image).is_file():
        raise InputError(f"container.image: {image} does not exist (build it: medsam2-hpc container build)")


def _record(study: Study, executor: str, profile: str, jobs: Sequence[Any], tasks: Sequence[Task]) -> str:
    job_ids = [str(j.job_id) for j in jobs]
    array = job_ids[0].split("_")[0] if job_ids else ""
    entry = {"job_id": array, "executor": executor, "profile": profile,
             "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
             "tasks": {t.task_id: j for t, j in zip(tasks, job_ids, strict=True)}}
    write_json(study.study_dir / SUBMISSIONS, {"submissions": [*submissions(study.study_dir), entry]})
    return array


def submit(study: Study, *, executor: str | None = None, dry_run: bool = False,
           states: set[str] | None = None, fn: Callable[[Task], Any] | None = None,
           out: IO[str] = sys.stdout) -> Launch:
    """Submit the study's pending tasks: one ``map_array`` per profile (per wave for local)."""
    launch = plan(study, executor, states=states)
    if dry_run:
        render_dry_run(launch, out)
        return launch
    if not launch.n_to_run:
        print(f"study {study.name}: nothing to submit ({len(launch.skipped)} task(s) skipped)", file=out)
        return launch
    _check_inputs(study, (t for tasks in launch.to_run.values() for t in tasks))
    backend = backend_for(launch.executor)
    folder = _submitit_folder(study)
    if backend.in_process and study.container.enabled:
        print(f"note: the {backend.name} executor runs in this process; the container is not used", file=out)
    elif study.container.enabled:
        (study.output_root / ".cache" / "home").mkdir(parents=True, exist_ok=True)  # --home must exist
    call = TaskCall(fn)
    for name, tasks in launch.to_run.items():
        profile = study.profiles[name]
        argv = None if backend.in_process else python_argv(study, profile, tasks, backend, folder)
        backend.prepare(folder, argv)
        ex = backend.executor(folder / "%j", shlex.join(argv) if argv else None, profile)
        ex.update_parameters(**backend.parameters(profile, _job_name(study, profile)))
        for wave in backend.waves(tasks, profile):
            jobs = ex.map_array(call, wave)
            array = _record(study, backend.name, name, jobs, wave)
            launch.job_ids.append(array)
            print(f"profile {name}: submitted {len(wave)} task(s) as {backend.name} job {array}", file=out)
            launch.errors += backend.after_submit(jobs)
    return launch


# ---------------------------------------------------------------------------------------------
# Status and cancel


def status_rows(study_dir: Path, task_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Per task: state and attempts from status.json, element id and queue state from squeue."""
    study_dir = Path(study_dir)
    latest = _latest_elements(study_dir)
    if task_ids is None:
        found = {p.parent.name for p in study_dir.glob("*/status.json")}
        found |= {p.parent.name for p in study_dir.glob("*/task.yaml")}
        task_ids = sorted(found | set(latest))
    queue = _queued(latest)
    rows = []
    for task_id in task_ids:
        status = RunDir(study_dir / task_id).status()
        job = latest.get(task_id, {}).get("job")
        error = (status.get("error") or "").strip().splitlines()
        rows.append({"task_id": task_id, "state": status.get("state", "pending"),
                     "attempts": int(status.get("attempts", 0)), "job": job,
                     "queue": queue.get(job or "", ""), "error": error[-1] if error else None})
    return rows


def _queued(latest: dict[str, dict[str, str]]) -> dict[str, str]:
    """Element id -> queue state, asked of each backend the study's submissions used."""
    queue: dict[str, str] = {}
    for name in sorted({e["executor"] for e in latest.values()} & set(BACKENDS)):
        queue.update(BACKENDS[name]().active(e["job"] for e in latest.values() if e["executor"] == name))
    return queue


def cancel(study_dir: Path) -> list[str]:
    """Cancel the study's jobs (Slurm arrays) that still have elements in the queue."""
    latest = _latest_elements(Path(study_dir))
    cancelled: list[str] = []
    for name in sorted({e["executor"] for e in latest.values()} & set(BACKENDS)):
        backend = BACKENDS[name]()
        queued = backend.active(e["job"] for e in latest.values() if e["executor"] == name)
        cancelled += backend.cancel(sorted({job.split("_")[0] for job in queued}))
    return cancelled
