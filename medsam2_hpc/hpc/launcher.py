"""The launcher: a validated Study -> one submitit job array per resource profile.

One code path for every executor; the backends (``slurm``, ``local``, ``debug``) differ only in
small hooks, as submitit's own executors do: which executor to build, which parameters it takes,
the python command (inside the container or not), how tasks are grouped into submissions, what
happens after submitting, what a dry run shows, and how to ask the queue about (or cancel) jobs.
A backend is a :class:`Backend` subclass registered with ``@register_backend``; ``BACKENDS`` is the
one list (jobs.yaml's ``executor``, ``--executor``, ``status`` and ``cancel`` read it).

Submitting is idempotent: tasks with metrics.json are skipped, and so are tasks whose recorded
Slurm job is still in squeue. Each submission is appended to ``<study dir>/submissions.json``
(array job id, profile, its log folder, task id -> element id), which ``status`` and ``cancel`` read.
A submission's batch file, submitit pickles and element logs live in one folder of its own,
``<study dir>/.submitit/<profile>-<YYYYmmdd-HHMMSS>-<hex6>/``; the requeue wrapper beside them.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import submitit
from submitit.slurm.slurm import _make_sbatch_string  # private: why setup.cfg pins submitit <1.6

from .. import checkpoints
from ..atomic import write_json
from ..contract import DIGEST_ENV
from ..errors import InputError, SlurmError
from ..jobenv import GPUS_ENV
from ..options import suggest
from ..precheck import shared_checks
from ..spec import GPU_SBATCH_KEYS, PATH_HPARAMS, Bind, Profile, Study
from ..task import Task
from . import status
from .batch import element_python, submit_array
from .image import read_record
from .queue import queued
from .status import SUBMISSIONS, latest_elements, settle, status_rows, submissions

__all__ = ["BACKENDS", "Backend", "register_backend", "backend_for", "Launch", "plan", "check_tasks",
           "submit", "render_dry_run", "submissions", "status_rows", "cancel"]

SLURM_DEFAULT_MAX_ARRAY_SIZE = 1001
SUBMITIT_DIR = status.SUBMITIT_DIR


# ---------------------------------------------------------------------------------------------
# Backends: the hooks


class Backend:
    """Hooks shared by the executors; subclasses override only what differs."""

    name = "base"
    in_process = False  # runs the tasks in this process: no container, no python argv

    def executor(self, folder: Path, python: str | None, profile: Profile) -> submitit.Executor:
        raise NotImplementedError

    def parameters(self, profile: Profile, job_name: str, *, contained: bool = False) -> dict[str, Any]:
        """The executor's parameters; ``contained``: python runs in the container, under the wrapper."""
        return {}

    def waves(self, tasks: list[Task], profile: Profile) -> list[list[Task]]:
        """One array per profile; executors without arrays throttle by waves instead."""
        return [tasks]

    def map_array(self, executor: submitit.Executor, call: Callable[[Task], Any],
                  tasks: Sequence[Task]) -> list[Any]:
        """Submit one wave: submitit's ``map_array``."""
        return executor.map_array(call, tasks)

    def after_submit(self, jobs: Sequence[Any]) -> list[str]:
        """Return error summaries of finished jobs (backends that wait); Slurm returns at once."""
        return []

    def wrap_python(self, prefix: list[str], folder: Path) -> list[str]:
        """The image runs with --cleanenv: the host wrapper hands it the job's variables (and
        requeues from the host under Slurm, where scontrol is absent inside; hpc/requeue.py)."""
        from .requeue import wrapper_path  # requeue imports torch (engine); status and cancel do not need it

        return [str(wrapper_path(folder)), *prefix] if prefix else prefix

    def prepare(self, folder: Path, argv: list[str] | None) -> None:
        """Write what the jobs need beside the submitit folder (never during a dry run)."""
        from .requeue import wrapper_path, write_helpers

        if argv and argv[0] == str(wrapper_path(folder)):
            write_helpers(folder)

    def dry_run(self, command: str, folder: Path, tasks: Sequence[Task], profile: Profile,
                job_name: str, *, contained: bool = False) -> str:
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

    def parameters(self, profile: Profile, job_name: str, *, contained: bool = False) -> dict[str, Any]:
        from .requeue import SIGNAL_ENV  # requeue imports torch (engine); status and cancel do not need it

        setup = [f"export {GPUS_ENV}={profile.gpus}"] * bool(profile.gpus) + list(profile.setup)
        sbatch = dict(profile.sbatch)
        if contained:  # the wrapper sends the pre-timeout USR2, sparing squashfuse (hpc/requeue.py)
            sbatch.setdefault("signal", f"B:USR2@{profile.signal_delay_s}")
            setup += ["trap '' USR2  # the batch shell survives the signal; the step's wrapper sends it",
                      f"export {SIGNAL_ENV}={profile.signal_delay_s}"]
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
            # device auto must not fall back to the CPU silently where GPUs were asked for
            "setup": setup or None,
            "additional_parameters": sbatch or None,
            # srun opens its output files with truncate by default: append keeps earlier attempts
            "srun_args": ["--open-mode=append"],
        }
        # submitit writes --wckey=submitit unless told None (some sites reject unknown wckeys);
        # a site that wants one sets it under the profile's sbatch:
        return {**{k: v for k, v in params.items() if v is not None}, "wckey": None}

    def waves(self, tasks: list[Task], profile: Profile) -> list[list[Task]]:
        """One array per profile, split where it would pass the cluster's MaxArraySize."""
        step = profile.max_array_size or max_array_size()[0]
        return [tasks[i:i + step] for i in range(0, len(tasks), step)]

    def map_array(self, executor: submitit.Executor, call: Callable[[Task], Any],
                  tasks: Sequence[Task]) -> list[Any]:
        """One batch file per array; each element writes its own pickle (hpc/batch.py)."""
        return submit_array(executor, call, tasks)

    def dry_run(self, command: str, folder: Path, tasks: Sequence[Task], profile: Profile,
                job_name: str, *, contained: bool = False) -> str:
        """One sbatch script per array the submission needs (MaxArraySize)."""
        waves = self.waves(list(tasks), profile)
        scripts = []
        python, entry = command.split(" -u -m submitit.core._submit ", 1)
        batch = element_python(python, folder / "batch-<id>.bin")  # named when the array is submitted
        for i, wave in enumerate(waves):
            count = len(wave) if len(wave) > 1 else None  # submitit sends one task as a plain job
            line = f"{batch} -u -m submitit.core._submit {entry}" if count else command
            script = _make_sbatch_string(command=line, folder=folder, map_count=count,
                                         **self.parameters(profile, job_name, contained=contained))
            scripts.append(f"# array {i + 1} of {len(waves)}: {len(wave)} task(s)\n{script}")
        return "\n".join(scripts)

    def active(self, job_ids: Iterable[str]) -> dict[str, str]:
        """squeue's answer; a failing squeue raises SlurmError (hpc/queue.py), never reads as empty."""
        return {k: v.state for k, v in queued(j.split("_")[0] for j in job_ids).items()}

    def cancel(self, job_ids: Sequence[str]) -> list[str]:
        if not job_ids:
            return []
        if shutil.which("scancel") is None:
            raise InputError("cancel: scancel is not on PATH (not a Slurm login node?)")
        subprocess.run(["scancel", *job_ids], check=True, timeout=60)
        return list(job_ids)


