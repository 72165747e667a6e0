"""One real-Slurm array task inside our image, end to end, and a requeue asked for from inside it.

The cluster is the session's real single-node Slurm (tests/slurm/conftest.py); the image is
built by the real Apptainer 1.4.5 hosted in its own root (tests/real_apptainer.py). Inside the
image there is no scontrol: submitit's requeue goes to the stand-in that records it, and the
launcher's host-side wrapper performs it (medsam2_hpc.hpc.requeue).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from io import StringIO
from pathlib import Path

import pytest

from medsam2_hpc.hpc import launcher

from ..test_apptainer_image import shared_copy, shared_umask, write_study

pytestmark = [pytest.mark.slurm, pytest.mark.apptainer, pytest.mark.slow]


def _wrapper_child(folder: Path) -> int:
    """The pid the host wrapper started (``apptainer exec ...``), found as the child of the bash
    running ``<folder>/requeue-host.sh``: the process the wrapper itself signals before a time limit.
    The wrapper's timer is a subshell of that bash (same argv, its own ``sleep`` child): skipped."""
    wrapper = str(folder / "requeue-host.sh").encode()
    procs = {}
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            ppid = int(re.search(r"^PPid:\s*(\d+)", (proc / "status").read_text(), re.M).group(1))
        except (OSError, AttributeError, ValueError):
            continue
        procs[int(proc.name) if proc.name.isdigit() else -1] = (ppid, argv)
    bash = {pid for pid, (_, argv) in procs.items() if wrapper in argv[:2]}
    main = {pid for pid in bash if procs[pid][0] not in bash}
    children = [pid for pid, (ppid, _) in procs.items() if ppid in main and pid not in bash]
    assert len(main) == 1 and len(children) == 1, (bash, main, children)
    return children[0]


def test_array_task_in_the_image_requeues_from_inside_and_resumes(
        slurm_cluster, medsam2_image, apptainer_on_path, refuge_multirater, tmp_path, monkeypatch):
    hparams = {"epochs": 4, "image_size": 64, "batch_size": 2, "num_workers": 0, "device": "cpu",
               "amp": "none"}
    data = shared_copy(refuge_multirater, tmp_path, apptainer_on_path)
    study = write_study(tmp_path, medsam2_image, data, executor="slurm", hparams=hparams,
                        profile="{cpus: 1, mem: 2G, time: 10, signal_delay_s: 30, max_requeues: 2}")
    (task,) = study.tasks
    apptainer_on_path.share(study.output_root)
    monkeypatch.chdir(study.output_root)  # the job starts here: the container's user must read it
    with shared_umask():  # sbatch passes the umask on to the job
        job = launcher.submit(study, out=StringIO()).job_ids[0]
    deadline = time.monotonic() + 300
    while not task.run_dir.last_ckpt.exists():
        info = slurm_cluster.job(job)
        assert time.monotonic() < deadline and info.get("JobState") in ("PENDING", "RUNNING"), info
        time.sleep(0.5)
    assert not task.run_dir.metrics_json.exists()
    # What the host wrapper sends before a time limit (tests/slurm/test_requeue_wrapper.py times it
    # on the real cluster): USR2 to its child, Apptainer's starter, which forwards it to the python
    # in the image. Slurm's own USR2 to every process of the step would kill squashfuse too.
    os.kill(_wrapper_child(study.study_dir / ".submitit"), signal.SIGUSR2)
    info = slurm_cluster.wait(job, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), timeout=420)
    logs = "".join(p.read_text(errors="replace") for p in sorted(study.study_dir.glob(".submitit/*/*_log.*")))
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", (info, logs[-3000:])
    assert f"medsam2-hpc: requeueing job {job}" in logs  # the host wrapper, after the image asked
    status = task.run_dir.status()
    assert status["state"] == "completed" and status["attempts"] == 2
    metrics = json.loads(task.run_dir.metrics_json.read_text())
    assert metrics["epochs_completed"] == 4 and metrics["container"]["image"] == str(medsam2_image)
    assert task.run_dir.metrics_json.stat().st_uid == apptainer_on_path.uid  # written inside the image
    epochs = [int(n) for n in re.findall(r"\[epoch (\d+)/4\]", logs)]
    assert epochs == sorted(set(epochs)) and epochs[-1] == 4 and len(epochs) < 5, logs[-3000:]
    assert launcher.python_argv(study, study.profiles["cpu"], study.tasks, launcher.SlurmBackend(),
                                study.study_dir / ".submitit")[1:3] == ["apptainer", "exec"]
