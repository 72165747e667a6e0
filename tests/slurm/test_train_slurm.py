"""``sbatch slurm/train_slurm.sh resnet`` on the real test cluster: a run, a requeue, a signal.

The script's #SBATCH defaults ask for 8 CPUs and 64 GB; the tests override them on the sbatch
command line (as users do) to fit the 2-CPU test node, and keep its default ``--gres=gpu:1``
(the node has one fake GPU). Training is the ResNet baseline on the synthetic BTCV slices.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest

from medsam2_hpc.contract import validate_metrics

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "slurm" / "train_slurm.sh"
# A requeued job waits cred_expire (10 s here) and then one scheduling pass before it restarts.
REQUEUE_TIMEOUT = 300


def _submit(cluster, tmp: Path, data: Path, *, epochs: int, image_size: int = 64) -> str:
    return cluster.sbatch([
        f"--chdir={tmp}", "--time=15", "--cpus-per-task=1", "--mem=3G", f"--output={tmp}/job.out",
        f"--export=ALL,MEDSAM2_ROOT={REPO},MEDSAM2_PYTHON={sys.executable},OMP_NUM_THREADS=1",
        str(SCRIPT), "resnet", "--variant", "resnet18", "--dataset", "btcv", "--data-path", str(data),
        "--output-root", str(tmp / "runs"), "--study", "sbatch", "--epochs", str(epochs),
        "--batch-size", "4", "--image-size", str(image_size), "--set", "num_workers=0", "--set", "amp=none",
    ])


def _run_dir(tmp: Path, timeout: float = 120) -> Path:
    """The run directory train.py created (its name is the task id)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted((tmp / "runs" / "sbatch").glob("*/task.yaml"))
        if found:
            return found[0].parent
        time.sleep(0.5)
    raise AssertionError(f"no run directory after {timeout}s: {_log(tmp)}")


def _log(tmp: Path, tail: int = 3000) -> str:
    """The job's output (appended across attempts); the tail of it for failure messages."""
    path = tmp / "job.out"
    return path.read_text(errors="replace")[-tail:] if path.exists() else "(no job log)"


def _wait_for_epoch(run: Path, tmp: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not (run / "checkpoints" / "last.pt").exists():
        assert time.monotonic() < deadline, f"no epoch finished after {timeout}s: {_log(tmp)}"
        time.sleep(0.5)


def _epoch_lines(tmp: Path, epochs: int) -> list[int]:
    return [int(m) for m in re.findall(rf"\[epoch (\d+)/{epochs}\]", _log(tmp, tail=10**7))]


def test_sbatch_trains_resnet_end_to_end(slurm_cluster, btcv_slices, tmp_path):
    job = _submit(slurm_cluster, tmp_path, btcv_slices, epochs=2)
    info = slurm_cluster.wait(job, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), timeout=240)
    assert info["JobState"] == "COMPLETED", _log(tmp_path)
    assert info["TresPerNode"].endswith("gpu:1") and info["NumCPUs"] == "1"  # defaults and overrides
    run = _run_dir(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    assert validate_metrics(metrics) == [] and metrics["epochs_completed"] == 2
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "completed" and status["attempts"] == 1 and status["slurm_job_id"] == job
    assert _epoch_lines(tmp_path, 2) == [1, 2]


def _check_resumed(cluster, job: str, tmp: Path, run: Path, epochs: int) -> None:
    info = cluster.wait(job, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), timeout=REQUEUE_TIMEOUT)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", (info, _log(tmp))
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "completed" and status["attempts"] == 2, status
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_completed"] == epochs
    # Each epoch ran exactly once across both attempts: the second resumed from last.pt.
    assert _epoch_lines(tmp, epochs) == list(range(1, epochs + 1)), _log(tmp)
    assert "restart 1 on" in _log(tmp, tail=10**7)


def test_scontrol_requeue_mid_training_resumes_from_checkpoint(slurm_cluster, btcv_slices, tmp_path):
    epochs = 4
    job = _submit(slurm_cluster, tmp_path, btcv_slices, epochs=epochs)
    run = _run_dir(tmp_path)
    _wait_for_epoch(run, tmp_path)
    assert not (run / "metrics.json").exists()  # interrupted before metrics: they are written once
    slurm_cluster.cmd(["scontrol", "requeue", job])
    _check_resumed(slurm_cluster, job, tmp_path, run, epochs)


def test_usr2_is_forwarded_and_the_host_shell_requeues(slurm_cluster, btcv_slices, tmp_path):
    """The pre-timeout path: USR2 to the batch shell -> train.py saves, exits 75 -> scontrol requeue."""
    epochs = 4
    job = _submit(slurm_cluster, tmp_path, btcv_slices, epochs=epochs)
    run = _run_dir(tmp_path)
    _wait_for_epoch(run, tmp_path)
    slurm_cluster.cmd(["scancel", "--batch", "--signal=USR2", job])
    _check_resumed(slurm_cluster, job, tmp_path, run, epochs)
    assert f"stopped to be resumed: scontrol requeue {job}" in _log(tmp_path)
