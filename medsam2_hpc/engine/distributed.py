"""Data-parallel training across the GPUs (and nodes) of one Slurm task, owned by the engine.

A profile with several GPUs per task starts one process per GPU (``srun`` / submitit tasks).
``runner.run_task`` joins them into one process group (:func:`joined`, rank, world and rendezvous
from :func:`medsam2_hpc.jobenv.job_identity`); a trainer then needs only three things, all no-ops
in a single process:

- :func:`epoch_loader`: its rank's shard of the training set, reshuffled each epoch;
- ``TrainLoop.backward`` / ``TrainLoop.step``: :class:`Replicas` averages the gradients over the
  ranks before every optimizer step, so the weights stay identical on every rank;
- :func:`on_main`: validation and test scoring on rank 0, the result handed to every rank;
  only rank 0 writes (status.json, checkpoints, metrics.json, TensorBoard, predictions, plots).

Why not ``DistributedDataParallel``: its reducer is armed by the wrapped module's ``forward``,
and the SAM2 trainers drive the model's parts (``SAM2Base.forward`` raises NotImplementedError),
skip clips without organs and accumulate gradients over clips. One all-reduce of the flattened
gradients per optimizer step is exact for all three trainers, works with activation
checkpointing, and never hangs on a parameter some rank did not use.
"""

from __future__ import annotations

import contextlib
import datetime
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..jobenv import JobIdentity, job_identity

__all__ = ["init_distributed", "joined", "is_distributed", "rank", "world_size", "is_main_process",
           "barrier", "cleanup", "shard_size", "epoch_loader", "Replicas", "on_main", "all_reduce_mean",
           "any_process"]

T = TypeVar("T")
_BUCKET = 1 << 24  # gradient elements per all-reduce (64 MiB in fp32)
_WAIT = datetime.timedelta(hours=24)  # ranks waiting for rank 0's scoring; the job's time limit ends a hang
_WAIT_GROUP: Any = None  # a gloo group with the long timeout above, for on_main


def init_distributed(*, env: Mapping[str, str] | None = None, timeout_s: float = 1800.0) -> JobIdentity:
    """Join the job's process group when it has several processes; returns the job's identity.

    The backend follows each tensor (``cpu:gloo,cuda:nccl``), so the process group exists before a
    trainer picks its device; with CUDA each process takes GPU ``local_rank`` of its node.
    """
    ident = job_identity(env)
    if ident.world_size <= 1 or dist.is_initialized():
        return ident
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(ident.local_rank % torch.cuda.device_count())
    dist.init_process_group(
        backend="cpu:gloo,cuda:nccl" if cuda else "gloo",
        init_method=f"tcp://{ident.master_addr}:{ident.master_port}",
        rank=ident.global_rank, world_size=ident.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    global _WAIT_GROUP
    _WAIT_GROUP = dist.new_group(backend="gloo", timeout=_WAIT)
    return ident


@contextlib.contextmanager
def joined(*, env: Mapping[str, str] | None = None) -> Iterator[JobIdentity]:
    """The job's process group for the duration of a run (left again on every exit)."""
    ident = init_distributed(env=env)
    try:
        yield ident
    finally:
        cleanup()


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
    global _WAIT_GROUP
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _WAIT_GROUP = None


def shard_size(n: int) -> int:
    """Items of an ``n``-item dataset each rank sees per epoch (DistributedSampler pads to equal shards)."""
    return math.ceil(n / world_size())


def epoch_loader(dataset: Dataset, *, epoch: int, seed: int, batch_size: int, **kwargs: Any) -> DataLoader:
    """The training DataLoader of one epoch: this rank's shard, in an order fixed by (seed, epoch).

    The same permutation as a single process's (``randperm`` seeded ``seed * 100003 + epoch``), split
    into disjoint shards; so a resumed run sees the same batches, whatever its worker count.
    """
    base = seed * 100003
    if is_distributed():
        sampler = DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=True, seed=base)
        sampler.set_epoch(epoch)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(base + epoch), **kwargs)


class Replicas:
    """Keeps ``model`` the same on every rank: rank 0's weights at the start, averaged gradients after.

    Only the optimizer's parameters are averaged (frozen parts stay out); a parameter no rank
    used keeps ``grad = None``, as in a single process, so the optimizer leaves it alone.
    """

    def __init__(self, model: torch.nn.Module, params: list[torch.nn.Parameter]) -> None:
        self.model, self.params = model, params
        if is_distributed():
            with torch.no_grad():
                for tensor in model.state_dict().values():
                    dist.broadcast(tensor, src=0)

    def average_gradients(self) -> None:
        """Call after the last ``backward`` of a step, on every rank, before unscaling or clipping."""
        if not is_distributed():
            return
        used = torch.tensor([p.grad is not None for p in self.params], dtype=torch.int32,
                            device=self.params[0].device)
        dist.all_reduce(used)
        live = [p for p, n in zip(self.params, used.tolist(), strict=True) if n]
        for p in live:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for bucket in _buckets(live):
            flat = torch.cat([p.grad.reshape(-1) for p in bucket])
            dist.all_reduce(flat)
            flat /= world_size()
            for p, part in zip(bucket, flat.split([p.numel() for p in bucket]), strict=True):
                p.grad.copy_(part.view_as(p))
        with torch.no_grad():  # BatchNorm statistics: rank 0's, as DDP broadcasts them
            for buf in self.model.buffers():
                if buf.is_floating_point():
                    dist.broadcast(buf, src=0)


def _buckets(params: list[torch.nn.Parameter]) -> Iterator[list[torch.nn.Parameter]]:
    """Runs of parameters of one dtype and device, about ``_BUCKET`` elements each."""
    bucket: list[torch.nn.Parameter] = []
    size = 0
    for p in params:
        if bucket and (size + p.numel() > _BUCKET or (p.dtype, p.device) != (bucket[0].dtype,
                                                                               bucket[0].device)):
            yield bucket
            bucket, size = [], 0
        bucket.append(p)
        size += p.numel()
    if bucket:
        yield bucket


def on_main(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 only (scoring with its memory bank and files, as one GPU would), and its
    result on every rank. The other ranks wait without a collective timeout of their own."""
    if not is_distributed():
        return fn()
    box: list[Any] = [fn() if is_main_process() else None]
    dist.broadcast_object_list(box, src=0, group=_WAIT_GROUP)  # pickles only between our own ranks
    return box[0]


def all_reduce_mean(value: float) -> float:
    """Mean of a scalar over ranks (a training loss each rank computed on its shard)."""
    if not is_distributed():
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(tensor)  # a CPU tensor: gloo, whatever the device of the model
    return float(tensor.item()) / world_size()


def any_process(flag: bool) -> bool:
    """True on every rank when any rank's ``flag`` is set (a stop signal seen by one rank)."""
    if not is_distributed():
        return bool(flag)
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())
