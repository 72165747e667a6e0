"""Where this process runs: one object over the SLURM_* variables (submitit's JobEnvironment idea).

Trainers and status files ask this object; nothing else reads ``SLURM_*`` directly.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass

__all__ = ["GPUS_ENV", "JobIdentity", "job_identity"]

# Set by the launcher in each job of a profile with GPUs, so `device: auto` can tell "no GPU
# was asked for" (train on the CPU) from "a GPU was asked for but is not visible" (an error).
GPUS_ENV = "MEDSAM2_GPUS"


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
    )
