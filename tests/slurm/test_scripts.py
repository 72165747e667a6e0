"""slurm/train_slurm.sh and slurm/train_both_models.sh: what they would run, and the dependency chain.

The dry-run checks need no cluster (the scripts print their commands); the submission check
uses the test cluster with the jobs held, so no SAM2 training starts.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "slurm" / "train_slurm.sh"
BOTH = REPO / "slurm" / "train_both_models.sh"
BASH = shutil.which("bash") or "/bin/bash"


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "MEDSAM2_", "SBATCH_")) and k != "CUDA_VISIBLE_DEVICES"}
    return {**env, **extra}


def _train_dry(args: list[str], cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(TRAIN), *args], capture_output=True, text=True, timeout=30,
                          cwd=cwd, env=_clean_env(MEDSAM2_DRY_RUN="1", MEDSAM2_ROOT=str(REPO), **env))


def _command(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 0, out.stderr
    return next(line for line in out.stderr.splitlines() if "command:" in line).split("command: ", 1)[1]


@pytest.mark.parametrize("index, variant, seed", [(0, "hiera_t", "0"), (2, "hiera_t", "2"),
                                                  (3, "hiera_s", "0"), (5, "hiera_s", "2")])
def test_array_index_walks_variants_times_seeds(index, variant, seed):
    out = _train_dry(["sam2-2d", "--variants", "hiera_t,hiera_s", "--epochs", "3"],
                     SLURM_ARRAY_TASK_ID=str(index), MEDSAM2_SEEDS="0,1,2")
    cmd = _command(out)
    assert cmd.startswith(f"python {REPO}/train.py --model sam2-2d --epochs 3")
    assert f"--variant {variant} --seed {seed}" in cmd


def test_array_without_lists_uses_the_index_as_seed_and_rejects_indices_past_the_grid():
    assert "--seed 7" in _command(_train_dry(["resnet"], SLURM_ARRAY_TASK_ID="7"))
    out = _train_dry(["resnet", "--seeds", "0,1"], SLURM_ARRAY_TASK_ID="2")
    assert out.returncode == 2 and "SLURM_ARRAY_TASK_ID=2" in out.stderr


def test_unknown_model_is_bad_input():
    out = _train_dry(["unet"])
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "sam2-2d" in out.stderr


def test_container_command_binds_caches_and_adds_nv_only_with_gpus(tmp_path):
    image = tmp_path / "my image.sif"
    cpu = _command(_train_dry(["yolo", "--data-path", "/data/with space"], tmp_path, MEDSAM2_IMAGE=str(image),
                              MEDSAM2_RUNTIME="apptainer", MEDSAM2_BIND="/data,/scratch:/s"))
    assert cpu.startswith("apptainer exec --cleanenv --bind ") and "--nv" not in cpu
    assert "--bind /data --bind /scratch:/s" in cpu and "--data-path /data/with\\ space" in cpu
    assert f"{tmp_path}/my\\ image.sif python {REPO}/train.py --model yolo" in cpu
    gpu = _command(_train_dry(["yolo"], MEDSAM2_IMAGE=str(image), MEDSAM2_RUNTIME="singularity",
                              CUDA_VISIBLE_DEVICES="0"))
    assert gpu.startswith("singularity exec --cleanenv --nv ")
    assert f"--bind {tmp_path}/.cache/medsam2" in cpu and not (tmp_path / ".cache").exists()  # dry run


def test_container_gets_only_the_variables_a_job_reads(tmp_path):
    """--cleanenv drops the host's environment; the names passed back are the launcher's (PASS_ENV)."""
    from medsam2_hpc.hpc.requeue import PASS_ENV

    out = _train_dry(["resnet"], tmp_path, MEDSAM2_IMAGE=str(tmp_path / "i.sif"), MEDSAM2_RUNTIME="apptainer",
                     SLURM_JOB_ID="7", NCCL_DEBUG="INFO", MEDSAM2_CHECKPOINTS="/ckpt", PYTHONPATH="/host/lib")
    line = next(line for line in out.stderr.splitlines() if "into the image" in line)
    passed = line.split("(--cleanenv): ", 1)[1].split()
    assert {"SLURM_JOB_ID", "NCCL_DEBUG", "MEDSAM2_CHECKPOINTS"} <= set(passed) and "PYTHONPATH" not in passed
    pattern = re.search(r"^\s+(SLURM_\*\|.*)\)$", TRAIN.read_text(), re.M).group(1).split("|")
    assert pattern == [*PASS_ENV, "MEDSAM2_CHECKPOINTS"]


def _no_sbatch_path(tmp_path: Path) -> str:
    """A PATH with the tools the script needs but without Slurm's clients."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "sed"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    return str(bin_dir)


def test_both_models_locally_tiny_then_small_with_high_memory_batches(tmp_path):
    out = subprocess.run([BASH, str(BOTH), "--dry-run", "--high-memory", "--data-path", "/d"],
                         capture_output=True, text=True, timeout=30,
                         env=_clean_env(PATH=_no_sbatch_path(tmp_path)))
    assert out.returncode == 0, out.stderr
    tiny, small = out.stdout.strip().splitlines()
    assert tiny == (f"python {REPO}/train.py --model sam2-3d --variant hiera_t --batch-size 16 "
                    "--dataset btcv --data-path /d --image-size 1024")
    assert "--variant hiera_s --batch-size 12 --dataset btcv" in small


def test_both_models_2d_and_bad_options(tmp_path):
    env = _clean_env(PATH=_no_sbatch_path(tmp_path))
    out = subprocess.run([BASH, str(BOTH), "--dry-run", "--dim", "2d", "--batch-size", "4", "--",
                          "--epochs", "2"], capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 0, out.stderr
    assert all("--model sam2-2d" in line and "--dataset refuge --data-path ./data/REFUGE" in line
               and "--batch-size 4" in line and line.endswith("--epochs 2")
               for line in out.stdout.strip().splitlines())
    for bad in (["--dim", "4d"], ["--batch-size", "0"], ["--frobnicate"]):
        out = subprocess.run([BASH, str(BOTH), "--dry-run", *bad], capture_output=True, text=True,
                             timeout=30, env=env)
        assert out.returncode == 2 and out.stderr.startswith("train_both_models.sh: error:"), bad


def test_both_models_submits_small_after_tiny(slurm_cluster, tmp_path):
    out = subprocess.run([BASH, str(BOTH), "--data-path", str(tmp_path)], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path,
                         env=_clean_env(SLURM_CONF=str(slurm_cluster.conf), SBATCH_HOLD="1"))
    assert out.returncode == 0, out.stderr
    tiny, small = re.search(r"Tiny job (\d+), Small job (\d+)", out.stdout).groups()
    try:
        info = slurm_cluster.job(small)
        assert info["JobName"] == "medsam2-small" and info["Dependency"].startswith(f"afterany:{tiny}")
        assert slurm_cluster.job(tiny)["JobName"] == "medsam2-tiny"
    finally:
        slurm_cluster.cmd(["scancel", tiny, small], check=False)
