"""Data-parallel training on the CPU: two gloo processes train one model through TrainLoop.

There is no GPU here, so the ranks use gloo on the CPU where a GPU job uses NCCL; the engine's
code path is the same. Each rank is a separate ``python -m tests.test_distributed`` process with
the variables srun would set (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID), as on a multi-GPU Slurm
task. Each rank gets its own run directory, so "only rank 0 writes" is an observation rather than
a guess. The trainers themselves under two ranks: tests/test_ddp_trainers.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medsam2_hpc.engine.distributed import (
    Replicas,
    all_reduce_mean,
    cleanup,
    epoch_loader,
    init_distributed,
    is_main_process,
    shard_size,
)
from medsam2_hpc.jobenv import job_identity
from tests.ranks import free_port

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3
N_SAMPLES = 48


def _launch(out: Path, world: int = 2, stop_at: str = "") -> list[int]:
    """Start ``world`` ranks like srun would and return their exit codes."""
    port = str(free_port())
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")
            and not k.startswith("SLURM_")}
    procs = []
    for rank in range(world):
        env = {**base, "SLURM_JOB_ID": "4242", "SLURM_PROCID": str(rank), "SLURM_NTASKS": str(world),
               "SLURM_LOCALID": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "OMP_NUM_THREADS": "1", "TEST_DDP_STOP_AT": stop_at}
        procs.append(subprocess.Popen([sys.executable, "-m", "tests.test_distributed", str(out)],
                                      cwd=REPO, env=env))
    return [p.wait(timeout=180) for p in procs]


def _worker(out: Path) -> int:
    """One rank: seeded differently per rank so only the engine's broadcast can make the ranks agree."""
    from torch.utils.data import TensorDataset

    from medsam2_hpc.engine import LoopConfig, TrainLoop
    from medsam2_hpc.engine.stop import StopRequested, request_stop
    from medsam2_hpc.errors import EXIT_REQUEUE
    from medsam2_hpc.task import RunDir

    info = init_distributed()
    torch.manual_seed(100 + info.global_rank)
    model = torch.nn.Linear(4, 1)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(N_SAMPLES, 4, generator=gen)
    data = TensorDataset(x, x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]), torch.arange(N_SAMPLES))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loop = TrainLoop(RunDir(out / f"rank{info.global_rank}"), model=model, optimizer=opt,
                     config=LoopConfig(epochs=EPOCHS))
    loop.resume(out / "rank0" / "checkpoints" / "last.pt")
    stop_at = os.environ["TEST_DDP_STOP_AT"] or "-1:-1:-1"
    stop_rank, stop_epoch, stop_batch = (int(v) for v in stop_at.split(":"))
    seen: dict[int, list[int]] = {}

    def train_epoch(epoch: int) -> dict[str, float]:
        losses = []
        loader = epoch_loader(data, epoch=epoch, seed=0, batch_size=6)
        for batch, (xb, yb, idx) in enumerate(loader):
            seen.setdefault(epoch, []).extend(idx.tolist())
            loss = torch.nn.functional.mse_loss(model(xb), yb)
            loop.backward(loss)
            loop.step()
            losses.append(loss.item())
            if (info.global_rank, epoch, batch) == (stop_rank, stop_epoch, stop_batch):
                request_stop()  # the signal reached this rank only
            loop.check_stop()
        return {"loss": all_reduce_mean(sum(losses) / len(losses))}

    def validate(epoch: int) -> dict[str, float]:  # rank 0 alone (the loop hands its result to all)
        with torch.no_grad():
            return {"dice": -torch.nn.functional.mse_loss(model(x), data.tensors[1]).item()}

    try:
        state = loop.fit(train_epoch, validate)
        code = 0
    except StopRequested:
        state, code = loop.state, EXIT_REQUEUE
    torch.save({"initial": initial, "final": model.state_dict(), "seen": seen,
                "main": is_main_process(), "history": state.history, "epoch": state.epoch},
               out / f"result{info.global_rank}.pt")
    cleanup()
    return code


def _results(out: Path) -> list[dict]:
    return [torch.load(out / f"result{r}.pt", weights_only=True) for r in range(2)]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp_full")
    assert _launch(out) == [0, 0]
    return out


