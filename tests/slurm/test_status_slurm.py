"""status, resubmit and submit --collect on the real test cluster, with accounting (sacct).

A task killed for memory (jobacct_gather's OverMemoryKill: Slurm's own kill, no stand-in) shows
OUT_OF_MEMORY and is submitted again by ``resubmit --failed``; a failing squeue (a PATH
stand-in, named so: a controller hiccup cannot be made on demand) is an error, never "nothing
queued"; ``submit --collect`` queues the collector behind the array; a 2,500-task dry run
against MaxArraySize=1001 renders three arrays.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from medsam2_hpc import spec
from medsam2_hpc.cli import main
from medsam2_hpc.hpc import launcher

pytestmark = pytest.mark.slurm

HPARAMS = {"epochs": 1, "batch_size": 4, "image_size": 64, "num_workers": 0, "amp": "none", "device": "cpu"}


def _jobs(tmp: Path, data: Path, *, mem: str = "3G", seeds: str = "[0]", extra: str = "") -> Path:
    path = tmp / "jobs.yaml"
    path.write_text(
        "output_root: runs\nexecutor: slurm\ncontainer: {runtime: none}\n"
        f"profiles:\n  cpu: {{cpus: 1, mem: {mem}, time: 10, array_parallelism: 2, signal_delay_s: 30}}\n"
        "defaults: {profile: cpu}\nstudies:\n  st:\n    experiments:\n"
        f"      - {{model: resnet, variants: [resnet18], dataset: btcv, data_path: {data}, seeds: {seeds},"
        f" hparams: {json.dumps(HPARAMS)}{extra}}}\n")
    return path


def _until(what: str, ready, timeout: float, cluster) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"{what} after {timeout:.0f}s\n{cluster.log_tail()}"
        time.sleep(2.0)


def _elements(study) -> list[str]:
    return [e for sub in launcher.submissions(study.study_dir) for e in sub["tasks"].values()]


def test_memory_kill_shows_out_of_memory_and_is_resubmitted(slurm_cluster, btcv_slices, tmp_path, capsys,
                                                            monkeypatch):
    path = _jobs(tmp_path, btcv_slices, mem="150M")  # importing torch alone needs more
    study = spec.load(path)
    (task,) = study.tasks
    assert main(["submit", str(path)]) == 0
    (first,) = _elements(study)

    def ended() -> bool:
        out = slurm_cluster.cmd(["sacct", "-n", "-P", "-X", "-j", first, "-o", "State"], check=False)
        return out.stdout.strip() not in ("", "PENDING", "RUNNING")

    _until("the memory-starved task still runs", ended, 180, slurm_cluster)
    capsys.readouterr()
    assert main(["status", str(path)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(task.task_id))
    assert " failed " in line and "OUT_OF_MEMORY" in line and f"{first}_0_log.err" in line
    assert task.run_dir.status()["slurm_state"] == "OUT_OF_MEMORY"

    # squeue failing (stand-in on PATH): status and resubmit stop with one line, submit nothing
    bin_dir = tmp_path / "standin-bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text("#!/bin/bash\n# Stand-in for squeue: a controller hiccup on demand.\n"
                                    "echo 'squeue: error: slurm_load_jobs error: Unable to contact slurm "
                                    "controller (connect failure)' >&2\nexit 1\n")
    (bin_dir / "squeue").chmod(0o755)
    with monkeypatch.context() as m:
        m.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        assert main(["status", str(path)]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "squeue failed (exit 1): " in err and "Unable to contact" in err
        assert main(["resubmit", str(path), "--failed"]) == 1
        assert _elements(study) == [first]

    assert main(["resubmit", str(path), "--failed"]) == 0
    elements = _elements(study)
    assert len(elements) == 2 and elements[1] != first
    slurm_cluster.cmd(["scancel", elements[1].split("_")[0]])


def test_submit_collect_writes_the_comparison_after_the_array(slurm_cluster, btcv_slices, tmp_path):
    path = _jobs(tmp_path, btcv_slices, seeds="[0, 1]")
    study = spec.load(path)
    assert main(["submit", str(path), "--collect"]) == 0
    report = study.study_dir / "comparison" / "MODEL_COMPARISON.md"
    _until("no MODEL_COMPARISON.md", report.exists, 900, slurm_cluster)  # a loaded CI machine
    assert all(t.run_dir.metrics_json.exists() for t in study.tasks)  # afterany: the array had ended
    assert "resnet" in report.read_text()


def test_dry_run_splits_2500_tasks_into_arrays_of_max_array_size(slurm_cluster, btcv_slices, tmp_path,
                                                                  capsys):
    lrs = json.dumps([round(1e-4 * (i + 1), 6) for i in range(50)])
    path = _jobs(tmp_path, btcv_slices, seeds=json.dumps(list(range(50))), extra=f", sweep: {{lr: {lrs}}}")
    hparams = {k: v for k, v in HPARAMS.items() if k != "lr"}
    path.write_text(path.read_text().replace(json.dumps(HPARAMS), json.dumps(hparams)))
    assert len(spec.load(path).tasks) == 2500
    assert main(["submit", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "MaxArraySize 1001 (scontrol show config)" in out
    arrays = [ln for ln in out.splitlines() if ln.startswith("#SBATCH --array=")]
    assert arrays == ["#SBATCH --array=0-1000%2", "#SBATCH --array=0-1000%2", "#SBATCH --array=0-497%2"]
    assert not (tmp_path / "runs").exists()
