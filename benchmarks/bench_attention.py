#!/usr/bin/env python
"""The memory attention's kernel alone: which SDPA backend runs it and how fast, as one JSON object.

    python benchmarks/bench_attention.py [--seconds 60] [--attention default|cudnn] [--tiny]

Issue 17's shapes at 1024 px: batch 13 (organs), one head, 4096 queries (a 64 x 64 slice)
against 4096 keys (self-attention) and 28,672 (cross-attention to 7 memory frames), forward
and backward, dropout 0 and 0.1. Head dims: 256 for queries, keys and values (Meta's path)
and 256 with 64-wide values (the rank-64 value path of ``models/memory_attention.py``; 72 with
dropout, where a ones column padded to a multiple of 8 rides along). Per case: the backend
PyTorch chose (the fused op the profiler saw; ``math`` when none), milliseconds per
forward+backward and TFLOP/s achieved. ``--seconds`` is shared by the cases; ``--tiny`` shrinks
every size (a check that the script runs, on a CPU too).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from medsam2_hpc.engine.benchmark import emit, sync
from medsam2_hpc.engine.runtime import pick_device
from medsam2_hpc.errors import guarded

__all__ = ["CASES", "build_parser", "main"]

# (name, keys as multiples of the query count, value head dim, dropout)
CASES = [(f"{kind}_v{v}_p{p}", keys, v, p)
         for kind, keys in (("self", 1), ("cross", 7))
         for p in (0.0, 0.1)
         for v in (256, 72 if p else 64)]
# the fused ops that tell which backend ran, by the profiler's names
_BACKENDS = {"_scaled_dot_product_cudnn_attention": "cudnn", "_scaled_dot_product_flash_attention": "flash",
             "_scaled_dot_product_efficient_attention": "efficient",
             "_scaled_dot_product_flash_attention_for_cpu": "cpu_flash"}
_CUDNN_FIRST = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                SDPBackend.MATH]


def _backend(fn: Any) -> str:
    """The fused attention op ``fn`` ran, by the profiler's names (``math`` when none)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = {event.key.removeprefix("aten::") for event in prof.key_averages()}
    found = sorted(_BACKENDS[name] for name in names if name in _BACKENDS)
    return "+".join(found) or "math"


def _case(batch: int, queries: int, keys: int, v_dim: int, dropout: float, seconds: float,
          device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Time forward+backward of one shape until ``seconds`` pass (at least 2 runs after a warm-up)."""
    def make(n: int, d: int) -> torch.Tensor:
        return torch.randn(batch, 1, n, d, device=device, dtype=dtype, requires_grad=True)

    q, k, v = make(queries, 256), make(keys, 256), make(keys, v_dim)

    def run() -> None:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        out.backward(torch.ones_like(out))

    run()
    backend = _backend(run)
    sync(device)
    runs, t0 = 0, time.perf_counter()
    while runs < 2 or time.perf_counter() - t0 < seconds:
        run()
        runs += 1
        sync(device)
    per_run = (time.perf_counter() - t0) / runs
    # forward: Q K^T and P V; backward: twice as many (dQ, dK from dS; dV, dP), as FlopCounterMode
    flop = 2 * batch * queries * keys * (256 + v_dim) * 3
    return {"backend": backend, "runs": runs, "ms_per_fwd_bwd": per_run * 1e3,
            "achieved_tflops": flop / per_run / 1e12}


def bench(args: argparse.Namespace) -> dict[str, Any]:
    device = pick_device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    batch, queries = (2, 64) if args.tiny else (13, 4096)
    kernels = sdpa_kernel(_CUDNN_FIRST, set_priority=True) if args.attention == "cudnn" \
        else contextlib.nullcontext()
    cases = {}
    with kernels:
        for name, keys, v_dim, dropout in CASES:
            cases[name] = _case(batch, queries, keys * queries, v_dim, dropout, args.seconds / len(CASES),
                                device, dtype)
    return {"batch": batch, "queries": queries, "heads": 1, "dtype": str(dtype).removeprefix("torch."),
            "attention": args.attention, "seconds_budget": args.seconds, "cases": cases}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench_attention.py", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0, help="time shared by all cases")
    p.add_argument("--attention", default="default", choices=["default", "cudnn"],
                   help="PyTorch's own kernel order, or cuDNN's fused attention first")
    p.add_argument("--tiny", action="store_true", help="small shapes: a check that it runs")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="also write the JSON here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        from pathlib import Path

        emit("attention", bench(args), pick_device(args.device), Path(args.out) if args.out else None)
        return 0

    return guarded(run, "bench_attention.py")


if __name__ == "__main__":
    sys.exit(main())
