"""The benchmark helpers: FLOP counts that match the arithmetic, a profile table that is written."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from medsam2_hpc.engine.benchmark import OpCounter, count_flops, profile_ops, record_compiled_kernels

REPO = Path(__file__).resolve().parents[1]


def test_count_flops_counts_matmuls_and_the_cpus_fused_attention():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    out, flops = count_flops(lambda: a @ b)
    assert flops == 2 * 8 * 16 * 4 and torch.equal(out, a @ b)
    # SAM2's memory attention shape: one 32-wide head, 12 queries, 20 keys; QK^T and AV
    q, k = torch.randn(2, 1, 12, 32), torch.randn(2, 1, 20, 32)
    _, flops = count_flops(lambda: F.scaled_dot_product_attention(q, k, k))
    assert flops == 2 * (2 * 2 * 12 * 20 * 32)


def test_count_flops_includes_the_backward_pass():
    w = torch.randn(16, 4, requires_grad=True)
    loss = (torch.randn(8, 16) @ w).sum()
    _, flops = count_flops(loss.backward)
    assert flops == 2 * 8 * 16 * 4 and w.grad is not None  # dL/dw only: the input needs no grad


def test_count_flops_counts_a_depthwise_convolution_by_hand_arithmetic():
    # the memory encoder's depthwise 7x7 (groups = channels): every output value is 49 multiply-adds
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    w = torch.randn(8, 1, 7, 7, requires_grad=True)
    forward = 2 * 8 * 16 * 16 * 49 * 2  # batch x channels x output pixels x taps x (mul + add)
    y, flops = count_flops(lambda: F.conv2d(x, w, padding=3, groups=8))
    assert flops == forward
    _, flops = count_flops(lambda: y.sum().backward())
    assert flops == 2 * forward  # grad of the input and of the weight, each one forward's work
    assert x.grad is not None and w.grad is not None
    y = F.conv2d(x.detach(), w, padding=3, groups=8)  # only the weight needs a gradient
    _, flops = count_flops(lambda: y.sum().backward())
    assert flops == forward


def test_count_flops_keeps_pytorchs_figure_for_dense_convolutions():
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, 4, 12, 12, requires_grad=True)
    w = torch.randn(6, 4, 3, 3, requires_grad=True)
    y = F.conv2d(x, w, stride=2, padding=1)
    _, ours = count_flops(lambda: y.sum().backward(retain_graph=True))
    theirs = FlopCounterMode(display=False)
    with theirs:
        y.sum().backward()
    assert ours == theirs.get_total_flops() == 2 * (2 * 6 * 6 * 6 * 4 * 9 * 2)


def test_profile_ops_writes_the_table_and_returns_the_top_ops(tmp_path):
    a = torch.randn(64, 64)
    prof = profile_ops(lambda: [a @ a for _ in range(3)], torch.device("cpu"), tmp_path / "ops.txt")
    top, host = prof.top, prof.host_seconds
    table = (tmp_path / "ops.txt").read_text()
    assert "Self CPU" in table and "aten::mm" in table
    assert any(row["op"] == "aten::mm" and row["calls"] == 3 for row in top)
    assert all(row["self_ms"] >= 0 for row in top)
    # every op's self time, so the top ten's too (their milliseconds are rounded to 3 places)
    assert host + 1e-5 >= sum(row["self_ms"] for row in top) / 1e3 > 0


def test_op_counter_counts_forward_and_backward_kernels():
    w = torch.randn(16, 4, requires_grad=True)
    x = torch.randn(8, 16)
    with OpCounter() as ops:
        loss = (x @ w).relu().sum()
    # relu keeps its output for the backward pass: a detach, an op of its own
    assert ops.counts == {"aten.mm": 1, "aten.relu": 1, "aten.detach": 1, "aten.sum": 1}
    with OpCounter() as ops:
        loss.backward()
    # ones_like seed, sum's expand, relu's threshold_backward, mm's transpose and mm (dL/dw only)
    assert ops.counts["aten.mm"] == 1 and ops.counts["aten.threshold_backward"] == 1
    assert ops.total == sum(ops.counts.values()) >= 4


def _block(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Composite ops (linear, layer_norm, reshape, attention, softmax) that decompose above autograd."""
    h = F.layer_norm(F.linear(x, w, b), (8,))
    q = h.reshape(4, 6, 2, 4).transpose(1, 2)
    return F.gelu(F.scaled_dot_product_attention(q, q, q)).softmax(-1).mean()


def test_host_ops_equal_op_counters_on_an_eager_forward():
    x, w, b = torch.randn(4, 6, 8), torch.randn(8, 8), torch.randn(8)
    with OpCounter() as ops:
        _block(x, w, b)
    host = profile_ops(lambda: _block(x, w, b), torch.device("cpu")).host_ops
    # the composites' parts, as they reach the kernels: linear on 3D input is view, t, addmm, view
    assert host.counts == ops.counts == {
        "aten.view": 3, "aten.t": 1, "aten.addmm": 1, "aten.native_layer_norm": 1, "aten.transpose": 1,
        "aten._scaled_dot_product_flash_attention_for_cpu": 1, "aten.gelu": 1, "aten._softmax": 1,
        "aten.mean": 1}
    assert host.kernels == 0 and host.launches == 0


