"""How squeue's and sacct's answers are read (hpc/queue.py), with named stand-ins for both.

The real commands are exercised in tests/slurm/test_status_slurm.py; here each answer Slurm can
give (including failures that cannot be produced on demand) is fed through a stand-in script.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medsam2_hpc.errors import SlurmError
from medsam2_hpc.hpc import queue


def _standin(tmp_path: Path, monkeypatch, name: str, body: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / name).write_text(f"#!/bin/bash\n# Stand-in for {name}: one canned answer.\n{body}")
    (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_sacct_pending_ranges_expand_to_elements():
    assert queue._elements("123_4") == ["123_4"]
    assert queue._elements("123_[5-7,9%2]") == ["123_5", "123_6", "123_7", "123_9"]


def test_squeue_answers(tmp_path, monkeypatch):
    _standin(tmp_path, monkeypatch, "squeue",
             'echo "7_0|PENDING|Resources|0:00"\necho "7_1|RUNNING|None|1:02"\n')
    assert queue.queued(["7"]) == {"7_0": queue.JobState("PENDING", "Resources", "0:00"),
                                   "7_1": queue.JobState("RUNNING", "", "1:02")}
    _standin(tmp_path, monkeypatch, "squeue",
             'echo "slurm_load_jobs error: Invalid job id specified" >&2\nexit 1\n')
    assert queue.queued(["7"]) == {}  # every job has left the queue
    _standin(tmp_path, monkeypatch, "squeue",
             'echo "slurm_load_jobs error: Socket timed out on send/recv operation" >&2\nexit 1\n')
    with pytest.raises(SlurmError, match=r"^squeue failed \(exit 1\): slurm_load_jobs error: Socket"):
        queue.queued(["7"])


def test_sacct_final_states_latest_attempt_last_and_no_accounting(tmp_path, monkeypatch):
    _standin(tmp_path, monkeypatch, "squeue", "exit 0\n")
    lines = ["7_0|PREEMPTED|None|00:01:00", "7_0|OUT_OF_MEMORY|None|00:00:09",  # --duplicates: all attempts
             "7_1|CANCELLED by 0|None|00:00:01", "7_[2-3]|PENDING|Priority|00:00:00"]
    _standin(tmp_path, monkeypatch, "sacct", "".join(f"echo '{line}'\n" for line in lines))
    states, accounting = queue.slurm_states(["7"])
    assert accounting and states == {"7_0": queue.JobState("OUT_OF_MEMORY", "", "00:00:09"),
                                     "7_1": queue.JobState("CANCELLED", "", "00:00:01")}
    _standin(tmp_path, monkeypatch, "sacct",
             'echo "sacct: error: Slurm accounting storage is disabled" >&2\nexit 1\n')
    assert queue.slurm_states(["7"]) == ({}, False)


def test_status_watch_gives_up_after_its_timeout_saying_what_it_waits_for(tmp_path, monkeypatch, capsys):
    from medsam2_hpc.cli import main

    study = tmp_path / "runs" / "s"
    study.mkdir(parents=True)
    (study / "submissions.json").write_text('{"submissions": [{"job_id": "7", "executor": "slurm", '
                                            '"profile": "p", "tasks": {"t1": "7_0"}}]}')
    _standin(tmp_path, monkeypatch, "squeue", 'echo "7_0|RUNNING|None|3:00"\n')
    _standin(tmp_path, monkeypatch, "sacct", "exit 0\n")
    assert main(["status", str(study), "--watch", "--timeout", "0.001", "--interval", "0.01"]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines()[-1].startswith("medsam2-hpc: error: still waiting for 1 task(s)")
    row = next(ln for ln in captured.out.splitlines() if ln.startswith("t1 "))
    assert "RUNNING" in row and "3:00" in row and str(study / ".submitit/7_0/7_0_0_log.err") in row
