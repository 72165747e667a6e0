"""Where this process runs: one object over the SLURM_* variables (submitit's JobEnvironment idea).

Trainers, the engine's process group and status files ask this object; nothing else reads
``SLURM_*`` directly.
"""

from __future__ import annotations

import os
import random
import re
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass

__all__ = ["GPUS_ENV", "JobIdentity", "job_identity", "first_host"]

# Set by the launcher in each job of a profile with GPUs, so `device: auto` can tell "no GPU
# was asked for" (train on the CPU) from "a GPU was asked for but is not visible" (an error).
GPUS_ENV = "MEDSAM2_GPUS"
DEFAULT_PORT = 29500


@dataclass(frozen=True)
class JobIdentity:
    host: str
    pid: int
    job_id: str | None
    array_job_id: str | None
    array_task_id: int | None
    restart_count: int
    global_rank: int
    local_rank: int
    world_size: int
    gpus_requested: int = 0  # what the launcher's profile asked for (MEDSAM2_GPUS), 0 when unknown
    master_addr: str = "127.0.0.1"  # rendezvous of the job's ranks: MASTER_ADDR, else its first node
    master_port: int = DEFAULT_PORT

    @property
    def under_slurm(self) -> bool:
        return self.job_id is not None

    def as_dict(self) -> dict:
        return asdict(self)


def _int(env: Mapping[str, str], *names: str, default: int) -> int:
    for name in names:
        if env.get(name, "").strip().lstrip("-").isdigit():
            return int(env[name])
    return default


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: ``gpu[07-08,11],cpu1`` -> ``gpu07``."""
    match = re.match(r"([^,\[]*)(?:\[([^,\]-]+))?", nodelist.strip())
    return "".join(part or "" for part in match.groups()) if match else nodelist


def _master_port(env: Mapping[str, str]) -> int:
    """Same port on every rank of a job; different jobs on one node rarely collide."""
    if env.get("MASTER_PORT", "").isdigit():
        return int(env["MASTER_PORT"])
    job = env.get("SLURM_JOB_ID")
    return random.Random(job).randint(20000, 60000) if job else DEFAULT_PORT


def job_identity(env: Mapping[str, str] | None = None) -> JobIdentity:
    """Read the job's identity from ``env`` (default: os.environ); works outside Slurm too."""
    env = os.environ if env is None else env
    task = env.get("SLURM_ARRAY_TASK_ID")
    return JobIdentity(
        host=socket.gethostname(),
        pid=os.getpid(),
        job_id=env.get("SLURM_JOB_ID"),
        array_job_id=env.get("SLURM_ARRAY_JOB_ID"),
        array_task_id=int(task) if task and task.isdigit() else None,
        restart_count=_int(env, "SLURM_RESTART_COUNT", default=0),
        global_rank=_int(env, "RANK", "SLURM_PROCID", default=0),
        local_rank=_int(env, "LOCAL_RANK", "SLURM_LOCALID", default=0),
        world_size=_int(env, "WORLD_SIZE", "SLURM_NTASKS", default=1),
        gpus_requested=_int(env, GPUS_ENV, default=0),
        master_addr=env.get("MASTER_ADDR") or first_host(env.get("SLURM_JOB_NODELIST") or "127.0.0.1"),
        master_port=_master_port(env),
    )
