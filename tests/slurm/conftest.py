"""A real single-node Slurm for the integration tests, started once per session.

The fixture writes slurm.conf into a temporary directory, starts munged, slurmctld and
slurmd in the foreground (so it holds their PIDs and stops exactly those), waits until the
node is idle and exports SLURM_CONF. Outside CI the tests skip, with the reason, when Slurm
cannot be started here; with CI=true a cluster that does not come up is a failure.
The node advertises one fake GPU (``File=/dev/null``) so the sbatch script's default
``--gres=gpu:1`` is schedulable exactly as written.

Accounting is real too, as on production clusters: a private MariaDB (its own data directory,
socket and port under the temporary directory) behind slurmdbd, so ``sacct`` answers with the
final states (OUT_OF_MEMORY, TIMEOUT, ...) after jobs leave the queue. jobacct_gather/linux with
OverMemoryKill enforces ``--mem`` without cgroups.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DAEMONS = ("munged", "slurmctld", "slurmd", "slurmdbd", "mariadbd", "mariadb-install-db", "mariadb", "sbatch",
           "scontrol", "squeue", "sinfo", "scancel", "sacct", "sacctmgr")
DB_USER, DB_PASS, DB_NAME = "slurm", "medsam2-test", "slurm_acct_db"
# How long a requeued job waits before it may start again (Slurm's default is 120 s).
CRED_EXPIRE_S = 10


def _unavailable(reason: str) -> None:
    """Skip outside CI; in CI a missing cluster must fail the run, not hide it."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"Slurm test cluster unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"Slurm test cluster unavailable: {reason}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def slurm_conf(root: Path, host: str, user: str, ports: tuple[int, int], dbd_port: int) -> str:
    """The configuration known to run on a 2-CPU machine (issue 6), all state under ``root``."""
    return f"""\
ClusterName=medsam2test
SlurmctldHost={host}
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket,cred_expire={CRED_EXPIRE_S}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=2000
MpiDefault=none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost={host}
AccountingStoragePort={dbd_port}
AccountingStoragePass={root}/munge/munge.socket
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=1
JobAcctGatherParams=OverMemoryKill
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.log
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ReturnToService=2
MinJobAge=3600
MaxArraySize=1001
KillWait=20
GresTypes=gpu
NodeName={host} CPUs=2 RealMemory=8000 Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmCluster:
    """Handle on the test cluster: its directory, config and client helpers."""

    root: Path
    conf: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def cmd(self, args: Sequence[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
        out = subprocess.run(list(args), env=kw.pop("env", self.env()), capture_output=True,
                             text=True, timeout=60, **kw)
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(args)} -> {out.returncode}: {out.stderr.strip()}")
        return out

    def sbatch(self, args: Sequence[str], **kw) -> str:
        """Submit and return the job id (``--parsable``)."""
        out = self.cmd(["sbatch", "--parsable", *args], **kw)
        return out.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (works until MinJobAge; no accounting needed)."""
        out = self.cmd(["scontrol", "show", "job", "-o", job_id], check=False)
        return dict(re.findall(r"(\w+)=(\S*)", out.stdout))

    def wait(self, job_id: str, states: Sequence[str], timeout: float) -> dict[str, str]:
        """Poll until the job reaches one of ``states``; fail with the job record if not."""
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            time.sleep(1.0)
        raise AssertionError(f"job {job_id} not in {list(states)} after {timeout:.0f}s: {info}")

    def log_tail(self, name: str = "slurmctld.log", lines: int = 30) -> str:
        path = self.root / name
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def _start(cluster: SlurmCluster, args: list[str], log: str) -> subprocess.Popen:
    with open(cluster.root / log, "ab") as fh:
        proc = subprocess.Popen(args, env=cluster.env(), stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    cluster.procs.append(proc)
    return proc


def _start_munge(cluster: SlurmCluster) -> None:
    mdir = cluster.root / "munge"
    mdir.mkdir(mode=0o700)
    key = mdir / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    proc = _start(cluster, ["munged", "--foreground", "--force", f"--key-file={key}",
                            f"--socket={mdir / 'munge.socket'}", f"--pid-file={mdir / 'munged.pid'}",
                            f"--log-file={mdir / 'munged.log'}", f"--seed-file={mdir / 'munged.seed'}"],
                  "munged.out")
    deadline = time.monotonic() + 15
    while not (mdir / "munge.socket").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            _unavailable(f"munged did not start: {(cluster.root / 'munged.out').read_text()[-500:]}")
        time.sleep(0.2)


def slurmdbd_conf(root: Path, host: str, user: str, dbd_port: int, db_port: int) -> str:
    return f"""\
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket
DbdHost={host}
DbdPort={dbd_port}
SlurmUser={user}
PidFile={root}/slurmdbd.pid
LogFile={root}/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={db_port}
StorageUser={DB_USER}
StoragePass={DB_PASS}
StorageLoc={DB_NAME}
"""


def _until(ready, what: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
            _unavailable(f"{what} did not start: {tail}")
        time.sleep(0.3)


def _start_mariadb(cluster: SlurmCluster, port: int) -> None:
    """A private MariaDB for slurmdbd: data, socket and port of this cluster only."""
    data, sock = cluster.root / "mysql", cluster.root / "mysql.sock"
    user = getpass.getuser()
    out = subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={data}", f"--user={user}",
                          "--auth-root-authentication-method=normal", "--skip-test-db"],
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        _unavailable(f"mariadb-install-db failed: {out.stderr[-500:]}")
    proc = _start(cluster, ["mariadbd", "--no-defaults", f"--datadir={data}", f"--socket={sock}",
                            f"--port={port}", "--bind-address=127.0.0.1", f"--user={user}",
                            f"--pid-file={cluster.root / 'mysql.pid'}", "--skip-log-bin",
                            f"--log-error={cluster.root / 'mysql.log'}", "--innodb-buffer-pool-size=32M"],
                  "mariadbd.out")
    _until(sock.exists, "mariadbd", proc, cluster.root / "mysql.log")
    sql = (f"CREATE USER '{DB_USER}'@'127.0.0.1' IDENTIFIED BY '{DB_PASS}'; "
           f"GRANT ALL ON {DB_NAME}.* TO '{DB_USER}'@'127.0.0.1';")
    cluster.cmd(["mariadb", "--no-defaults", f"--socket={sock}", "-u", "root", "-e", sql])


def _start_slurmdbd(cluster: SlurmCluster) -> None:
    proc = _start(cluster, ["slurmdbd", "-D"], "slurmdbd.out")

    def registered() -> bool:  # the cluster row slurmctld reports to (sacctmgr needs slurmdbd up)
        out = cluster.cmd(["sacctmgr", "-i", "add", "cluster", "medsam2test"], check=False)
        return out.returncode == 0 or "already exists" in out.stdout + out.stderr

    _until(registered, "slurmdbd", proc, cluster.root / "slurmdbd.log", timeout=180)


def _wait_idle(cluster: SlurmCluster, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        for proc in cluster.procs:
            if proc.poll() is not None:
                _unavailable(f"{proc.args[0]} exited ({proc.returncode}): {cluster.log_tail(lines=8)}"
                             f"\n{cluster.log_tail('slurmd.log', 8)}")
        out = cluster.cmd(["sinfo", "-h", "-o", "%T"], check=False)
        state = out.stdout.strip()
        if state == "idle":
            return
        time.sleep(0.5)
    _unavailable(f"node not idle after {timeout:.0f}s (state {state!r}): {cluster.log_tail(lines=8)}")


def _stop(cluster: SlurmCluster) -> None:
    """Cancel this cluster's jobs, then stop the daemons it started (newest first)."""
    if cluster.procs and cluster.procs[-1].poll() is None:
        cluster.cmd(["scancel", "--full", f"--user={getpass.getuser()}"], check=False)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            out = cluster.cmd(["squeue", "-h", "-o", "%i"], check=False)
            if out.returncode != 0 or not out.stdout.strip():
                break
            time.sleep(1.0)
    for proc in reversed(cluster.procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    if missing:
        _unavailable(f"not installed: {', '.join(missing)} (apt-get install slurm-wlm munge)")
    root = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    user, dbd_port, db_port = getpass.getuser(), _free_port(), _free_port()
    conf.write_text(slurm_conf(root, host, user, (_free_port(), _free_port()), dbd_port))
    dbd_conf = root / "slurmdbd.conf"  # found beside slurm.conf; slurmdbd wants it private
    dbd_conf.write_text(slurmdbd_conf(root, host, user, dbd_port, db_port))
    dbd_conf.chmod(0o600)
    (root / "gres.conf").write_text(f"NodeName={host} Name=gpu File=/dev/null\n")
    cluster = SlurmCluster(root=root, conf=conf)
    previous = os.environ.get("SLURM_CONF")
    try:
        _start_munge(cluster)
        _start_mariadb(cluster, db_port)
        _start_slurmdbd(cluster)
        _start(cluster, ["slurmctld", "-D", "-c", "-f", str(conf)], "slurmctld.out")
        _start(cluster, ["slurmd", "-D", "-f", str(conf)], "slurmd.out")
        _wait_idle(cluster)
        os.environ["SLURM_CONF"] = str(conf)
        yield cluster
    finally:
        _stop(cluster)
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
