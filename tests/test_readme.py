"""Every command in README.md's code blocks is exercised: run here, or named with the test that runs it.

Training commands run for real in a sandbox holding synthetic data in the real layouts and a
random Hiera-S checkpoint in Meta's file format, with only their sizes shrunk (listed in
SHRINK). A new README command without an entry below fails
``test_every_readme_command_is_accounted_for``, so the README cannot drift from the code.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

DOWNLOAD = "download: needs the internet (offline behaviour in tests/test_download_scripts.py)"
# command prefix -> how it is exercised: "run" (here, below) or the test that runs it
EXERCISED: dict[str, str] = {
    "make demo": "tests/test_demo.py::test_demo_study_end_to_end (the same `medsam2-hpc demo`)",
    "make test": "CI: .ci/run calls it",
    "bash checkpoints/download_ckpts.sh": DOWNLOAD,
    "bash data/download_refuge.sh": DOWNLOAD,
    "bash data/download_btcv.sh": DOWNLOAD,
    "source .venv/bin/activate": "shell set-up (make venv is part of make test)",
    "python train_2d.py": "run",
    "python train_3d.py": "run",
    "python inference_3d.py": "run",
    "python train.py": "run",
    "python baselines/train.py": "run",
    "medsam2-hpc container check": "run",
    "medsam2-hpc container build": "run: without Apptainer on PATH, the clear refusal (exit 2) is "
                                   "checked; tests/test_apptainer_image.py builds it for real",
    "medsam2-hpc submit jobs.yaml --dry-run": "run",
    "medsam2-hpc submit jobs.yaml": "tests/test_launcher.py::test_slurm_submits_one_sbatch_per_profile_skips_"
                                    "queued_and_cancels; tests/slurm/test_launcher_slurm.py (real Slurm)",
    "medsam2-hpc status jobs.yaml": "run",
    "medsam2-hpc resubmit jobs.yaml --failed": "run",
    "medsam2-hpc cancel jobs.yaml": "run",
    "medsam2-hpc collect": "tests/test_collect.py::test_cli_prints_headline_and_warnings",
    "sbatch slurm/train_slurm.sh": "tests/slurm/test_train_slurm.py::test_sbatch_trains_resnet_end_to_end "
                                   "(real Slurm; the model argument only picks train.py --model)",
    "sbatch --time=2:00:00 slurm/train_slurm.sh": "tests/slurm/test_train_slurm.py (real Slurm)",
    "bash slurm/train_both_models.sh": "run (with --dry-run: it would train two SAM2 models)",
}

# Sizes shrunk so the real commands finish on a CPU; nothing else about them changes.
SHRINK = [("-image_size 1024", "-image_size 64"), ("-out_size 1024", "-out_size 64"), ("-b 4", "-b 2"),
          ("--epochs 50", "--epochs 1")]
EXTRA = {"train_2d.py": ["-epoch", "1"], "train_3d.py": ["-epoch", "1"],
         "train.py": ["--image-size", "64", "--epochs", "1"], "train_both_models.sh": ["--dry-run"]}


def readme_commands() -> list[str]:
    """Shell commands of README.md's ```bash blocks, comments stripped, continuations joined."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def _entry(command: str) -> tuple[str, str]:
    matches = [k for k in EXERCISED if command == k or command.startswith(k + " ")]
    assert matches, f"README command not exercised by any test: {command}"
    key = max(matches, key=len)
    return key, EXERCISED[key]


def test_every_readme_command_is_accounted_for():
    commands = readme_commands()
    assert len(commands) >= 20
    for command in commands:
        key, how = _entry(command)
        for ref in re.findall(r"(tests/[\w/]+\.py)(?:::(\w+))?", how):
            path = ROOT / ref[0]
            assert path.is_file(), f"{command}: names {ref[0]}, which does not exist"
            if ref[1]:
                assert f"def {ref[1]}(" in path.read_text(), f"{command}: no test {ref[1]} in {ref[0]}"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    """A working directory like a user's: data in the real layouts, a Meta-format checkpoint."""
    import torch

    from medsam2_hpc.data import synthetic
    from medsam2_hpc.models.sam2 import build_sam2_model

    root = tmp_path_factory.mktemp("readme")
    synthetic.make_refuge(root / "data" / "REFUGE", n_train=2, n_test=1, size=64)
    synthetic.make_btcv(root / "data" / "btcv", layout="nifti", n_train=2, n_test=1, size=64, depth=8)
    model = build_sam2_model("sam2_hiera_s", None, image_size=64, allow_random=True)
    (root / "checkpoints").mkdir()
    torch.save({"model": model.state_dict()}, root / "checkpoints" / "sam2_hiera_small.pt")
    return root


