"""Every multi-GPU model kind under two ranks, through train.py as srun starts a 2-GPU task.

There is no GPU here, so the two ranks are CPU processes that meet over gloo (a GPU job uses
NCCL through the same engine code). Tiny inputs (SAM2 Hiera-T with random weights at 128 px,
ResNet-18 at 64 px, one epoch): what is asserted is the contract of a multi-GPU run, not its
accuracy: identical weights on both ranks after an optimizer step, disjoint shards of the
training set, one run directory with one metrics.json, written by rank 0 alone. The spies are
described in tests/ranks.py. YOLO has no multi-GPU path: a profile asking for two GPUs is refused
before anything is queued.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medsam2_hpc.cli import main as cli_main
from tests.ranks import launch

SAM2 = ["--variant", "hiera_t", "--epochs", "1", "--batch-size", "1", "--image-size", "128",
        "--set", "sam_ckpt=none", "--set", "num_workers=0", "--set", "amp=none", "--set", "hd95=false"]


def _check_two_ranks(tmp_path: Path, argv: list[str]) -> dict:
    spy, root = tmp_path / "spy", tmp_path / "runs"
    assert launch(spy, root, argv) == [0, 0]
    r0, r1 = (torch.load(spy / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    # one optimizer step later the trainable weights are equal, and the step changed them
    assert r0["after_step"].keys() == r1["after_step"].keys() and r0["after_step"]
    for name, value in r0["after_step"].items():
        assert torch.equal(value, r1["after_step"][name]), name
    assert any(not torch.equal(v, r0["before_step"][k]) for k, v in r0["after_step"].items())
    # each epoch's shards: equal in size, together every item; disjoint but for the sampler's padding
    n = r0["shard_of"]
    for epoch, a in r0["shards"].items():
        b = r1["shards"][epoch]
        assert len(a) == len(b) and set(a) | set(b) == set(range(n))
        assert len(set(a) & set(b)) == len(a) + len(b) - n
    # one run, written by rank 0 alone
    (metrics,) = root.rglob("metrics.json")
    assert json.loads(metrics.read_text())["epochs_completed"] == 1
    assert json.loads((metrics.parent / "status.json").read_text())["attempts"] == 1
    assert r0["writes"] and not r1["writes"], r1["writes"][:5]
    return json.loads(metrics.read_text())


KINDS = {  # model kind: (dataset fixture, train.py arguments)
    "sam2-2d": ("refuge_challenge", ["--dataset", "refuge", "--prompt", "bbox", *SAM2,
                                     "--set", "out_size=128", "--set", "memory_bank_size=2"]),
    "sam2-3d": ("btcv_slices", ["--dataset", "btcv", "--prompt", "bbox", *SAM2, "--set", "video_length=2",
                                "--set", "clips_per_epoch=4"]),  # clips sharded over the ranks
    "resnet": ("btcv_slices", ["--variant", "resnet18", "--dataset", "btcv", "--epochs", "1", "--batch-size",
                               "8", "--image-size", "64", "--set", "num_workers=0", "--set", "amp=none"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_kind_trains_one_model_on_two_ranks(kind, request, tmp_path):
    fixture, args = KINDS[kind]
    data = request.getfixturevalue(fixture)
    metrics = _check_two_ranks(tmp_path, ["--model", kind, "--data-path", str(data), *args])
    assert metrics["model"] == kind and metrics["n_cases"] == 2


def test_yolo_on_two_gpus_is_refused_before_queueing(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "jobs.yaml").write_text(
        "output_root: runs\nexecutor: local\n"
        "profiles:\n  default: {time: 30}\n  two: {gpus: 2, time: 30}\n"
        "studies:\n  s:\n    experiments:\n"
        "      - {model: yolo, variants: [yolo11n-seg], dataset: refuge, data_path: data, profile: two}\n")
    before = sorted(tmp_path.rglob("*"))
    for dry in (["--dry-run"], []):
        assert cli_main(["submit", str(tmp_path / "jobs.yaml"), *dry]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert "experiments[0].profile" in err and "yolo" in err and "gpus: 2" in err, err
        assert sorted(tmp_path.rglob("*")) == before


def test_yolo_started_as_two_ranks_refuses_before_writing(refuge_challenge, tmp_path, monkeypatch):
    """A plain sbatch with --ntasks 2 bypasses jobs.yaml: the run's own check refuses it."""
    from medsam2_hpc import runner
    from medsam2_hpc.errors import InputError
    from medsam2_hpc.task import Task

    monkeypatch.setenv("WORLD_SIZE", "2")
    task = Task(model="yolo", variant="yolo11n-seg", dataset="refuge", data_path=str(refuge_challenge),
                output_root=str(tmp_path / "runs"))
    with pytest.raises(InputError, match="yolo: trains in one process, but this job started 2"):
        runner.run_task(task)
    assert not (tmp_path / "runs").exists()