def max_array_size() -> tuple[int, str]:
    """(elements one array may hold, where that came from): MaxArraySize of ``scontrol show
    config`` (indices run from 0 to MaxArraySize - 1), else Slurm's default (a dry run away from
    the cluster; a real submission would then fail at sbatch with Slurm's own message)."""
    return _max_array_size(os.environ.get("SLURM_CONF"), shutil.which("scontrol"))


@functools.cache
def _max_array_size(conf: str | None, scontrol: str | None) -> tuple[int, str]:
    """Asked once per configuration."""
    default = (SLURM_DEFAULT_MAX_ARRAY_SIZE, "Slurm's default; scontrol show config did not answer")
    if scontrol is None:
        return default
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60,
                         check=False)
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", out.stdout, flags=re.MULTILINE)
    return (int(match.group(1)), "scontrol show config") if out.returncode == 0 and match else default


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

    def parameters(self, profile: Profile, job_name: str, *, contained: bool = False) -> dict[str, Any]:
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


def plan(study: Study, executor: str | None = None, *, states: set[str] | None = None) -> Launch:
    """Choose the tasks to submit: not completed, not queued, and (if given) in ``states``."""
    name = executor or study.executor
    backend = backend_for(name)
    latest = latest_elements(study.study_dir)
    if name == "slurm":  # one query; runs whose job ended without a final state become failed first
        slurm = settle(study.study_dir, {t: e for t, e in latest.items() if e["executor"] == name})
        in_queue = {k: v.state for k, v in slurm.items() if v.active}
    else:
        in_queue = backend.active(e["job"] for e in latest.values() if e["executor"] == name)
    to_run: dict[str, list[Task]] = {}
    skipped: dict[str, str] = {}
    present = _listing(study.study_dir)
    for task in study.tasks:
        done, state = False, "pending"
        if task.task_id in present:  # a new run has no directory yet: nothing to read for it
            run = task.run_dir
            run.claim(task)
            done, state = run.metrics_json.exists(), run.status().get("state", "pending")
        element = latest.get(task.task_id, {}).get("job")
        if done:
            skipped[task.task_id] = "completed"
        elif element in in_queue:
            skipped[task.task_id] = f"in queue as {element} ({in_queue[element]})"
        elif states is not None and state not in states:
            skipped[task.task_id] = f"state {state}"
        else:
            to_run.setdefault(task.profile, []).append(task)
    return Launch(study=study, executor=name, to_run=to_run, skipped=skipped)


