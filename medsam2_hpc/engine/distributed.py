"""DistributedDataParallel across the GPUs (and nodes) of one Slurm task, rank from the job.

A profile with several GPUs per task starts one process per GPU (``srun`` / submitit tasks);
each process learns its rank and the world size from :func:`medsam2_hpc.jobenv.job_identity`
(``RANK``/``SLURM_PROCID`` ...) and the rendezvous host from ``MASTER_ADDR`` or the first host
of the Slurm node list (submitit's parser), so trainers never read ``SLURM_*`` themselves.
With one process every helper here is a no-op: trainers call them unconditionally.
"""

from __future__ import annotations

import datetime
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

from ..jobenv import job_identity

__all__ = ["DistEnv", "dist_env", "init_distributed", "is_distributed", "rank", "world_size",
           "is_main_process", "barrier", "cleanup", "wrap_model", "unwrap_model", "make_sampler",
           "all_reduce_mean", "any_process"]

DEFAULT_PORT = 29500


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job: enough for ``init_process_group('env://')``."""

    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int


def _master_addr(env: Mapping[str, str]) -> str:
    if env.get("MASTER_ADDR"):
        return env["MASTER_ADDR"]
    if env.get("SLURM_JOB_NODELIST"):
        # submitit's parser of compressed node lists ("gpu[01-03,07]"), which its own
        # TorchDistributedEnvironment uses, rather than a hand-rolled one.
        from submitit.slurm.slurm import _parse_node_list

        return _parse_node_list(env["SLURM_JOB_NODELIST"])[0]
    return "127.0.0.1"


def _master_port(env: Mapping[str, str]) -> int:
    """Same port on every rank of a job; different jobs on one node rarely collide."""
    if env.get("MASTER_PORT", "").isdigit():
        return int(env["MASTER_PORT"])
    job = env.get("SLURM_JOB_ID")
    return random.Random(job).randint(20000, 60000) if job else DEFAULT_PORT


def dist_env(env: Mapping[str, str] | None = None) -> DistEnv:
    """Read rank, world and rendezvous from ``env`` (default: os.environ)."""
    env = os.environ if env is None else env
    ident = job_identity(env)
    return DistEnv(rank=ident.global_rank, local_rank=ident.local_rank, world_size=ident.world_size,
                   master_addr=_master_addr(env), master_port=_master_port(env))


def init_distributed(device: torch.device, *, env: Mapping[str, str] | None = None,
                     timeout_s: float = 600.0) -> DistEnv:
    """Join the job's process group (nccl on CUDA, gloo on the CPU) when it has several processes.

    On CUDA each process takes GPU ``local_rank`` of its node. Returns the DistEnv either way.
    """
    info = dist_env(env)
    if info.world_size <= 1 or dist.is_initialized():
        return info
    if device.type == "cuda":
        torch.cuda.set_device(info.local_rank % max(torch.cuda.device_count(), 1))
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo",
        init_method=f"tcp://{info.master_addr}:{info.master_port}",
        rank=info.rank, world_size=info.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return info


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Only rank 0 writes checkpoints, TensorBoard events, metrics and predictions."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, device: torch.device, **ddp_kwargs: Any) -> torch.nn.Module:
    """DDP around ``model`` when distributed (gradients averaged across ranks), else ``model``."""
    if not is_distributed():
        return model
    device_ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids, **ddp_kwargs)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DDP: its state_dict has no ``module.`` prefix, so checkpoints load
    the same with or without DDP."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def make_sampler(dataset: Dataset, *, shuffle: bool, seed: int = 0) -> DistributedSampler | None:
    """A shard of ``dataset`` per rank (pass to DataLoader(sampler=...)); None when not distributed.

    Call ``sampler.set_epoch(epoch)`` each epoch so the shuffle differs between epochs.
    """
    if not is_distributed():
        return None
    return DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=shuffle,
                              seed=seed)


def all_reduce_mean(value: float) -> float:
    """Mean of a scalar over ranks (validation scores computed on each rank's shard)."""
    if not is_distributed():
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return float(tensor.item()) / world_size()


def any_process(flag: bool) -> bool:
    """True on every rank when any rank's ``flag`` is set (a stop signal seen by one rank)."""
    if not is_distributed():
        return bool(flag)
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())
