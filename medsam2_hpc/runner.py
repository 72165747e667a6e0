"""run_task: runs a Task with its model kind's trainer (medsam2_hpc.registry) and keeps the run's status.

Each trainer module exposes ``check(task)`` (validate inputs before anything is written;
raise InputError) and ``train(task, run) -> metrics dict`` (contract.build_metrics).
Trainers are imported lazily: Ultralytics alone takes seconds to import. Checking imports no
torch (a trainer's ``check`` is torch-free): ``submit`` checks every task on a login node.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from .engine.stop import StopRequested, stop_requested
from .errors import InputError
from .jobenv import job_identity
from .precheck import once
from .registry import model_kind
from .task import RunDir, Task

__all__ = ["trainer_for", "check", "run_task", "run_in_foreground"]


def trainer_for(model: str) -> ModuleType:
    return importlib.import_module(model_kind(model).trainer)


def check(task: Task) -> ModuleType:
    """Everything that can be checked before a file is written: the model kind's dataset and prompt,
    then the trainer's own ``check`` (hyper-parameters, data, checkpoints). Returns the trainer."""
    kind = model_kind(task.model)
    kind.check(task)
    world = once(("world_size",), lambda: job_identity().world_size)  # the process's, not the task's
    if world > 1 and not kind.multi_gpu:
        raise InputError(f"model {task.model}: trains in one process, but this job started {world} "
                         "(RANK/WORLD_SIZE or SLURM_NTASKS); use a profile with gpus: 1")
    trainer = trainer_for(task.model)
    trainer.check(task)
    return trainer


def run_task(task: Task, on_start: Callable[[Task], None] | None = None) -> dict[str, Any]:
    """Train and evaluate ``task`` into its run directory; a completed run is not redone.

    Raises InputError before anything is written when the inputs are bad, and
    StopRequested (status 'preempted') when Slurm asked the job to stop: the next attempt
    resumes from ``last.pt``. ``on_start`` is told once the run directory exists.
    """
    run = task.run_dir
    run.claim(task)
    done = run.metrics()
    if done is not None and run.status().get("state") == "completed":
        return done
    trainer = check(task)
    from .engine.distributed import joined  # torch: imported to train, not to check

    with joined() as ident:  # the ranks of a multi-GPU task train together (engine/distributed.py)
        if ident.global_rank != 0:  # rank 0 owns the run's files
            return trainer.train(task, run)
        return _train_as_owner(task, run, trainer, on_start)


def _train_as_owner(task: Task, run: RunDir, trainer: ModuleType,
                    on_start: Callable[[Task], None] | None) -> dict[str, Any]:
    run.prepare(task)
    run.mark_running()
    if on_start is not None:
        on_start(task)
    try:
        metrics = trainer.train(task, run)
    except BaseException as exc:
        # submitit's checkpoint handler may end the process with its own exception after the
        # stop flag is set: that is a preemption too, never a failure.
        if isinstance(exc, StopRequested) or stop_requested():
            run.mark_preempted()
        else:
            run.mark_failed(exc)
        raise
    run.write_metrics(metrics)
    run.mark_completed()
    return metrics


def run_in_foreground(task: Task, prog: str) -> int:
    """What every local front end does (train.py, train_2d.py, train_3d.py, medsam2-hpc train).

    Slurm's signals become a stop request; a stopped run returns EXIT_REQUEUE (75) so a
    host-side wrapper can requeue it, and the summary line is JSON for scripts to read.
    """
    from .engine.stop import install_handlers
    from .errors import EXIT_REQUEUE

    install_handlers()
    try:
        metrics = run_task(task, lambda t: print(f"[{prog}] {t.task_id} -> {t.run_dir.path}", file=sys.stderr,
                                                 flush=True))
    except StopRequested:
        print(f"[{prog}] stopped by signal; rerun the same command to resume from "
              f"{task.run_dir.last_ckpt}", file=sys.stderr)
        return EXIT_REQUEUE
    keys = ("task_id", "dice_mean", "dice_mean_per_slice", "iou_mean", "n_cases")
    print(json.dumps({k: metrics[k] for k in keys if k in metrics}))
    print(f"[{prog}] metrics: {task.run_dir.metrics_json}", file=sys.stderr)
    return 0