def _argv(command: str, checkout: Path = ROOT) -> list[str]:
    """The command as argv: sizes shrunk, scripts taken from ``checkout``."""
    for old, new in SHRINK:
        command = command.replace(old, new)
    argv = shlex.split(command)
    program = Path(argv[1] if argv[0] in ("python", "bash") else argv[0]).name
    if argv[0] == "python":
        argv = [sys.executable, str(ROOT / argv[1]), *argv[2:]]
    elif argv[0] == "bash":
        argv = ["bash", str(checkout / argv[1]), *argv[2:]]
    elif argv[0] == "medsam2-hpc":
        argv = [str(BIN / "medsam2-hpc"), *argv[1:]]
    return argv + EXTRA.get(program, [])


def _run(command: str, cwd: Path, argv: list[str] | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    argv = argv or _argv(command)
    if "*" in command:  # the inference command's checkpoint is a shell glob, as a user types it
        argv = ["bash", "-c", " ".join(a if "*" in a else shlex.quote(a) for a in argv)]
    env = {**(env or os.environ), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def _runnable(prefixes: tuple[str, ...]) -> list[str]:
    return [c for c in readme_commands() if _entry(c)[1].startswith("run") and c.startswith(prefixes)]


@pytest.mark.slow
def test_readme_training_and_inference_commands_run(sandbox):
    """train_2d, train_3d, inference on the 3D run's best checkpoint, then the train.py commands."""
    for command in _runnable(("python",)):
        out = _run(command, sandbox)
        assert out.returncode == 0, f"{command}\n{out.stderr[-3000:]}"
    assert list(sandbox.glob("logs/REFUGE_MedSAM2_Small_*/Model/best_dice_epoch.pth"))
    assert list(sandbox.glob("logs/BTCV_MedSAM2_Small_*/metrics.json"))
    assert list((sandbox / "inference_results").rglob("*.nii.gz"))
    metrics = sorted(p.parent.name.split("_")[0] for p in (sandbox / "runs").rglob("metrics.json"))
    assert metrics == ["resnet", "yolo", "yolo"]


# What the cluster commands read from a checkout; they run on a copy of these, never in it.
CLUSTER_FILES = ("jobs.yaml", "slurm", "containers")
CLUSTER_STANDINS = ("sbatch", "srun", "squeue", "scancel", "scontrol", "sacct", "apptainer", "singularity")


# What the README's layered build needs of `apptainer` besides the record: `build` leaves an (empty)
# image at its output, which `--base` then names, and `inspect` shows the deps label such a build
# would carry ($STANDIN_DEPS_KEY: the copied definition's containers.deps_key).
IMAGE_STANDIN = """case "$1" in
  build) touch "${@: -2:1}";;
  inspect) echo "medsam2.deps: $STANDIN_DEPS_KEY";;
esac
"""


def run_cluster_commands(checkout: Path, work: Path) -> tuple[dict[str, subprocess.CompletedProcess],
                                                              list[str]]:
    """README's cluster commands in ``work``, a copy of ``checkout``'s jobs.yaml, slurm/ and containers/.

    Never in the checkout itself: there ``cancel`` and ``resubmit --failed`` would act on a live
    ``runs/main`` of the person running the tests. Every program that could reach a cluster or
    build an image is a stand-in first on PATH that records its call and does nothing else
    (exit 0). ``container check|build`` get ``--def`` of the copy, so the build's rendered
    definition and its image path are in ``work`` too. Returns each command's result and the
    recorded calls.
    """
    work.mkdir(parents=True)
    for name in CLUSTER_FILES:
        source = checkout / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, work / name)
    calls, bin_dir = work / "standin.calls", work / ".standin-bin"
    bin_dir.mkdir()
    for name in CLUSTER_STANDINS:
        (bin_dir / name).write_text(f"#!/bin/bash\n# Stand-in for {name} (tests/test_readme.py): records the "
                                    f"call, runs nothing.\nprintf '%s\\n' \"{name} $*\" >> "
                                    f"{shlex.quote(str(calls))}\n" + IMAGE_STANDIN * (name == "apptainer"))
        (bin_dir / name).chmod(0o755)
    _stage_inputs(work)
    from medsam2_hpc.hpc.containers import deps_key

    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "MEDSAM2_CHECKPOINTS": str(work / "checkpoints"),
           "STANDIN_DEPS_KEY": deps_key((work / "containers" / "medsam2.def").read_text())}
    results = {}
    for command in _runnable(("medsam2-hpc", "bash slurm")):
        argv = _argv(command, work)
        if command.startswith("medsam2-hpc container"):
            argv += ["--def", str(work / "containers" / "medsam2.def")]
        if command.startswith("medsam2-hpc container build"):  # the README's builds, one after another
            argv += ["--force"]
        if command.startswith("medsam2-hpc submit"):  # the image a real build would have left
            (work / "containers" / "medsam2.sif").touch()
        results[command] = _run(command, work, argv, env)
    return results, (calls.read_text().splitlines() if calls.exists() else [])


