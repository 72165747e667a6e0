"""The pre-timeout signal of a containerised job, sent by our host wrapper instead of by Slurm.

Slurm's ``--signal=USR2@N`` reaches every process of the step; an unprivileged Apptainer's
squashfuse is one of them and dies of it, and the python in the image then dies of SIGBUS
(hpc/requeue.py). For such jobs the launcher asks Slurm to signal only the batch shell, which
ignores it, and the wrapper signals its own child N seconds before the end time squeue reports.
This runs on the real test cluster with the batch script the launcher renders; the wrapped
command is a python on the host (no image is needed to time the signal) that starts a bystander
in its own process group, as Apptainer starts squashfuse, and the bystander must not be signalled.
"""

from __future__ import annotations

import shlex
import sys

import pytest
from submitit.slurm.slurm import _make_sbatch_string

from medsam2_hpc.hpc.launcher import SlurmBackend
from medsam2_hpc.hpc.requeue import write_helpers
from medsam2_hpc.spec import Profile

pytestmark = pytest.mark.slurm

CHILD = r"""
import signal, subprocess, sys, time
from pathlib import Path
out = Path(sys.argv[1])
got = []
signal.signal(signal.SIGUSR2, lambda *_: got.append(time.time()))
bystander = subprocess.Popen([sys.executable, "-c", (
    "import signal, sys, time; from pathlib import Path\n"
    "signal.signal(signal.SIGUSR2, lambda *_: Path(sys.argv[1]).write_text('signalled'))\n"
    "time.sleep(120)"), str(out / "bystander")], start_new_session=True)
(out / "started").write_text(str(time.time()))
deadline = time.time() + 55
while not got and time.time() < deadline:
    time.sleep(0.2)
bystander.kill()
(out / "child").write_text(f"{got[0] if got else 'none'}")
sys.exit(0 if got else 3)
"""


def test_wrapper_signals_its_child_before_the_time_limit_and_spares_the_rest(slurm_cluster, tmp_path):
    folder = tmp_path / "submitit"
    wrapper = write_helpers(folder)
    (tmp_path / "child.py").write_text(CHILD)
    profile = Profile(name="cpu", cpus=1, mem_gb=0.2, time_min=1, signal_delay_s=50)
    params = SlurmBackend().parameters(profile, "wrapper-signal", contained=True)
    command = shlex.join([str(wrapper), sys.executable, str(tmp_path / "child.py"), str(tmp_path)])
    script = _make_sbatch_string(command=command, folder=folder, **params)
    assert "#SBATCH --signal=B:USR2@50" in script
    (tmp_path / "job.sh").write_text(script)
    job = slurm_cluster.sbatch([str(tmp_path / "job.sh")])
    info = slurm_cluster.wait(job, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), timeout=120)
    log = "".join(p.read_text(errors="replace") for p in folder.glob("*_log.*"))
    assert info["JobState"] == "COMPLETED", (info, log)  # the batch shell survived Slurm's B: signal
    started = float((tmp_path / "started").read_text())
    signalled = float((tmp_path / "child").read_text())
    assert 0 <= signalled - started <= 30, log  # about 10 s into the minute (60 s - 50 s)
    assert "USR2 to the python" in log
    assert not (tmp_path / "bystander").exists()  # squashfuse's place: never signalled
