"""Two ranks of a multi-GPU task on the CPU, each a process with the variables srun sets.

There is no GPU here, so the ranks meet over gloo where a GPU job uses NCCL. ``launch`` starts
``python -m tests.ranks`` once per rank; each runs ``train.py``'s ``main`` with three spies
(observers, not stand-ins): the trainable weights after the first optimizer step
(``TrainLoop.step``), the indices of every epoch's shard (``epoch_loader``) and every file this
rank created, opened for writing, renamed or made a directory of under the output root
(Python's audit hooks). They are saved to ``<spy>/rank<r>.pt``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(spy: Path, root: Path, argv: list[str], world: int = 2, timeout: float = 300) -> list[int]:
    """``train.py argv`` (with ``--output-root root``) as ``world`` ranks; their exit codes."""
    port = str(free_port())
    base = {k: v for k, v in os.environ.items()
            if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK") and not k.startswith("SLURM_")}
    procs = []
    for rank in range(world):
        env = {**base, "SLURM_JOB_ID": "77", "SLURM_PROCID": str(rank), "SLURM_NTASKS": str(world),
               "SLURM_LOCALID": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tests.ranks", str(spy), str(root), *argv, "--output-root", str(root)],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=timeout) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        if p.returncode:
            print(err[-3000:], file=sys.stderr)
    return [p.returncode for p in procs]


def _writes_under(root: Path, seen: list[str]) -> Any:
    """An audit hook noting paths under ``root`` that this process writes."""
    prefix = str(root)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                (mode is None and isinstance(flags, int) and flags & write_flags)
        elif event in ("os.mkdir", "os.rename", "os.symlink", "os.link"):
            path, writes = args[0], True
        else:
            return
        if writes and isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(prefix):
            seen.append(f"{event} {os.fspath(path)}")

    return hook


def _main(spy: Path, root: Path, argv: list[str]) -> int:
    import torch

    from medsam2_hpc.cli import train as train_cli
    from medsam2_hpc.engine import distributed, loop
    from medsam2_hpc.jobenv import job_identity

    record: dict[str, Any] = {"shards": {}, "writes": []}
    real_step, real_loader = loop.TrainLoop.step, distributed.epoch_loader

    def step(self: Any, *args: Any, **kwargs: Any) -> None:
        first = "after_step" not in record
        before = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
        real_step(self, *args, **kwargs)
        if first:
            record["before_step"] = before
            record["after_step"] = {n: p.detach().clone() for n, p in self.model.named_parameters()
                                    if p.requires_grad}

    def epoch_loader(dataset: Any, *, epoch: int, **kwargs: Any) -> Any:
        loader = real_loader(dataset, epoch=epoch, **kwargs)
        record["shards"][epoch] = list(loader.sampler)
        record["shard_of"] = len(dataset)
        return loader

    loop.TrainLoop.step = step
    distributed.epoch_loader = epoch_loader  # the trainers import it lazily, after this
    sys.addaudithook(_writes_under(root, record["writes"]))
    code = train_cli.main(argv)
    spy.mkdir(parents=True, exist_ok=True)
    torch.save(record, spy / f"rank{job_identity().global_rank}.pt")
    return code


if __name__ == "__main__":
    sys.exit(_main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]))