def _listing(folder: Path) -> set[str]:
    """The names in ``folder`` (none when it does not exist yet): one listing instead of three
    file look-ups for each of thousands of tasks."""
    try:
        return set(os.listdir(folder))
    except FileNotFoundError:
        return set()


# ---------------------------------------------------------------------------------------------
# The python each element runs


def _checkpoint_dir() -> str | None:
    """The host's step of the checkpoint search order that the image cannot see by itself:
    ``$MEDSAM2_CHECKPOINTS``, else this checkout's checkpoints/ when it holds any."""
    if os.environ.get(checkpoints.ENV_VAR):
        return str(Path(os.environ[checkpoints.ENV_VAR]).resolve())
    return str(checkpoints.CHECKOUT_DIR) if any(checkpoints.CHECKOUT_DIR.glob("*.pt")) else None


def _binds(study: Study, tasks: Iterable[Task]) -> list[Bind]:
    """Output root read-write (run dirs, submitit folder, caches); read-only: each data path, the
    folder of each file an hparam names (checkpoints, weights) and the checkpoint directory."""
    root = str(study.output_root)
    binds = [Bind(root, root, "rw")]
    tasks = list(tasks)
    files = {str(Path(t.hparams[k]).parent) for t in tasks for k in PATH_HPARAMS  # not one baked in the image
             if isinstance(t.hparams.get(k), str) and t.hparams[k].startswith("/")
             and Path(t.hparams[k]).parent != checkpoints.BAKED_DIR}
    ckpt = _checkpoint_dir()
    for path in sorted({t.data_path for t in tasks} | files | ({ckpt} if ckpt else set())):
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
    ckpt = _checkpoint_dir()
    record = read_record(container.image)  # the digest metrics.json records from inside the image
    env = {"HOME": str(cache / "home"), **({checkpoints.ENV_VAR: ckpt} if ckpt else {}),
           **({DIGEST_ENV: record.digest} if record else {}), **container.env}
    spec = dataclasses.replace(container, nv=container.nv and profile.gpus > 0, env=env)
    prefix = exec_prefix(spec, gpus=profile.gpus, binds=_binds(study, tasks), cache=cache)
    return backend.wrap_python(prefix, folder) + ["python"]


def _submitit_folder(study: Study) -> Path:
    return study.study_dir / SUBMITIT_DIR


def _logs_folder(study: Study, profile: str) -> Path:
    """A new folder for one profile's submission: its batch files, submitit pickles and the
    elements' logs (``<array>_<index>_0_log.out``). Named before sbatch and made before it, since
    Slurm creates an element's log file but not a missing folder; one folder per element would
    be thousands of mkdirs, made only after sbatch has answered (a race with elements that start)."""
    return _submitit_folder(study) / f"{profile}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def _job_name(study: Study, profile: Profile, tasks: Sequence[Task]) -> str:
    """``<study>-<profile>-<model>`` (models joined by '+' when an array mixes them): what squeue shows."""
    models = "+".join(dict.fromkeys(t.model for t in tasks))
    return f"{study.name}-{profile.name}-{models}"


# ---------------------------------------------------------------------------------------------
# Dry run


