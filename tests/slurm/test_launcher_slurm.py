"""The launcher on the real test cluster: one submitit array trains the ResNet baseline for real.

One study of five tasks in one resource profile: four good seeds and one task whose
pre-trained weights file is garbage (it passes the submit-time checks and fails in the job).
It is submitted once for the module; the tests read what the array left behind.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import pytest

from medsam2_hpc import spec
from medsam2_hpc.contract import validate_metrics
from medsam2_hpc.hpc import launcher
from medsam2_hpc.hpc.requeue import TIME_LIMIT_REASON

pytestmark = pytest.mark.slurm

HPARAMS = {"epochs": 1, "batch_size": 4, "image_size": 64, "num_workers": 0, "amp": "none"}


def _jobs_yaml(tmp: Path, data: Path) -> Path:
    (tmp / "garbage.pth").write_bytes(b"not a checkpoint")
    bad = {**HPARAMS, "pretrained_weights": str(tmp / "garbage.pth")}
    path = tmp / "jobs.yaml"
    path.write_text(
        "output_root: runs\nexecutor: slurm\ncontainer: {runtime: none}\n"
        "profiles:\n  cpu: {cpus: 1, mem: 3G, time: 10, array_parallelism: 2, signal_delay_s: 30}\n"
        "defaults: {profile: cpu}\n"
        "studies:\n  arr:\n    experiments:\n"
        f"      - {{name: good, model: resnet, variants: [resnet18], dataset: btcv, data_path: {data},"
        f" seeds: [0, 1, 2, 3], hparams: {json.dumps(HPARAMS)}}}\n"
        f"      - {{name: bad, model: resnet, variants: [resnet18], dataset: btcv, data_path: {data},"
        f" seeds: [9], hparams: {json.dumps(bad)}}}\n")
    return path


def _wait_gone(cluster, array_id: str, timeout: float) -> None:
    """Until no element of the array is pending or running (squeue; no accounting needed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = cluster.cmd(["squeue", "-h", "-r", "-j", array_id, "-o", "%i %T"], check=False)
        if out.returncode == 0 and not out.stdout.strip():
            return
        time.sleep(2.0)
    raise AssertionError(f"array {array_id} still queued after {timeout}s:\n{out.stdout}\n"
                         f"{cluster.log_tail()}")


@pytest.fixture(scope="module")
def array_run(slurm_cluster, btcv_slices, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("array")
    study = spec.load(_jobs_yaml(tmp, btcv_slices))
    out = StringIO()
    launch = launcher.submit(study, out=out)
    assert len(launch.job_ids) == 1, out.getvalue()  # one sbatch for the one profile
    _wait_gone(slurm_cluster, launch.job_ids[0], timeout=420)
    return study, launch


def _by_seed(study) -> dict[int, object]:
    return {task.seed: task for task in study.tasks}


def test_array_of_tasks_trains_and_leaves_metrics(slurm_cluster, array_run):
    study, launch = array_run
    array_id = launch.job_ids[0]
    info = slurm_cluster.job(f"{array_id}_0")
    assert info.get("ArrayJobId") == array_id and info["JobState"] == "COMPLETED", info
    for seed in (0, 1, 2, 3):
        run = _by_seed(study)[seed].run_dir
        metrics = json.loads(run.metrics_json.read_text())
        assert validate_metrics(metrics) == [] and metrics["seed"] == seed
        status = run.status()
        assert status["state"] == "completed" and status["attempts"] == 1
        assert status["slurm_array_job_id"] == array_id
    elements = {_by_seed(study)[s].run_dir.status()["slurm_array_task_id"] for s in (0, 1, 2, 3)}
    assert len(elements) == 4  # four different array elements, not one task run four times
    # Submitting again is safe: the finished tasks are skipped, the failed one is offered again.
    again = launcher.plan(study)
    assert again.n_to_run == 1 and sum(r == "completed" for r in again.skipped.values()) == 4


def test_failing_task_is_failed_with_error_tail_and_others_unharmed(slurm_cluster, array_run):
    study, launch = array_run
    bad = _by_seed(study)[9]
    status = bad.run_dir.status()
    assert status["state"] == "failed" and not bad.run_dir.metrics_json.exists()
    assert "garbage.pth" in status["error"]
    element = next(e for t, e in launch_tasks(study).items() if t == bad.task_id)
    assert slurm_cluster.job(element)["JobState"] == "FAILED"
    rows = {row["task_id"]: row for row in launcher.status_rows(study.study_dir)}
    assert rows[bad.task_id]["state"] == "failed" and "garbage.pth" in rows[bad.task_id]["error"]
    assert sorted(row["state"] for row in rows.values()) == ["completed"] * 4 + ["failed"]
    # The command-line view of the same thing.
    cli = subprocess.run([sys.executable, "-m", "medsam2_hpc.cli", "status", str(study.study_dir)],
                         capture_output=True, text=True, timeout=120)
    assert bad.task_id in cli.stdout and "failed" in cli.stdout, cli.stderr


def launch_tasks(study) -> dict[str, str]:
    """task id -> array element id, from the launcher's submissions record."""
    return {t: e for sub in launcher.submissions(study.study_dir) for t, e in sub["tasks"].items()}


def test_submitit_task_checkpoints_on_usr2_requeues_and_resumes(slurm_cluster, btcv_slices, tmp_path):
    """The launcher's preemption path for real: USR2 -> TaskCall.checkpoint -> scontrol requeue."""
    hparams = {**HPARAMS, "epochs": 4}
    (tmp_path / "jobs.yaml").write_text(
        "output_root: runs\nexecutor: slurm\ncontainer: {runtime: none}\n"
        "profiles:\n  cpu: {cpus: 1, mem: 3G, time: 10, signal_delay_s: 30, max_requeues: 2}\n"
        "defaults: {profile: cpu}\nstudies:\n  pre:\n    experiments:\n"
        f"      - {{model: resnet, variants: [resnet18], dataset: btcv, data_path: {btcv_slices},"
        f" seeds: [0], hparams: {json.dumps(hparams)}}}\n")
    study = spec.load(tmp_path / "jobs.yaml")
    (task,) = study.tasks
    job = launcher.submit(study, out=StringIO()).job_ids[0]
    deadline = time.monotonic() + 180
    while not task.run_dir.last_ckpt.exists():
        assert time.monotonic() < deadline, slurm_cluster.job(job)
        time.sleep(0.5)
    assert not task.run_dir.metrics_json.exists()
    slurm_cluster.cmd(["scancel", "--signal=USR2", job])
    info = slurm_cluster.wait(job, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), timeout=300)
    err_logs = sorted(study.study_dir.glob(".submitit/*/*_log.err"))
    logs = "".join(p.read_text(errors="replace") for p in err_logs)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", (info, logs[-3000:])
    status = task.run_dir.status()
    assert status["state"] == "completed" and status["attempts"] == 2
    assert json.loads(task.run_dir.metrics_json.read_text())["epochs_completed"] == 4
    # Both attempts are logged. No epoch finished twice, so the second attempt resumed from
    # last.pt rather than restarting (the epoch the signal interrupted is redone once).
    out_logs = "".join(p.read_text(errors="replace") for p in study.study_dir.glob(".submitit/*/*_log.*"))
    assert out_logs.count("Starting with JobEnvironment") == 2, out_logs[-3000:]
    epochs = [int(n) for n in re.findall(r"\[epoch (\d+)/4\]", logs)]
    assert epochs == sorted(set(epochs)) and epochs[-1] == 4 and len(epochs) < 5, logs[-3000:]


def test_time_limit_requeues_until_max_requeues_then_fails(slurm_cluster, tmp_path, monkeypatch):
    """Slurm's own pre-timeout USR2, twice: the first attempt is requeued and left 'preempted',
    the second exhausts max_requeues (1) and ends 'failed' with the time limit as its reason.

    The job runs the real TaskCall and run_task with the tiny trainer of tests/test_launcher.py,
    whose epochs sleep (1 s each, 1000 of them), so it outlives every time limit without using
    the CPU. A 2-minute limit with a 30 s warning: Slurm checks limits every 30 s and may signal
    up to a minute early, so USR2 arrives 60-90 s into an attempt, long after the handlers exist.
    """
    from medsam2_hpc import registry
    from tests.test_launcher import _tiny, run_tiny  # the job imports it too (PYTHONPATH: tests/conftest.py)

    monkeypatch.setitem(registry.MODEL_KINDS, "resnet", _tiny("resnet"))  # submit's checks see it too

    (tmp_path / "data").mkdir()
    (tmp_path / "jobs.yaml").write_text(
        "output_root: runs\nexecutor: slurm\ncontainer: {runtime: none}\n"
        "profiles:\n  cpu: {cpus: 1, mem: 3G, time: 2, signal_delay_s: 30, max_requeues: 1}\n"
        "defaults: {profile: cpu}\nstudies:\n  limit:\n    experiments:\n"
        "      - {model: resnet, variants: [resnet18], dataset: refuge, data_path: data, seeds: [0],"
        " hparams: {epochs: 1000, epoch_s: 1}}\n")
    study = spec.load(tmp_path / "jobs.yaml")
    (task,) = study.tasks
    job = launcher.submit(study, fn=run_tiny, out=StringIO()).job_ids[0]
    seen: list[tuple[str, int]] = []
    deadline = time.monotonic() + 420
    while slurm_cluster.job(job).get("JobState") not in ("FAILED", "COMPLETED", "CANCELLED", "TIMEOUT"):
        status = task.run_dir.status()
        if not seen or seen[-1] != (status["state"], status["attempts"]):
            seen.append((status["state"], status["attempts"]))
        assert time.monotonic() < deadline, (seen, slurm_cluster.job(job))
        time.sleep(0.2)
    info = slurm_cluster.job(job)
    logs = "".join(p.read_text(errors="replace") for p in study.study_dir.glob(".submitit/*/*_log.err"))
    assert info["JobState"] == "FAILED" and info["Restarts"] == "1", (info, logs[-3000:])
    assert ("preempted", 1) in seen, seen  # between the attempts: resumable, not a failure
    status = task.run_dir.status()
    assert status["state"] == "failed" and status["attempts"] == 2, (status, logs[-3000:])
    assert status["error"].splitlines()[-1] == TIME_LIMIT_REASON
    assert not task.run_dir.metrics_json.exists()
    rows = launcher.status_rows(study.study_dir)
    assert [(r["state"], r["error"]) for r in rows] == [("failed", TIME_LIMIT_REASON)]
    assert launcher.plan(study, states={"failed"}).n_to_run == 1  # resubmit --failed picks it up