def test_two_ranks_train_identical_weights_on_disjoint_shards(full_run):
    r0, r1 = _results(full_run)
    assert r0["main"] and not r1["main"]
    assert not torch.equal(r0["initial"]["weight"], r1["initial"]["weight"])  # seeded apart
    for key in r0["final"]:
        assert torch.equal(r0["final"][key], r1["final"][key]), key
    assert not torch.equal(r0["final"]["weight"], r0["initial"]["weight"])
    for epoch in range(EPOCHS):
        a, b = set(r0["seen"][epoch]), set(r1["seen"][epoch])
        assert not a & b and a | b == set(range(N_SAMPLES))
    losses = [h["train/loss"] for h in r0["history"]]
    assert losses[-1] < losses[0]


def test_only_rank0_writes_checkpoint_and_tensorboard_unwrapped(full_run):
    rank0, rank1 = full_run / "rank0", full_run / "rank1"
    assert (rank0 / "checkpoints" / "last.pt").is_file() and (rank0 / "checkpoints" / "best.pt").is_file()
    assert any((rank0 / "logs" / "tensorboard").iterdir())
    assert not (rank1 / "checkpoints").exists() and not (rank1 / "logs").exists()
    ckpt = torch.load(rank0 / "checkpoints" / "last.pt", weights_only=True)
    assert set(ckpt["model"]) == {"weight", "bias"}
    assert torch.equal(ckpt["model"]["weight"], _results(full_run)[0]["final"]["weight"])
    assert ckpt["loop"]["epoch"] == EPOCHS


def test_stop_on_one_rank_stops_both_and_resume_matches_uninterrupted(full_run, tmp_path):
    assert _launch(tmp_path, stop_at="1:1:2") == [75, 75]
    stopped = _results(tmp_path)
    assert [r["epoch"] for r in stopped] == [1, 1]  # both left in epoch 2, last.pt holds epoch 1
    assert len(stopped[0]["seen"][1]) == len(stopped[1]["seen"][1]) == 3 * 6
    assert _launch(tmp_path) == [0, 0]
    resumed, full = _results(tmp_path), _results(full_run)
    for key in full[0]["final"]:
        assert torch.allclose(resumed[0]["final"][key], full[0]["final"][key], atol=1e-6), key
        assert torch.equal(resumed[0]["final"][key], resumed[1]["final"][key]), key


def test_job_identity_reads_slurm_and_torchrun_rendezvous():
    slurm = job_identity({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
                          "SLURM_JOB_ID": "99", "SLURM_JOB_NODELIST": "gpu[07-08,11],cpu1"})
    assert (slurm.global_rank, slurm.world_size, slurm.local_rank, slurm.master_addr) == (5, 8, 1, "gpu07")
    assert slurm.master_port == job_identity({"SLURM_JOB_ID": "99"}).master_port  # same on every rank
    torchrun = job_identity({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h",
                             "MASTER_PORT": "1234", "SLURM_PROCID": "0"})
    assert (torchrun.global_rank, torchrun.world_size) == (1, 2)
    assert (torchrun.master_addr, torchrun.master_port) == ("h", 1234)


def test_single_process_helpers_are_no_ops():
    model = torch.nn.Linear(2, 2)
    info = init_distributed(env={})
    assert info.world_size == 1 and is_main_process() and shard_size(5) == 5
    data = torch.utils.data.TensorDataset(torch.arange(6))
    order = [int(b[0]) for b in epoch_loader(data, epoch=1, seed=3, batch_size=1)]
    assert order == [int(b[0]) for b in epoch_loader(data, epoch=1, seed=3, batch_size=1)]  # resumable
    assert sorted(order) == list(range(6))
    model.weight.grad = torch.ones_like(model.weight)
    Replicas(model, list(model.parameters())).average_gradients()
    assert torch.equal(model.weight.grad, torch.ones_like(model.weight)) and model.bias.grad is None
    assert all_reduce_mean(3.0) == 3.0


if __name__ == "__main__":
    sys.exit(_worker(Path(sys.argv[1])))
