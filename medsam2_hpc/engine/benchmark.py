"""What the throughput benchmarks share: timing with device syncs, memory figures, the JSON record.

Every benchmark in ``benchmarks/`` prints one JSON object with the same environment keys, so
figures from different scripts and machines can be compared side by side.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..atomic import write_json, write_text
from .runtime import peak_memory_gb, peak_rss_gb, reset_peak_memory

__all__ = ["sync", "memory_figures", "timed", "count_flops", "OpCounter", "HostOps", "count_host_ops",
           "record_compiled_kernels", "Profile", "profile_ops", "positive_int", "emit"]


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


def _cpu_attention_flops(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None,
                         **kwargs: Any) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward_flops(grad_out: Any, query: Any, key: Any, value: Any, *args: Any,
                                  out_shape: Any = None, **kwargs: Any) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out, query, key, value)


def _conv_backward_flops(grad_out: Any, x: Any, w: Any, _bias: Any, _stride: Any, _padding: Any,
                         _dilation: Any, transposed: bool, _output_padding: Any, _groups: int,
                         output_mask: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """A convolution's backward: each gradient asked for (input, weight) costs one forward.

    PyTorch's own formula counts the weight gradient as a dense convolution whatever ``groups``
    is: a depthwise conv's (groups = channels) came out ``channels`` times too large.
    """
    from torch.utils.flop_counter import conv_flop_count

    return (int(output_mask[0]) + int(output_mask[1])) * conv_flop_count(x, w, grad_out, transposed)


def count_flops(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``fn`` once under PyTorch's FLOP counter; return (its result, FLOPs it ran).

    Matmuls, convolutions and fused attention, forward and backward (recomputation included):
    dividing by measured seconds tells how close a step runs to the device's peak. PyTorch
    counts the GPU's attention kernels but not the CPU's; those are added here, and grouped
    convolutions' backward is counted by :func:`_conv_backward_flops` (PyTorch's ignores groups).
    """
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    counter = FlopCounterMode(display=False, custom_mapping={
        aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flops,
        aten.convolution_backward: _conv_backward_flops})
    with counter:
        result = fn()
    return result, counter.get_total_flops()


class OpCounter(TorchDispatchMode):
    """Counts the aten ops that reach the kernels while active (``with OpCounter() as ops:``).

    Each is a host-side dispatch (microseconds of Python and C++ in eager mode) whatever its
    size, so the count times the per-op cost floors a step's time when the GPU is fast. Ops are
    seen below autograd, after composite ops have decomposed: the backward pass's and a
    checkpoint's recompute count too; results a selective checkpoint serves from its cache do not.
    """

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


# what the inductor's generated code records per kernel call: C++ kernels on the CPU (when built
# with record_compiled_kernels), Triton kernels on a GPU (whenever the profiler runs)
_KERNEL_RECORD = re.compile(r"(graph_\d+_)?(cpp|triton)_")
_LAUNCHES = frozenset({"cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx"})


@cache
def _op_kind(name: str, overload: str) -> str | None:
    """"op" for an operator the dispatcher runs, "composite" for one that decomposes above autograd
    (CompositeImplicitAutograd: its parts are what reach the kernels), None for other events."""
    try:
        torch._C._dispatch_find_schema_or_throw(name, overload)
    except RuntimeError:
        return None
    composite = torch._C._dispatch_has_kernel_for_dispatch_key(f"{name}.{overload}" if overload else name,
                                                               "CompositeImplicitAutograd")
    return "composite" if composite else "op"


@dataclass(frozen=True)
class HostOps:
    """Host ops of a profiled run: ``counts`` (op, named as :class:`OpCounter` names it, or compiled
    kernel -> calls), how many of them are ``kernels``, and the CUDA kernel ``launches`` (0 on the CPU)."""

    counts: Counter[str]
    kernels: int
    launches: int

    @property
    def total(self) -> int:
        """What the host issued, one by one: operators plus compiled kernels (launches are inside them)."""
        return sum(self.counts.values())


def count_host_ops(events: Iterable[Any]) -> HostOps:
    """The host ops in the profiler's events (``prof.events()``), right with and without torch.compile.

    An operator counts once where the dispatcher runs it outside any counted op: the ops it calls
    inside are its own work, and a CompositeImplicitAutograd op counts as the ops it decomposes
    into. That is :class:`OpCounter`'s below-autograd view, less the ``detach`` a dispatch mode
    itself causes for each output autograd saves (plain eager runs none). A compiled graph's code
    counts by its calls: each generated kernel (its profiler record) and each extern op (an
    operator, as above); OpCounter cannot count those, as under a dispatch mode the compiled
    regions run eagerly. The profiler needs ``_ExperimentalConfig(capture_overload_names=True)``.
    """
    from torch.autograd import DeviceType

    counts: Counter[str] = Counter()
    kernels = launches = 0
    # roots of each thread's tree (the GPU's own kernel events, Triton's named like their records, are not)
    stack = [e for e in events if e.device_type == DeviceType.CPU and not e.is_async and e.cpu_parent is None]
    while stack:
        event = stack.pop()
        if event.name in _LAUNCHES:
            launches += 1
        kind = _op_kind(event.name, event.overload_name or "") if "::" in event.name else None
        if kind == "op":
            counts[event.name.replace("::", ".")] += 1
        elif _KERNEL_RECORD.match(event.name):
            counts[event.name] += 1
            kernels += 1
        else:
            stack.extend(event.cpu_children)
            continue
        launches += _count_launches(event.cpu_children)
    return HostOps(counts, kernels, launches)


def _count_launches(events: Iterable[Any]) -> int:
    stack, n = list(events), 0
    while stack:
        event = stack.pop()
        n += event.name in _LAUNCHES
        stack.extend(event.cpu_children)
    return n


def record_compiled_kernels() -> None:
    """Make the C++ kernels the inductor compiles from now on show in the profiler, one record per call.

    Triton kernels on a GPU show whenever the profiler runs; without this the CPU's compiled
    kernels are invisible to :func:`count_host_ops`. Set before the first compiled call (it is
    part of the generated code: a record handle per kernel call, nanoseconds when no profiler runs).
    """
    import torch._inductor.config

    torch._inductor.config.cpp.enable_kernel_profile = True


@dataclass(frozen=True)
class Profile:
    """One profiled run: the top ops by self time, the host's seconds and its ops."""

    top: list[dict[str, Any]]
    host_seconds: float
    host_ops: HostOps


def profile_ops(fn: Callable[[], Any], device: torch.device, table: Path | None = None, rows: int = 25
                ) -> Profile:
    """Run ``fn`` once under torch.profiler: where the time goes, op by op, and the host's share.

    ``top``: the ten ops with the most self time (device time on a GPU, CPU time otherwise) as
    name, calls and milliseconds. ``host_seconds``: the CPU self time of every event, i.e. what the
    host spent issuing (on a CPU device also running) the work. ``host_ops``: :func:`count_host_ops`.
    ``table``: also write PyTorch's table of the ``rows`` top ops there.
    """
    from torch.profiler import ProfilerActivity, _ExperimentalConfig, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities,
                 experimental_config=_ExperimentalConfig(capture_overload_names=True)) as prof:
        fn()
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = prof.key_averages()
    if table is not None:
        write_text(table, events.table(sort_by=key, row_limit=rows) + "\n")
    top = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:10]
    host = sum(e.self_cpu_time_total for e in events) / 1e6
    return Profile([{"op": e.key, "calls": e.count, "self_ms": round(getattr(e, key) / 1e3, 3)} for e in top],
                   host, count_host_ops(prof.events()))


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
