"""Activation memory counted on fake CUDA tensors (engine/fake_memory.py, bench_sam2.py --mode memory3d).

No GPU here: the forward runs on fake tensors that say they live on one. The counter is checked
against hand arithmetic, then the benchmark's figure against what each recompute must hold.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from medsam2_hpc.engine.fake_memory import fake_cuda, held_bytes

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_held_bytes_counts_what_the_graph_saves():
    """relu(x W^T) summed: relu keeps its (8, 32) fp32 output for the backward pass (1,024 bytes),
    the loss is 4; x and W were made before. Checkpointed, the region keeps nothing of its own.
    Under autocast the matmul runs in bf16 on the "GPU": W's bf16 copy (32 x 16 x 2) and x's
    (8 x 16 x 2) are saved, and relu's output is bf16 (8 x 32 x 2)."""
    with fake_cuda():
        x = torch.empty(8, 16, device="cuda")
        w = torch.empty(32, 16, device="cuda", requires_grad=True)
        assert held_bytes(lambda: F.linear(x, w).relu().sum()) == 8 * 32 * 4 + 4
        assert held_bytes(lambda: torch.utils.checkpoint.checkpoint(
            lambda a, b: F.linear(a, b).relu(), x, w, use_reentrant=False).sum()) == 4
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16_saved = 32 * 16 * 2 + 8 * 16 * 2 + 8 * 32 * 2
            assert held_bytes(lambda: F.linear(x, w).relu().sum()) == bf16_saved + 4
        q = torch.empty(1, 1, 8, 16, device="cuda", requires_grad=True)  # the GPU's kernel, with dropout
        assert F.scaled_dot_product_attention(q, q, q, dropout_p=0.1).grad_fn.name().startswith(
            "ScaledDotProductCudnn")


def _memory3d(tmp_path: Path, *argv: str) -> dict:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_sam2.py"
    spec = importlib.util.spec_from_file_location("bench_sam2", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "memory.json"
    assert bench.main(["--mode", "memory3d", "--device", "cpu", "--out", str(out), *argv]) == 0
    return json.loads(out.read_text())


def test_memory3d_orders_the_recomputes(tmp_path):
    """Keeping everything holds most, the selective recompute (attention outputs kept) less, the
    full recompute least; the state does not depend on it."""
    small = ["--config", "sam2_hiera_t", "--image-size", "128", "--organs", "3", "--frames", "4"]
    runs = {name: _memory3d(tmp_path, *small, *flags) for name, flags in
            [("none", ["--no-checkpoint"]), ("selective", []), ("full", ["--recompute-attention"])]}
    held = {name: r["activation_gib_estimate"] for name, r in runs.items()}
    assert held["none"] > held["selective"] > held["full"] > 0, held
    assert len({r["state_gib"] for r in runs.values()}) == 1 and runs["none"]["state_gib"] > 0


@pytest.mark.slow
def test_memory3d_at_the_gpu_configuration(tmp_path):
    """Issue 17's configuration (Hiera-S, 1024 px, bf16, 13 organs, 8-slice clips): storing every
    activation does not fit the 24 GiB budget, the default recompute does."""
    issue = ["--config", "sam2_hiera_s", "--image-size", "1024", "--organs", "13", "--frames", "8"]
    none = _memory3d(tmp_path, *issue, "--no-checkpoint")
    default = _memory3d(tmp_path, *issue)
    assert none["organs"] == default["organs"] == 13 and default["amp"] == "bf16"
    assert none["activation_gib_estimate"] > 24
    assert default["activation_gib_estimate"] + default["state_gib"] < 24
