"""The benchmark helpers: FLOP counts that match the arithmetic, a profile table that is written."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medsam2_hpc.engine.benchmark import OpCounter, count_flops, profile_ops


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
    top, host = profile_ops(lambda: [a @ a for _ in range(3)], torch.device("cpu"), tmp_path / "ops.txt")
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
