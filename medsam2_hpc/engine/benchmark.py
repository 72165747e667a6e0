"""What the throughput benchmarks share: timing with device syncs, memory figures, the JSON record.

Every benchmark in ``benchmarks/`` prints one JSON object with the same environment keys, so
figures from different scripts and machines can be compared side by side.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..atomic import write_json
from .runtime import peak_memory_gb, peak_rss_gb, reset_peak_memory

__all__ = ["sync", "memory_figures", "timed", "positive_int", "emit"]


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so wall-clock time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory_figures(device: torch.device) -> dict[str, Any]:
    """Peak CUDA memory on a GPU; the process's peak RSS on the CPU (what limits a CPU job)."""
    if device.type == "cuda":
        return {"peak_mem_gb": peak_memory_gb(device), "mem_kind": "cuda"}
    return {"peak_mem_gb": peak_rss_gb(), "mem_kind": "rss"}


def timed(fn: Callable[[], Any], steps: int, warmup: int, device: torch.device) -> tuple[float, list[Any]]:
    """Run ``fn`` ``warmup`` times untimed, then ``steps`` times; return (seconds, results).

    The peak-memory counter is reset after the warm-up, so it reports the steady state.
    """
    for _ in range(warmup):
        fn()
    sync(device)
    reset_peak_memory(device)
    t0 = time.perf_counter()
    results = [fn() for _ in range(steps)]
    sync(device)
    return time.perf_counter() - t0, results


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return value


def emit(mode: str, result: dict[str, Any], device: torch.device, out: Path | None,
         **tags: Any) -> dict[str, Any]:
    """Print the result (one JSON line) with the environment that produced it; also write ``out``."""
    record = {
        **tags, "mode": mode, "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__, "python": platform.python_version(), "host": platform.node(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **result,
    }
    print(json.dumps(record, sort_keys=True))
    if out is not None:
        write_json(out, record)
    return record
