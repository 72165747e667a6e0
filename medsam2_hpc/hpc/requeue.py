"""Preemption and time limits: the task callable submitit checkpoints, and requeue from containers.

How a task survives a preemption or the pre-timeout ``USR2`` (``--signal=USR2@<signal_delay_s>``):

1. submitit's signal handler (global rank 0) calls :meth:`TaskCall.checkpoint`. It raises the
   engine's stop flag and returns a ``DelayedSubmission`` of a fresh ``TaskCall`` for the same
   :class:`~medsam2_hpc.task.Task`; submitit pickles it over the job's submitted pickle, runs
   ``scontrol requeue <job>`` and exits. Nothing is saved in the handler: the training loop writes
   ``checkpoints/last.pt`` (atomically) after every epoch, so the next attempt loses at most the
   unfinished epoch, and a kill in the middle of a save keeps the previous file.
2. The exit unwinds through ``run_task``; :meth:`TaskCall.__call__` sees the stop flag and leaves
   status.json at ``preempted`` (not ``failed``).
3. The requeued attempt runs the same task id, hence the same run directory: ``run_task`` counts
   the attempt in status.json and the trainer resumes from ``last.pt``. ``metrics.json`` is
   written once, at the end; an attempt that finds it returns it without training again.
   Time-limit requeues are capped by submitit's ``max_num_timeout`` (the profile's
   ``max_requeues``): at the signal after the last allowed requeue submitit still calls
   ``checkpoint()`` but then raises ``UncompletedJobError`` instead of requeueing, and the task
   is marked ``failed`` with :data:`TIME_LIMIT_REASON` (``resubmit --failed`` picks it up).
   Preemptions are not capped.

Inside a container ``scontrol`` is absent, so step 1's requeue would fail (submitit issue 1601,
pyxis issue 129). Binding the host's scontrol, libslurm, slurm.conf and munge socket into the
image is fragile (library versions must match the host's). Instead the job step runs under a
small host-side bash wrapper (:data:`HOST_WRAPPER`), and the container gets a stand-in
``scontrol`` (:data:`SCONTROL_SHIM`) that only records "requeue <job>" in a marker file on the
shared file system. When the container exits, the wrapper, which runs on the host where the real
scontrol is, performs the requeue. Both scripts are written into the study's submitit folder
(shared storage, bound into the container) at submission; a job whose python runs on the host
(runtime ``none``) needs neither.

The pre-timeout signal, in a container: Slurm's ``--signal=USR2@N`` goes to every process of the
step. An unprivileged Apptainer (user namespaces, no setuid: the common set-up on clusters)
serves the image through a ``squashfuse`` process in that step; USR2 kills it, and the python
inside then dies of SIGBUS on its next read from the image, before it can requeue. So for a
containerised job the launcher asks Slurm to signal the batch shell only (``B:USR2@N``, ignored
there), and the wrapper sends the signal itself: it reads the job's end time from ``squeue``
(again each minute, so a changed time limit or a requeue is followed) and, ``N`` seconds before
it (:data:`SIGNAL_ENV`), signals its own child, the Apptainer starter, which forwards it to the
python in the container. squashfuse is never signalled. ``scancel --signal=USR2`` by hand would
still reach squashfuse: to test a requeue, signal the wrapper's child instead.

The image runs under ``exec --cleanenv`` (a host ``PYTHONPATH`` must not reach the image's
python), so values known at submission go in as ``--env`` (hpc/containers.py) and the wrapper
hands over, at run time, exactly the host variables of :data:`PASS_ENV` (as ``APPTAINERENV_*``,
which --cleanenv keeps). Under submitit's local executor the wrapper does only that and then
becomes the runtime (``exec``), so the executor's signals reach it.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from submitit.core.utils import UncompletedJobError
from submitit.helpers import Checkpointable, DelayedSubmission

from ..atomic import write_text
from ..engine.stop import clear_stop, request_stop, stop_requested
from ..jobenv import job_identity
from ..task import RunDir, Task

__all__ = ["TaskCall", "TIME_LIMIT_REASON", "PASS_ENV", "HOST_WRAPPER", "SCONTROL_SHIM", "MARKER_ENV",
           "SHIM_ENV", "SIGNAL_ENV", "wrapper_path", "write_helpers"]

MARKER_ENV = "MEDSAM2_REQUEUE_MARKER"
SHIM_ENV = "MEDSAM2_REQUEUE_SHIM"
SIGNAL_ENV = "MEDSAM2_SIGNAL_DELAY_S"  # set in the batch script of a containerised job

# What a job reads from its host environment (submitit's and JobIdentity's SLURM_* and SUBMITIT_*,
# the DDP rendezvous, the GPUs Slurm bound, the launcher's MEDSAM2_GPUS, NCCL's site settings):
# ``apptainer exec --cleanenv`` drops everything else, a host PYTHONPATH or LD_LIBRARY_PATH included.
PASS_ENV = ("SLURM_*", "SUBMITIT_*", "MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE",
            "LOCAL_WORLD_SIZE", "CUDA_VISIBLE_DEVICES", "NCCL_*", "MEDSAM2_GPUS")

HOST_WRAPPER = r"""#!/bin/bash
# medsam2-hpc host-side wrapper (written by medsam2_hpc.hpc.requeue): runs one job step's
# containerised python ("$@" = apptainer|singularity exec --cleanenv ...) with the host variables
# the job reads, and performs the requeue it asked for, since scontrol exists only here.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
case "$(basename "$1")" in singularity) prefix=SINGULARITYENV_;; *) prefix=APPTAINERENV_;; esac
for name in $(compgen -e); do
    case "$name" in @PASS_ENV@) export "$prefix$name=${!name}";; esac