def _stage_inputs(work: Path) -> None:
    """What the main study needs before it may queue (submit checks every task): both datasets
    in their real layouts and Meta-format Hiera-T and -S checkpoints (random weights)."""
    import torch

    from medsam2_hpc.data import synthetic
    from medsam2_hpc.models.sam2 import build_sam2_model

    synthetic.make_refuge(work / "data" / "REFUGE", n_train=2, n_test=1, size=64)
    synthetic.make_btcv(work / "data" / "btcv", layout="nifti", n_train=2, n_test=1, size=64, depth=8)
    (work / "checkpoints").mkdir()
    for config, name in (("sam2_hiera_t", "sam2_hiera_tiny.pt"), ("sam2_hiera_s", "sam2_hiera_small.pt")):
        model = build_sam2_model(config, None, image_size=64, allow_random=True)
        torch.save({"model": model.state_dict()}, work / "checkpoints" / name)


def _files(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _checkout_with_a_live_study(checkout: Path) -> Path:
    """A copy of what the commands read, plus a study in flight: runs/main with a running task
    and the Slurm array it runs in (status.json, submissions.json). Returns runs/."""
    from medsam2_hpc import spec

    checkout.mkdir()
    for name in CLUSTER_FILES:
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, checkout / name)
    study = spec.load(checkout / "jobs.yaml", "main")
    task = study.tasks[0]
    task.run_dir.update_status(state="running", attempts=1, host="gpu-node-7", slurm_job_id="4243",
                               slurm_array_job_id="4242", slurm_array_task_id="0")
    (study.study_dir / "submissions.json").write_text(json.dumps({"submissions": [
        {"job_id": "4242", "executor": "slurm", "profile": task.profile,
         "submitted_at": "2026-01-01T00:00:00", "tasks": {task.task_id: "4242_0"}}]}))
    assert study.study_dir.parent == checkout / "runs"
    return checkout / "runs"


def test_readme_cluster_commands_run_without_a_cluster(tmp_path):
    """Dry run, status, resubmit and cancel on a copy of the committed jobs.yaml; container check
    and build (through the apptainer stand-in, into the copy). The checkout they were copied from
    holds a live runs/main: they neither change it nor call anything about its jobs."""
    runs = _checkout_with_a_live_study(tmp_path / "checkout")
    before = _files(runs)
    work = tmp_path / "work"
    results, calls = run_cluster_commands(tmp_path / "checkout", work)
    assert len(results) >= 7
    for command, out in results.items():
        assert out.returncode == 0, f"{command}\n{out.stderr[-2000:]}"
        if command.endswith("--dry-run"):
            assert "#SBATCH" in out.stdout or "sbatch" in out.stdout
    assert _files(runs) == before
    # the dry run reads MaxArraySize (read-only); nothing reached sbatch, squeue, scancel, nor job 4242
    builds = [c for c in calls if c != "scontrol show config"]
    sif = rf"{re.escape(f'{work}/containers/')}medsam2(-deps)?\.sif"
    pattern = (rf"apptainer build --fakeroot (\S+ )*{sif} \.medsam2-build-\d+\.def"
               rf"|apptainer inspect --labels {sif}")
    assert builds and all(re.fullmatch(pattern, b) for b in builds), builds
    assert sum("-deps.sif .medsam2-build" in b for b in builds) == 1  # the layered build, both steps
    assert sum(b.startswith("apptainer inspect") for b in builds) == 1
    assert not list(work.glob(".medsam2-build-*"))  # the rendered definition is cleaned up
