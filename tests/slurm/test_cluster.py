"""The test cluster itself: a batch job runs and its completion is visible without accounting."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slurm


def test_batch_job_runs_and_completes(slurm_cluster, tmp_path):
    out = tmp_path / "hello.out"
    job = slurm_cluster.sbatch(["--output", str(out), "--time=1", "--cpus-per-task=1", "--mem=100M",
                                "--wrap", "echo hello from $SLURM_JOB_ID"])
    info = slurm_cluster.wait(job, ("COMPLETED", "FAILED", "CANCELLED"), timeout=60)
    assert info["JobState"] == "COMPLETED", info
    assert out.read_text().strip() == f"hello from {job}"
    assert f"JobId={job} " in (slurm_cluster.root / "jobcomp.log").read_text()