def test_host_ops_equal_op_counters_on_an_eager_step_but_its_detaches():
    x = torch.randn(4, 6, 8)
    w, b = torch.randn(8, 8, requires_grad=True), torch.randn(8, requires_grad=True)
    _block(x, w, b).backward()  # both runs accumulate into existing gradients (add_, no grad stealing)
    with OpCounter() as ops:
        _block(x, w, b).backward()
    host = profile_ops(lambda: _block(x, w, b).backward(), torch.device("cpu")).host_ops
    # under a dispatch mode autograd detaches every output it saves (plain eager does not), and sums
    # gradients out of place where plain eager adds into a buffer it owns (add, not add_)
    assert ops.counts["aten.detach"] > 0 and "aten.detach" not in host.counts
    assert host.total == ops.total - ops.counts["aten.detach"]
    same = Counter({"aten.detach": ops.counts["aten.detach"], "aten.add": ops.counts["aten.add"]})
    assert host.counts - Counter({"aten.add_": ops.counts["aten.add"]}) == ops.counts - same
    assert host.counts["aten._scaled_dot_product_flash_attention_for_cpu_backward"] == 1


@pytest.mark.slow  # a minute or more: the inductor compiles C++ kernels
def test_host_ops_of_a_compiled_function_are_its_kernels_and_externs(tmp_path):
    from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

    x = torch.randn(32, 32)
    w = torch.randn(32, 32, requires_grad=True)

    def f(w: torch.Tensor) -> torch.Tensor:
        return ((x @ w).sin() * 2 + 1).relu().cos().sum()

    eager = profile_ops(lambda: f(w).backward(), torch.device("cpu")).host_ops
    compiled = torch.compile(f)
    # the config's own patch restores the setting (undoing a monkeypatch would delete it from
    # torch's config module, and later compiles in the process would fail)
    try:
        with temporary_cache_dir(str(tmp_path)), \
                torch._inductor.config.patch({"cpp.enable_kernel_profile": False}):
            record_compiled_kernels()
            compiled(w).backward()  # compiles the forward and backward graphs
            with OpCounter() as ops:  # why the profiler is needed: under a dispatch mode they run eagerly
                compiled(w).backward()
            host = profile_ops(lambda: compiled(w).backward(), torch.device("cpu")).host_ops
    finally:
        torch._dynamo.reset()
    assert ops.counts["aten.sin"] == eager.counts["aten.sin"] == 2 and ops.counts["aten.relu"] == 1
    # the pointwise chain fuses into one kernel per graph, the matmuls stay extern calls
    assert host.counts["aten.mm"] == 2 and host.kernels >= 2
    assert "aten.sin" not in host.counts and "aten.relu" not in host.counts
    assert host.total < eager.total and w.grad is not None


def _session(tmp_path: Path, *flags: str, **env: str) -> subprocess.CompletedProcess:
    """benchmarks/gpu_session.sh as a lent GPU runs it (here on the CPU: nvidia-smi may be missing)."""
    return subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_session.sh"), *flags], cwd=REPO,
                          env={**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable,
                               "SKIP_BASELINES": "1", **env},
                          capture_output=True, text=True, timeout=600, check=True)


def _bench_sam2() -> Any:
    spec = importlib.util.spec_from_file_location("bench_sam2", REPO / "benchmarks" / "bench_sam2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_session_times_each_recompute_mode_compiled_and_not_the_compiled_last(tmp_path):
    lines = _session(tmp_path, "--steps", "3", "--warmup", "1", DRY_RUN="1").stdout.splitlines()
    names = [line.split(":")[0] for line in lines]
    parser = _bench_sam2().build_parser()
    runs = {}
    for line in lines:
        name, command = line.split(": ", 1)
        argv = shlex.split(command)
        if argv[1].endswith("bench_sam2.py"):  # each command parses, the script's extra flags win
            args = parser.parse_args(argv[2:])
            assert args.steps == 3 and args.image_size == 1024 and args.organs == 13
            assert args.warmup == (2 if args.compile else 1)  # compiled: recompiles stay out of the timing
            runs[name] = (args.mode, args.checkpoint and (args.keep_attention or "full"), args.compile)
    selective, full, none = True, "full", False
    assert sorted(runs.values(), key=str) == sorted([
        ("train3d", selective, False), ("train3d", full, False), ("train3d", full, True),
        ("train3d", none, False), ("train3d", none, True), ("infer3d", True, False), ("infer3d", True, True)],
        key=str)
    # the eager figures and the attention kernels first: compilation's minutes must not crowd them out
    first_compiled = min(names.index(n) for n, run in runs.items() if run[2])
    assert names.index("attention_default") < first_compiled
    assert names.index("infer3d_s_13organs_default") < first_compiled
    assert not any((tmp_path / "out").iterdir())  # a dry run measures nothing


def test_gpu_session_skips_what_its_time_does_not_cover(tmp_path):
    lines = _session(tmp_path, SESSION_SECONDS="30", DRY_RUN="1").stdout.splitlines()
    assert lines and all(line.endswith("s of the session left") and ": skipped," in line for line in lines)


@pytest.mark.slow  # a minute: one inference run, its counting and profiling
def test_gpu_session_measures_what_runs_names(tmp_path):
    proc = _session(tmp_path, "--config", "sam2_hiera_t", "--image-size", "64", "--frames", "3", "--organs",
                    "2", "--device", "cpu", "--amp", "none", "--steps", "1", "--warmup", "0",
                    RUNS="infer3d_s_13organs_default")
    assert proc.stdout.startswith("infer3d_s_13organs_default: exit 0 ")
    assert "host_ops_per_step" in proc.stdout and "slices_per_s" in proc.stdout
    record = json.loads((tmp_path / "out" / "infer3d_s_13organs_default.json").read_text())
    assert record["host_ops_per_step"] > 100
    assert record["compile"] is False and record["kernel_launches_per_step"] is None
    assert "Self CPU" in (tmp_path / "out" / "infer3d_s_13organs_default.ops.txt").read_text()
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "gpu.csv", "infer3d_s_13organs_default.json", "infer3d_s_13organs_default.log",
        "infer3d_s_13organs_default.ops.txt"}