done
# submitit's local executor signals this process and requeues by itself: become the runtime
[ "${SUBMITIT_EXECUTOR:-}" = slurm ] || exec "$@"
marker="$here/requeue.${SLURM_JOB_ID:-nojob}.${SLURM_PROCID:-0}"
rm -f "$marker"
export "${prefix}MEDSAM2_REQUEUE_MARKER=$marker" "${prefix}MEDSAM2_REQUEUE_SHIM=$here/shim"
# A signal Slurm sends to every process of the step reaches the python inside directly: survive it.
trap ':' USR2 TERM CONT
"$@" &
child=$!
if [ -n "${MEDSAM2_SIGNAL_DELAY_S:-}" ] && [ -n "${SLURM_JOB_ID:-}" ]; then
    # USR2 that many seconds before the job's end, to the child only (not to squashfuse).
    (
        trap '' USR2 CONT
        trap 'kill "$nap" 2>/dev/null; exit 0' TERM
        warned="" nap=""
        while kill -0 "$child" 2>/dev/null; do
            end="$(squeue -h -j "$SLURM_JOB_ID" -o %e 2>/dev/null | head -n 1)"
            end_s="$(date -d "$end" +%s 2>/dev/null)" || end_s=""
            if [ -z "$end_s" ]; then
                [ -n "$warned" ] || echo "medsam2-hpc: no end time from squeue for job $SLURM_JOB_ID" \
                    "('$end'); asking again each minute" >&2
                warned=1 left=60
            else
                left=$(( end_s - $(date +%s) - MEDSAM2_SIGNAL_DELAY_S ))
            fi
            if [ "$left" -le 0 ]; then
                echo "medsam2-hpc: ${MEDSAM2_SIGNAL_DELAY_S} s to the time limit: USR2 to the python" >&2
                kill -USR2 "$child" 2>/dev/null
                exit 0
            fi
            sleep "$(( left < 60 ? left : 60 ))" &
            nap=$!
            wait "$nap"
        done
    ) &
    timer=$!