def render_dry_run(launch: Launch, out: IO[str]) -> None:
    """The task table and, per profile, the sbatch script (or local command) that would be used."""
    study = launch.study
    print(f"study {study.name}: {len(study.tasks)} tasks, {launch.n_to_run} to submit, "
          f"{len(launch.skipped)} skipped; executor {launch.executor}; output {study.study_dir}", file=out)
    if launch.executor == "slurm" and any(study.profiles[n].max_array_size is None for n in launch.to_run):
        size, source = max_array_size()  # asked only where a profile leaves it to the cluster
        print(f"MaxArraySize {size} ({source}); a profile's max_array_size overrides it", file=out)
    print(f"{'#':>4}  {'task_id':<48} {'profile':<10} {'action'}", file=out)
    for i, task in enumerate(study.tasks):
        action = f"skip: {launch.skipped[task.task_id]}" if task.task_id in launch.skipped else "submit"
        print(f"{i:>4}  {task.task_id:<48} {task.profile:<10} {action}", file=out)
    backend = backend_for(launch.executor)
    folder = _submitit_folder(study) / "<submission>"  # named when submitted (_logs_folder)
    for name, tasks in launch.to_run.items():
        profile = study.profiles[name]
        argv = python_argv(study, profile, tasks, backend, folder.parent)
        python = shlex.join(argv) if argv else shlex.quote(sys.executable)
        command = " ".join([python, "-u -m submitit.core._submit", shlex.quote(str(folder))])
        print(f"\n# ---- profile {name}: {len(tasks)} task(s) ----", file=out)
        print(backend.dry_run(command, folder, tasks, profile, _job_name(study, profile, tasks),
                              contained=argv is not None), file=out)


# ---------------------------------------------------------------------------------------------
# Submit


def _check_device(task: Task, profile: Profile) -> None:
    """A GPU device on a profile that asks for no GPU would wait in the queue to fail."""
    device = str(task.hparams.get("device", "auto"))
    asks_gpu = profile.gpus > 0 or any(k.replace("-", "_") in GPU_SBATCH_KEYS for k in profile.sbatch)
    if not asks_gpu and (device.startswith("cuda") or device.isdigit()):
        raise InputError(f"hparams.device: {device!r} needs a GPU, but profile {profile.name} has gpus: 0 "
                         "(set gpus, or device: cpu)")


def check_tasks(study: Study, tasks: Sequence[Task]) -> None:
    """Everything a job would only discover after the queue wait, found before it.

    Runs every task's trainer ``check`` (hyper-parameters, variant, data, checkpoint) with the
    expensive parts shared between tasks (:mod:`medsam2_hpc.precheck`), and checks the image;
    a checkpoint baked into the image counts as found when the image's record lists it.
    All problems are reported at once, one entry per experiment and message with the first
    task id and how many more share it.

    Raises:
        InputError: ``study <name>: N problem(s): <experiment (line)>: task <id>: <message>; ...``
    """
    from ..runner import check

    found: dict[tuple[str, str], list[str]] = {}
    record = read_record(study.container.image) if study.container.enabled else None
    with shared_checks(), checkpoints.image_holds(record.checkpoints if record else None):
        for task in tasks:
            try:
                _check_device(task, study.profiles[task.profile])
                check(task)
            except InputError as exc:
                key = (study.origins.get(task.task_id, f"profile {task.profile}"), str(exc))
                found.setdefault(key, []).append(task.task_id)
    problems = [f"{origin}: task {ids[0]}" + (f" (and {len(ids) - 1} more)" if len(ids) > 1 else "")
                + f": {message}" for (origin, message), ids in found.items()]
    image = study.container.image
    if study.container.enabled and image and "://" not in image and not Path(image).is_file():
        problems.append(f"container.image: {image} does not exist (build it: medsam2-hpc container build)")
    if problems:
        head = f"study {study.name}: " + (f"{len(problems)} problems: " if len(problems) > 1 else "")
        raise InputError(head + "; ".join(problems))


def _record(study: Study, executor: str, profile: str, logs: Path, jobs: Sequence[Any],
            tasks: Sequence[Task]) -> str:
    job_ids = [str(j.job_id) for j in jobs]
    array = job_ids[0].split("_")[0] if job_ids else ""
    entry = {"job_id": array, "executor": executor, "profile": profile, "logs": logs.name,
             "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
             "tasks": {t.task_id: j for t, j in zip(tasks, job_ids, strict=True)}}
    write_json(study.study_dir / SUBMISSIONS, {"submissions": [*submissions(study.study_dir), entry]})
    return array


def collect_argv(study: Study) -> list[str]:
    """``medsam2-hpc collect <study dir>`` as the jobs run it (in the image when there is one)."""
    python = [sys.executable]
    if study.container.enabled:
        from .containers import exec_prefix

        cache = study.output_root / ".cache"
        spec = dataclasses.replace(study.container, nv=False,
                                   env={"HOME": str(cache / "home"), **study.container.env})
        root = str(study.output_root)
        python = exec_prefix(spec, gpus=0, binds=[Bind(root, root, "rw")], cache=cache) + ["python"]
    return [*python, "-m", "medsam2_hpc.cli", "collect", str(study.study_dir)]


