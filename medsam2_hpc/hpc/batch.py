"""One file per Slurm array instead of one per element: submitit's element pickles, written by the jobs.

submitit's ``map_array`` writes a pickle for every array element from the submitting process:
for a 10,000-task study that is 10,000 file creations on the shared file system before the first
``sbatch``, most of ``submit``'s time. Here the submitting process pickles each element
in memory (the same ``DelayedSubmission`` submitit would write) and writes one batch file per
array: a JSON line of offsets, then the pickles back to back. Each element's command starts with
``python -m medsam2_hpc.hpc.batch <file> python``, which copies the element's own bytes (by its
array index) to where submitit's job entry reads them, unless a requeue has already put a
checkpointed submission there, and then becomes that entry (``exec``): signals, requeue and
results are submitit's own. The copy step unpickles nothing and imports no torch. The elements of a
submission share one folder, made before sbatch (``launcher._logs_folder``): Slurm opens each
element's log file there when it starts.

The array itself is submitted the way submitit's ``SlurmExecutor`` does it (its sbatch script,
its job objects), through the private parts that ``setup.cfg``'s ``submitit<1.6`` pin covers.
"""

from __future__ import annotations

import json
import os
import pickle
import shlex
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import cloudpickle
import submitit
from submitit.core.utils import DelayedSubmission, JobPaths
from submitit.slurm.slurm import SlurmJob

from ..atomic import atomic_write
from ..jobenv import job_identity

__all__ = ["MODULE", "element_python", "write_batch", "read_element", "submit_array", "main"]

MODULE = "medsam2_hpc.hpc.batch"


def element_python(python: str, batch_file: str | os.PathLike) -> str:
    """submitit's ``python`` option for an array whose elements unpack themselves from ``batch_file``:
    ``<python> -m medsam2_hpc.hpc.batch <file> <interpreter>`` (the interpreter is ``python``'s last word)."""
    interpreter = shlex.split(python)[-1]
    return f"{python} -m {MODULE} {shlex.quote(os.fspath(batch_file))} {shlex.quote(interpreter)}"


def write_batch(path: Path, blobs: Sequence[bytes]) -> Path:
    """A JSON line ``[[offset, length], ...]`` (offsets after that line), then the blobs."""
    index, offset = [], 0
    for blob in blobs:
        index.append([offset, len(blob)])
        offset += len(blob)
    header = (json.dumps(index) + "\n").encode()

    def write(fh: IO[bytes]) -> None:
        fh.write(header)
        for blob in blobs:
            fh.write(blob)

    return atomic_write(path, write)


def read_element(path: str | os.PathLike, index: int) -> bytes:
    with open(path, "rb") as fh:
        entries = json.loads(fh.readline())
        start = fh.tell()
        offset, length = entries[index]
        fh.seek(start + offset)
        return fh.read(length)


def submit_array(executor: submitit.SlurmExecutor, fn: Callable[[Any], Any],
                 items: Sequence[Any]) -> list[SlurmJob]:
    """``executor.map_array(fn, items)`` with one batch file instead of one pickle per element."""
    if len(items) == 1:  # submitit sends one task as a plain job, with its own pickle
        return executor.map_array(fn, items)
    folder = Path(executor.folder)  # made before sbatch, shared by the elements (launcher._logs_folder)
    timeout_min = executor.parameters.get("time", 5)
    blobs = []
    for item in items:
        submission = DelayedSubmission(fn, item)
        submission.set_timeout(timeout_min, executor.max_num_timeout)
        blobs.append(cloudpickle.dumps(submission, pickle.HIGHEST_PROTOCOL))
    batch = write_batch(folder / f"batch-{uuid.uuid4().hex}.bin", blobs)
    array = submitit.SlurmExecutor(executor.folder, executor.max_num_timeout,
                                   python=element_python(executor.python, batch))
    array.update_parameters(**executor.parameters)
    array.parameters["map_count"] = len(items)
    first = array._submit_command(array._submitit_command_str)
    return [SlurmJob(folder=executor.folder, job_id=f"{first.job_id}_{i}", tasks=list(range(first.num_tasks)))
            for i in range(len(items))]


def main(argv: Sequence[str]) -> None:
    """In the job: put this element's submission where submitit reads it, then run submitit's entry."""
    batch, *command = argv
    ident = job_identity()
    paths = JobPaths(command[-1], job_id=f"{ident.array_job_id}_{ident.array_task_id}")
    if not paths.submitted_pickle.exists():  # a requeued attempt finds its checkpointed submission
        blob = read_element(batch, ident.array_task_id)
        atomic_write(paths.submitted_pickle, lambda fh: fh.write(blob))
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