fi
while kill -0 "$child" 2>/dev/null; do wait "$child"; done
wait "$child"
rc=$?
[ -z "${timer:-}" ] || kill "$timer" 2>/dev/null
if [ -s "$marker" ]; then
    job="$(cat "$marker")"
    rm -f "$marker"
    echo "medsam2-hpc: requeueing job $job from the host" >&2
    scontrol requeue "$job" || exit $?
fi
exit "$rc"
""".replace("@PASS_ENV@", "|".join(PASS_ENV))

SCONTROL_SHIM = r"""#!/bin/sh
# Stand-in for scontrol inside the container (written by medsam2_hpc.hpc.requeue): records
# 'requeue JOB' for the host-side wrapper, which calls the real scontrol after the step ends.
if [ "$1" = requeue ] && [ -n "$2" ] && [ -n "$MEDSAM2_REQUEUE_MARKER" ]; then
    printf '%s\n' "$2" > "$MEDSAM2_REQUEUE_MARKER" || exit 1  # read only after this process ends
    exit 0
fi
echo "scontrol $*: not available inside the container (medsam2-hpc stand-in)" >&2
exit 1
"""


def wrapper_path(folder: str | os.PathLike) -> Path:
    return Path(folder) / "requeue-host.sh"


def write_helpers(folder: str | os.PathLike) -> Path:
    """Write the host wrapper and the in-container scontrol stand-in; return the wrapper's path."""
    folder = Path(folder)
    wrapper = write_text(wrapper_path(folder), HOST_WRAPPER)
    shim = write_text(folder / "shim" / "scontrol", SCONTROL_SHIM)
    for path in (wrapper, shim):
        path.chmod(0o755)
    return wrapper


def _use_scontrol_shim() -> None:
    """Put the stand-in first on PATH when the real scontrol is missing (inside a container)."""
    shim = os.environ.get(SHIM_ENV)
    if shim and shutil.which("scontrol") is None:
        os.environ["PATH"] = shim + os.pathsep + os.environ.get("PATH", "")


TIME_LIMIT_REASON = ("time limit: stopped at the last allowed requeue (the profile's max_requeues); "
                     "resubmit --failed resumes from checkpoints/last.pt")


def _record_stop(run: RunDir, exc: BaseException) -> None:
    """After ``run_task`` unwound: a stop that submitit requeues is 'preempted' (run_task marks
    every stopped run so); submitit's UncompletedJobError after ``checkpoint()`` means it did not
    requeue (too many timeouts), so the run ends 'failed' with the time limit as its reason."""
    if isinstance(exc, UncompletedJobError):
        run.mark_failed(exc, reason=TIME_LIMIT_REASON)
    elif stop_requested():
        run.mark_preempted()
        run.update_status(error=None)


class TaskCall(Checkpointable):
    """What each array element runs: ``fn(task)`` (default ``runner.run_task``), requeueable.

    ``fn`` is a seam for tests and benchmarks (a module-level function, pickled by reference).
    """

    def __init__(self, fn: Callable[[Task], Any] | None = None) -> None:
        self.fn = fn

    def __call__(self, task: Task) -> Any:
        clear_stop()
        _use_scontrol_shim()
        run = task.run_dir
        done = run.metrics()
        if done is not None:  # written once, last: an attempt that finds it has nothing to do
            if run.status().get("state") != "completed":
                run.mark_completed()
            return done
        fn = self.fn
        if fn is None:
            from ..runner import run_task as fn
        try:
            return fn(task)
        except BaseException as exc:
            if job_identity().global_rank == 0:  # rank 0 owns the run's files
                _record_stop(run, exc)
            raise

    def checkpoint(self, task: Task) -> DelayedSubmission:
        """Called by submitit on USR2/preemption: stop, and resubmit the same task."""
        request_stop()
        print(f"[medsam2-hpc] {task.task_id}: stop requested; the next attempt resumes from "
              f"{task.run_dir.last_ckpt}", file=sys.stderr, flush=True)
        return DelayedSubmission(TaskCall(self.fn), task)
