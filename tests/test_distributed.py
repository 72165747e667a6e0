"""DDP on the CPU: two gloo processes train one model through TrainLoop, ranks from SLURM_* vars.

Each rank is a separate ``python -m tests.test_distributed`` process with the variables srun
would set (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID), as on a multi-GPU Slurm task. Each rank
gets its own run directory, so "only rank 0 writes" is an observation rather than a guess.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medsam2_hpc.engine.distributed import (
    all_reduce_mean,
    cleanup,
    dist_env,
    init_distributed,
    is_main_process,
    make_sampler,
    unwrap_model,
    wrap_model,
)

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3
N_SAMPLES = 48


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(out: Path, world: int = 2, stop_at: str = "") -> list[int]:
    """Start ``world`` ranks like srun would and return their exit codes."""
    port = str(_free_port())
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
    """One rank: seeded differently per rank so only DDP's broadcast can make the ranks agree."""
    from torch.utils.data import DataLoader, TensorDataset

    from medsam2_hpc.engine import LoopConfig, TrainLoop
    from medsam2_hpc.engine.stop import StopRequested, request_stop
    from medsam2_hpc.errors import EXIT_REQUEUE
    from medsam2_hpc.task import RunDir

    device = torch.device("cpu")
    info = init_distributed(device)
    torch.manual_seed(100 + info.rank)
    model = torch.nn.Linear(4, 1)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    ddp = wrap_model(model, device)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(N_SAMPLES, 4, generator=gen)
    data = TensorDataset(x, x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]), torch.arange(N_SAMPLES))
    sampler = make_sampler(data, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=6, sampler=sampler)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    loop = TrainLoop(RunDir(out / f"rank{info.rank}"), model=ddp, optimizer=opt,
                     config=LoopConfig(epochs=EPOCHS))
    loop.resume(out / "rank0" / "checkpoints" / "last.pt")
    stop_at = os.environ["TEST_DDP_STOP_AT"] or "-1:-1:-1"
    stop_rank, stop_epoch, stop_batch = (int(v) for v in stop_at.split(":"))
    seen: dict[int, list[int]] = {}

    def train_epoch(epoch: int) -> dict[str, float]:
        sampler.set_epoch(epoch)
        losses = []
        for batch, (xb, yb, idx) in enumerate(loader):
            seen.setdefault(epoch, []).extend(idx.tolist())
            loss = torch.nn.functional.mse_loss(ddp(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if (info.rank, epoch, batch) == (stop_rank, stop_epoch, stop_batch):
                request_stop()  # the signal reached this rank only
            loop.check_stop()
        return {"loss": all_reduce_mean(sum(losses) / len(losses))}

    def validate(epoch: int) -> dict[str, float]:
        with torch.no_grad():
            return {"dice": -all_reduce_mean(torch.nn.functional.mse_loss(ddp(x), data.tensors[1]).item())}

    try:
        state = loop.fit(train_epoch, validate)
        code = 0
    except StopRequested:
        state, code = loop.state, EXIT_REQUEUE
    torch.save({"initial": initial, "final": unwrap_model(ddp).state_dict(), "seen": seen,
                "main": is_main_process(), "history": state.history, "epoch": state.epoch},
               out / f"result{info.rank}.pt")
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
    assert set(ckpt["model"]) == {"weight", "bias"}  # no DDP "module." prefix
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


@pytest.mark.slow
def test_resnet_trainer_under_two_ranks_writes_one_run(btcv_slices, tmp_path):
    """train.py started once per rank, as srun starts a 2-GPU task: rank 0 owns the run's files."""
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "RANK"},
               "SLURM_JOB_ID": "77", "SLURM_PROCID": str(rank), "SLURM_NTASKS": "2",
               "SLURM_LOCALID": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen(
            [sys.executable, str(REPO / "train.py"), "--model", "resnet", "--variant", "resnet18",
             "--dataset", "btcv", "--data-path", str(btcv_slices), "--output-root", str(tmp_path),
             "--epochs", "1", "--batch-size", "8", "--image-size", "64", "--set", "num_workers=0",
             "--set", "amp=none"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert len({line.strip() for line in outs}) == 1  # both ranks evaluated the same weights
    (run,) = [p.parent for p in tmp_path.glob("local/*/metrics.json")]
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "completed" and status["attempts"] == 1


def test_dist_env_reads_slurm_and_torchrun_variables():
    slurm = dist_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
                      "SLURM_JOB_ID": "99", "SLURM_JOB_NODELIST": "gpu[07-08]"})
    assert (slurm.rank, slurm.world_size, slurm.local_rank, slurm.master_addr) == (5, 8, 1, "gpu07")
    assert slurm.master_port == dist_env({"SLURM_JOB_ID": "99"}).master_port  # same on every rank
    torchrun = dist_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h",
                         "MASTER_PORT": "1234", "SLURM_PROCID": "0"})
    assert (torchrun.rank, torchrun.world_size) == (1, 2)
    assert (torchrun.master_addr, torchrun.master_port) == ("h", 1234)


def test_single_process_helpers_are_no_ops():
    model = torch.nn.Linear(2, 2)
    info = init_distributed(torch.device("cpu"), env={})
    assert info.world_size == 1 and is_main_process()
    assert wrap_model(model, torch.device("cpu")) is model and unwrap_model(model) is model
    assert make_sampler(torch.utils.data.TensorDataset(torch.zeros(4)), shuffle=True) is None
    assert all_reduce_mean(3.0) == 3.0


if __name__ == "__main__":
    sys.exit(_worker(Path(sys.argv[1])))
