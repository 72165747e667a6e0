"""Device, precision, seeding and memory figures shared by every trainer.

torch is imported by the functions that use it: a trainer's check calls :func:`pick_device`
while ``submit`` checks a study, which then imports no torch (only the spelling is checked).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import resource
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..errors import InputError
from ..jobenv import job_identity
from ..precheck import before_queue

if TYPE_CHECKING:
    import torch

__all__ = ["pick_device", "autocast", "seed_everything", "peak_memory_gb", "reset_peak_memory",
           "count_params_m", "AMP_MODES"]

AMP_MODES = ("bf16", "fp16", "none")


def pick_device(requested: str | None = None) -> torch.device | None:
    """CUDA when present (or when asked for), else the CPU.

    Before queueing (on a login node without GPUs) only the spelling is checked, and None
    returned: the job's own check asks the node it runs on.
    """
    if before_queue():
        if requested in (None, "", "auto", "cpu") or str(requested).isdigit() or \
                re.fullmatch(r"cuda(:\d+)?", str(requested)):
            return None
        raise InputError(f"hparams.device: {requested!r} is not auto, cpu, cuda, cuda:N or N")
    import torch

    if requested in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        wanted = job_identity().gpus_requested
        if wanted:
            raise InputError(f"device 'auto': the job's profile asked for {wanted} GPU(s) but none is "
                             "visible here (no --nv, no driver, or CUDA_VISIBLE_DEVICES empty); "
                             "set hparams.device: cpu to train on the CPU on purpose")
        return torch.device("cpu")
    if str(requested).isdigit():
        requested = f"cuda:{requested}"
    if str(requested).startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {requested!r} requested but CUDA is not available on this host")
    return torch.device(requested)


@contextlib.contextmanager
def autocast(device: torch.device, amp: str) -> Iterator[None]:
    """bf16/fp16 autocast on CUDA; on the CPU training stays fp32 (CPU autocast is slow)."""
    if amp not in AMP_MODES:
        raise InputError(f"-amp {amp!r} is not one of {', '.join(AMP_MODES)}")
    if device.type != "cuda" or amp == "none":
        yield
        return
    import torch

    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    with torch.autocast("cuda", dtype=dtype):
        yield


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> float | None:
    """Peak CUDA memory in GiB; None on the CPU (:func:`peak_rss_gb` gives the process's peak there)."""
    if device.type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated(device) / 2**30
    return None


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def count_params_m(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6
