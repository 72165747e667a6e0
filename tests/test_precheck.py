"""Checks before queueing: every task's real trainer check, all problems at once, shared work once.

Real trainers (ResNet, YOLO, SAM2) check real synthetic data; nothing is submitted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest

from medsam2_hpc import checkpoints, spec
from medsam2_hpc import data as medsam2_data
from medsam2_hpc.cli import main
from medsam2_hpc.data import synthetic
from medsam2_hpc.hpc import image, launcher

GOOD = json.dumps({"epochs": 1, "image_size": 64, "batch_size": 2, "device": "cpu"})


def _jobs(tmp_path: Path, data: Path, experiments: list[str]) -> Path:
    path = tmp_path / "jobs.yaml"
    path.write_text("output_root: runs\nexecutor: slurm\ncontainer: {runtime: none}\n"
                    "studies:\n  s:\n    experiments:\n"
                    + "".join(f"      - {{{e if 'data_path' in e else f'data_path: {data}, {e}'}}}\n"
                              for e in experiments))
    return path


@pytest.fixture(autouse=True)
def scontrol_standin(tmp_path, monkeypatch):
    """The dry run reads MaxArraySize from scontrol: a stand-in answers as a cluster would (the
    session's guard refuses every Slurm command outside the test cluster)."""
    bin_dir = tmp_path / "standin-bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/bash\n# Stand-in for scontrol show config.\n"
                                      "echo 'MaxArraySize            = 1001'\n")
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


@pytest.fixture
def no_checkpoints(tmp_path, monkeypatch):
    """The search order sees only empty directories of this test."""
    monkeypatch.delenv(checkpoints.ENV_VAR, raising=False)
    monkeypatch.setattr(checkpoints, "BAKED_DIR", tmp_path / "baked")
    monkeypatch.setattr(checkpoints, "CHECKOUT_DIR", tmp_path / "checkout")


