"""The benchmark helpers: FLOP counts that match the arithmetic, a profile table that is written."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medsam2_hpc.engine.benchmark import count_flops, profile_ops


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


def test_profile_ops_writes_the_table_and_returns_the_top_ops(tmp_path):
    a = torch.randn(64, 64)
    top = profile_ops(lambda: [a @ a for _ in range(3)], torch.device("cpu"), tmp_path / "ops.txt")
    table = (tmp_path / "ops.txt").read_text()
    assert "Self CPU" in table and "aten::mm" in table
    assert any(row["op"] == "aten::mm" and row["calls"] == 3 for row in top)
    assert all(row["self_ms"] >= 0 for row in top)
