"""One batch file per Slurm array (hpc/batch.py): each element puts its own submitit pickle in place.

The element side runs as it does in a job, in a subprocess with Slurm's array variables; the
submitting side goes through sbatch stand-ins in tests/test_launcher.py and the real Slurm in
tests/slurm/test_launcher_slurm.py.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

from submitit.core.utils import DelayedSubmission, JobPaths

from medsam2_hpc.hpc import batch


def test_batch_file_reads_back_each_element(tmp_path):
    blobs = [b"first", b"", b"third \n with a newline"]
    path = batch.write_batch(tmp_path / "batch.bin", blobs)
    assert [batch.read_element(path, i) for i in range(3)] == blobs


def _element(tmp_path, folder, task_id: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": str(task_id)}
    # as in the job: `python -m medsam2_hpc.hpc.batch FILE <command ending with the submitit folder>`
    command = ["sh", "-c", 'echo "entry for $0"', str(folder)]
    return subprocess.run([sys.executable, "-m", batch.MODULE, str(tmp_path / "batch.bin"), *command],
                          env=env, capture_output=True, text=True, check=True)


def test_element_writes_its_pickle_where_submitit_reads_it_then_becomes_the_entry(tmp_path):
    subs = [DelayedSubmission(sorted, [3, 1, 2]), DelayedSubmission(max, [4, 9])]
    batch.write_batch(tmp_path / "batch.bin", [pickle.dumps(s) for s in subs])
    folder = tmp_path / ".submitit" / "%j"
    done = _element(tmp_path, folder, 1)
    assert done.stdout == f"entry for {folder}\n"  # exec'd the rest of the command
    path = JobPaths(folder, job_id="77_1").submitted_pickle
    assert DelayedSubmission.load(path).result() == 9
    assert not JobPaths(folder, job_id="77_0").submitted_pickle.exists()  # only its own


def test_a_requeued_element_keeps_its_checkpointed_submission(tmp_path):
    batch.write_batch(tmp_path / "batch.bin", [pickle.dumps(DelayedSubmission(min, [5, 6]))])
    folder = tmp_path / ".submitit" / "%j"
    path = JobPaths(folder, job_id="77_0").submitted_pickle
    path.parent.mkdir(parents=True)
    path.write_bytes(pickle.dumps(DelayedSubmission(max, [5, 6])))  # what checkpoint() left there
    _element(tmp_path, folder, 0)
    assert DelayedSubmission.load(path).result() == 6


def test_element_python_runs_the_batch_step_with_the_same_interpreter():
    line = batch.element_python("/s/requeue-host.sh apptainer exec 'my image.sif' python", "/s/b 1.bin")
    assert line == ("/s/requeue-host.sh apptainer exec 'my image.sif' python -m medsam2_hpc.hpc.batch "
                    "'/s/b 1.bin' python")