def test_dry_run_reports_every_task_problem_at_once_and_writes_nothing(tmp_path, refuge_multirater,
                                                                       no_checkpoints, capsys):
    path = _jobs(tmp_path, refuge_multirater, [
        f"model: resnet, variants: [resnet18], dataset: refuge, seeds: [0, 1, 2], hparams: {GOOD}",
        "model: resnet, variants: [resnet18], dataset: refuge, hparams: {bath_size: 4}",
        "model: resnet, variants: [resnet18], dataset: refuge, hparams: {lr: fast}",
        "model: resnet, variants: [resnet999], dataset: refuge",
        "model: sam2-2d, variants: [hiera_t], dataset: refuge, prompt: click, seeds: [0, 1]",
        "model: yolo, variants: [yolo11n-seg], dataset: refuge, hparams: {image_size: 100}",
    ])
    assert main(["submit", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("medsam2-hpc: error: study s: 5 problems: ")
    for expected in (
        "studies.s.experiments[1] (line 8): task resnet_resnet18_refuge_s0_",
        "unknown key 'bath_size' in hparams (did you mean 'batch_size'?)",
        "studies.s.experiments[2] (line 9): task resnet_",
        "hparams.lr: expected float, got str 'fast'",
        "studies.s.experiments[3] (line 10): task resnet_resnet999_",
        "variant: 'resnet999' is not one of",
        "studies.s.experiments[4] (line 11): task sam2-2d_hiera_t_refuge_s0_",
        " (and 1 more): hparams.sam_ckpt: no sam2_hiera_tiny.pt in ",
        "studies.s.experiments[5] (line 12): task yolo_", "YOLO needs a multiple of 32, got 100",
    ):
        assert expected in err
    assert "experiments[0]" not in err
    assert not (tmp_path / "runs").exists()


def test_data_checks_run_once_per_dataset_not_per_task(tmp_path, refuge_multirater, btcv_slices,
                                                       monkeypatch):
    calls: list[str] = []
    real = medsam2_data._check_data
    monkeypatch.setattr(medsam2_data, "_check_data", lambda task, *rest: (calls.append(task.data_path),
                                                                             real(task, *rest))[1])
    sweep = "sweep: {lr: [0.1, 0.01, 0.001]}, seeds: [0, 1]"
    path = _jobs(tmp_path, refuge_multirater, [
        f"model: resnet, variants: [resnet18, resnet34], dataset: refuge, hparams: {GOOD}, {sweep}",
        f"model: resnet, variants: [resnet18], dataset: btcv, data_path: {btcv_slices}, {sweep}",
    ])
    study = spec.load(path)
    assert len(study.tasks) == 18
    launch = launcher.submit(study, dry_run=True, out=StringIO())
    assert launch.n_to_run == 18
    assert sorted(calls) == sorted([str(refuge_multirater), str(btcv_slices)])
    medsam2_data.check_data(study.tasks[0])  # outside a submit nothing is remembered
    medsam2_data.check_data(study.tasks[0])
    assert len(calls) == 4


def test_the_image_sees_the_checkpoints_the_host_found(tmp_path, monkeypatch):
    """$MEDSAM2_CHECKPOINTS goes into the image, bound read-only, and so does an explicit file's folder."""
    monkeypatch.setenv(checkpoints.ENV_VAR, str(tmp_path / "ckpts"))
    (tmp_path / "img.sif").write_bytes(b"image")
    path = _jobs(tmp_path, tmp_path / "d", ["model: sam2-2d, variants: [hiera_t], dataset: refuge, "
                                            "prompt: click, hparams: {pretrain: ../ft/best.pt}"])
    path.write_text(path.read_text().replace("{runtime: none}", "{runtime: apptainer, image: img.sif}"))
    study = spec.load(path)
    argv = launcher.python_argv(study, study.profiles["default"], study.tasks, launcher.LocalBackend(),
                                tmp_path / "sub")
    assert f"{checkpoints.ENV_VAR}={tmp_path / 'ckpts'}" in argv
    binds = [argv[i + 1] for i, a in enumerate(argv) if a == "--bind"]
    assert f"{tmp_path / 'ckpts'}:{tmp_path / 'ckpts'}:ro" in binds
    assert f"{tmp_path.parent / 'ft'}:{tmp_path.parent / 'ft'}:ro" in binds


def test_a_checkpoint_only_the_image_holds_passes_the_login_node_check(tmp_path, refuge_multirater,
                                                                        no_checkpoints, capsys):
    """Built --with-checkpoints, the image's record (beside the .sif) says what is baked in: that
    checkpoint passes on a host without it, one the image lacks still fails, naming what it has."""
    img = tmp_path / "img.sif"
    img.write_bytes(b"image")
    sam2 = "model: sam2-2d, variants: [{v}], dataset: refuge, prompt: click, hparams: {h}"
    hp = json.dumps({"epochs": 1, "image_size": 64, "batch_size": 1, "device": "cpu"})
    path = _jobs(tmp_path, refuge_multirater, [sam2.format(v="hiera_t", h=hp)])
    path.write_text(path.read_text().replace("{runtime: none}", "{runtime: apptainer, image: img.sif}"))
    image.write_record(img, revision="abc", checkpoints=[])
    assert main(["submit", str(path), "--dry-run"]) == 2
    assert "no sam2_hiera_tiny.pt in " in capsys.readouterr().err  # built without checkpoints

    image.write_record(img, revision="abc", checkpoints=["sam2_hiera_tiny.pt"])
    assert main(["submit", str(path), "--dry-run"]) == 0
    capsys.readouterr()
    explicit = sam2.format(v="hiera_t", h=hp.replace("}", f', "sam_ckpt": "{checkpoints.BAKED_DIR}/'
                                                        'sam2_hiera_tiny.pt"}'))
    path.write_text(path.read_text().replace(sam2.format(v="hiera_t", h=hp), explicit))
    assert main(["submit", str(path), "--dry-run"]) == 0  # named by its path in the image: not bound
    assert f"{checkpoints.BAKED_DIR}:" not in capsys.readouterr().out
    path = _jobs(tmp_path, refuge_multirater, [sam2.format(v="hiera_s", h=hp)])
    path.write_text(path.read_text().replace("{runtime: none}", "{runtime: apptainer, image: img.sif}"))
    assert main(["submit", str(path), "--dry-run"]) == 2
    assert "no sam2_hiera_small.pt in " in capsys.readouterr().err


def test_site_conventions_gpus_asked_once_gpu_device_needs_gpus_no_wckey(tmp_path, refuge_multirater, capfd):
    path = _jobs(tmp_path, refuge_multirater, [f"model: resnet, variants: [resnet18], dataset: refuge, "
                                               f"hparams: {GOOD}"])
    text = path.read_text()
    gres = "profiles: {g: {gpus: 1, sbatch: {gres: 'gpu:a100:1'}}}\n"
    path.write_text(text.replace("studies:", gres + "studies:"))
    assert main(["submit", str(path), "--dry-run"]) == 2
    assert "profiles.g.sbatch.gres (line 4): asks for GPUs and so does gpus: 1" in capfd.readouterr().err
    path.write_text(text.replace('"cpu"', '"cuda"'))
    assert main(["submit", str(path), "--dry-run"]) == 2
    assert "hparams.device: 'cuda' needs a GPU, but profile default has gpus: 0" in capfd.readouterr().err
    path.write_text(text)
    assert main(["submit", str(path), "--dry-run"]) == 0
    out = capfd.readouterr().out
    assert "#SBATCH --job-name=s-default-resnet\n" in out and "wckey" not in out


def test_set_changes_partition_and_account_on_the_command_line(tmp_path, refuge_multirater, capfd):
    path = _jobs(tmp_path, refuge_multirater, [f"model: resnet, variants: [resnet18], dataset: refuge, "
                                               f"profile: gpu, hparams: {GOOD}"])
    gpu = "profiles: {gpu: {gpus: 1, partition: gpu}}\n"
    path.write_text(path.read_text().replace("studies:", gpu + "studies:"))
    before = path.read_text()
    assert main(["submit", str(path), "--dry-run", "--set", "profiles.gpu.partition=a100",
                 "--set", "profiles.gpu.account=proj42", "--set", "profiles.gpu.cpus=6"]) == 0
    out = capfd.readouterr().out
    for line in ("#SBATCH --partition=a100", "#SBATCH --account=proj42", "#SBATCH --cpus-per-task=6",
                 "export MEDSAM2_GPUS=1"):
        assert line in out
    assert path.read_text() == before
    assert main(["submit", str(path), "--dry-run", "--set", "profiles.gpu.partitoin=a"]) == 2
    assert "unknown profile key 'partitoin' (did you mean 'partition'?)" in capfd.readouterr().err
    assert main(["submit", str(path), "--dry-run", "--set", "profiles.gpu.cpus=0"]) == 2
    assert "profiles.gpu.cpus (line 4): must be >= 1, got 0" in capfd.readouterr().err


def test_device_auto_in_a_gpu_job_without_a_visible_gpu_is_an_error(monkeypatch):
    """The launcher exports MEDSAM2_GPUS in jobs of GPU profiles; there `auto` must not mean the CPU."""
    import torch

    from medsam2_hpc.engine.runtime import pick_device
    from medsam2_hpc.errors import InputError

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here: auto rightly picks it")
    monkeypatch.setenv("MEDSAM2_GPUS", "2")
    with pytest.raises(InputError, match=r"asked for 2 GPU\(s\) but none is visible"):
        pick_device("auto")
    assert pick_device("cpu").type == "cpu"
    monkeypatch.delenv("MEDSAM2_GPUS")
    assert pick_device("auto").type == "cpu"


_IMPORTS_AFTER = """
import json, sys
from medsam2_hpc.cli import main
code = main(sys.argv[1:])
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "torchvision", "ultralytics", "monai"})
print(json.dumps({"exit": code, "heavy": heavy}), file=sys.stderr)
"""


def _dry_run_imports(path: Path) -> tuple[dict, str]:
    """``medsam2-hpc submit --dry-run`` in a fresh interpreter: (exit code and the heavy packages it
    imported, stderr)."""
    done = subprocess.run([sys.executable, "-c", _IMPORTS_AFTER, "submit", "--dry-run", str(path)],
                          capture_output=True, text=True, timeout=300, cwd=path.parent)
    return json.loads(done.stderr.strip().splitlines()[-1]), done.stderr


def test_checking_a_baseline_study_imports_no_torch(tmp_path, btcv_nifti):
    """``submit`` checks every task on a login node: the baselines' checks (hparams, variant, device
    spelling, resume checkpoints, one decoded file per split) need no torch, and importing it
    would cost seconds on every submit. A corrupt image is still found, still without torch."""
    refuge = synthetic.make_refuge(tmp_path / "REFUGE", "multirater", n_train=4, n_test=2, size=64, seed=0)
    path = _jobs(tmp_path, refuge, [
        f"model: resnet, variants: [resnet18, resnet50], dataset: refuge, seeds: [0, 1], hparams: {GOOD}",
        f"model: resnet, variants: [resnet18], dataset: btcv, data_path: {btcv_nifti}, hparams: {GOOD}",
        "model: yolo, variants: [yolo11n-seg], dataset: refuge, hparams: {image_size: 64}",
        f"model: yolo, variants: [yolo11n-seg], dataset: btcv, data_path: {btcv_nifti}",
    ])
    result, err = _dry_run_imports(path)
    assert result == {"exit": 0, "heavy": []}, err
    for jpeg in refuge.rglob("*.jpg"):  # every image: whichever case a split starts with
        jpeg.write_bytes(b"\xff\xd8 not a JPEG")
    result, err = _dry_run_imports(path)
    assert result == {"exit": 2, "heavy": []} and "corrupt or unreadable image" in err, err