def _queue_collect(study: Study, arrays: Sequence[str], out: IO[str]) -> str:
    """One CPU job that runs the collector once every array has ended (``afterany``)."""
    account = next((p.account for p in study.profiles.values() if p.account), None)
    argv = ["sbatch", "--parsable", f"--job-name={study.name}-collect",
            f"--dependency=afterany:{':'.join(arrays)}", "--ntasks=1", "--cpus-per-task=1", "--time=60",
            f"--output={study.study_dir / SUBMITIT_DIR / 'collect-%j.out'}",
            *([f"--account={account}"] if account else []), f"--wrap={shlex.join(collect_argv(study))}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise SlurmError(f"sbatch (collect job) failed (exit {done.returncode}): "
                         f"{(done.stderr.strip().splitlines() or ['no message'])[-1]}")
    job = done.stdout.strip().split(";")[0]
    print(f"collect: job {job} runs medsam2-hpc collect after {', '.join(arrays)}", file=out)
    return job


def submit(study: Study, *, executor: str | None = None, dry_run: bool = False,
           states: set[str] | None = None, fn: Callable[[Task], Any] | None = None,
           collect: bool = False, out: IO[str] | None = None) -> Launch:
    """Check, then submit the study's pending tasks: one ``map_array`` per profile (per wave for local).

    The checks run for a dry run too; a problem raises InputError before anything is written.
    """
    out = out or sys.stdout  # looked up per call: the CLI's output can then be captured
    launch = plan(study, executor, states=states)
    check_tasks(study, [t for tasks in launch.to_run.values() for t in tasks])
    if dry_run:
        render_dry_run(launch, out)
        return launch
    if not launch.n_to_run:
        print(f"study {study.name}: nothing to submit ({len(launch.skipped)} task(s) skipped)", file=out)
        return launch
    backend = backend_for(launch.executor)
    folder = _submitit_folder(study)
    executors = []  # every profile's first: one refused (no sbatch, nodes > 1 locally) writes nothing
    for name, tasks in launch.to_run.items():
        profile = study.profiles[name]
        argv = None if backend.in_process else python_argv(study, profile, tasks, backend, folder)
        logs = _logs_folder(study, name)
        ex = backend.executor(logs, shlex.join(argv) if argv else None, profile)
        ex.update_parameters(**backend.parameters(profile, _job_name(study, profile, tasks),
                                                  contained=argv is not None))
        executors.append((name, tasks, argv, logs, ex))
    if backend.in_process and study.container.enabled:
        print(f"note: the {backend.name} executor runs in this process; the container is not used", file=out)
    elif study.container.enabled:
        (study.output_root / ".cache" / "home").mkdir(parents=True, exist_ok=True)  # --home must exist
    from .requeue import TaskCall

    call = TaskCall(fn)
    for name, tasks, argv, logs, ex in executors:
        backend.prepare(folder, argv)
        logs.mkdir(parents=True, exist_ok=True)  # submitit's LocalExecutor makes its folder itself
        for wave in backend.waves(tasks, study.profiles[name]):
            jobs = backend.map_array(ex, call, wave)
            array = _record(study, backend.name, name, logs, jobs, wave)
            launch.job_ids.append(array)
            print(f"profile {name}: submitted {len(wave)} task(s) as {backend.name} job {array}", file=out)
            launch.errors += backend.after_submit(jobs)
    if collect and backend.name == "slurm" and launch.job_ids:
        _queue_collect(study, launch.job_ids, out)
    elif collect:
        from ..report.build import collect_study  # the local executors have finished by now

        print(collect_study(study.study_dir), file=out)
    return launch


# ---------------------------------------------------------------------------------------------
# Status and cancel


def cancel(study_dir: Path) -> list[str]:
    """Cancel the study's jobs (Slurm arrays) that still have elements in the queue."""
    latest = latest_elements(Path(study_dir))
    cancelled: list[str] = []
    for name in sorted({e["executor"] for e in latest.values()} & set(BACKENDS)):
        backend = BACKENDS[name]()
        in_queue = backend.active(e["job"] for e in latest.values() if e["executor"] == name)
        cancelled += backend.cancel(sorted({job.split("_")[0] for job in in_queue}))
    return cancelled
