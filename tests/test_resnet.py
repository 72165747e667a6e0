"""ResNet baseline: network variants, learning, short runs into a valid run directory, errors."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models import resnet18

from medsam2_hpc import metrics
from medsam2_hpc.contract import validate_metrics
from medsam2_hpc.data import synthetic
from medsam2_hpc.engine import loop as engine_loop
from medsam2_hpc.engine.stop import StopRequested
from medsam2_hpc.errors import InputError
from medsam2_hpc.runner import run_task
from medsam2_hpc.task import Task
from medsam2_hpc.trainers.baselines import resnet
from medsam2_hpc.trainers.baselines.data import BaselineData
from medsam2_hpc.trainers.baselines.resnet_net import build_network

REPO = Path(__file__).resolve().parents[1]
FAST = {"batch_size": 4, "image_size": 64, "num_workers": 0, "lr": 3e-3}


def _task(tmp_path: Path, dataset: str, root: Path, **hparams) -> Task:
    return Task(model="resnet", variant="resnet18", dataset=dataset, data_path=str(root),
                output_root=str(tmp_path / "runs"), hparams={**FAST, **hparams})


@pytest.mark.parametrize("variant", ["resnet18", "resnet34", "deeplabv3_resnet50"])
def test_variants_predict_full_resolution(variant):
    out = build_network(variant, 3)(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 3, 64, 64)


def test_local_imagenet_weights_load_into_encoder(tmp_path):
    reference = resnet18()
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    model = build_network("resnet18", 2, str(tmp_path / "resnet18.pth"))
    assert torch.equal(model.encoder.conv1.weight, reference.conv1.weight)
    with pytest.raises(InputError, match="pretrained_weights .*not a state dict of this ResNet encoder"):
        build_network("resnet50", 2, str(tmp_path / "resnet18.pth"))


def test_overfits_one_image(tmp_path):
    """Dice on one synthetic fundus rises from chance to clearly higher after 40 steps on it."""
    root = synthetic.make_refuge(tmp_path / "one", "challenge", n_train=2, n_test=1, size=64, seed=3)
    data = BaselineData("refuge", str(root), 64)
    item = data.train[0]
    torch.manual_seed(0)
    cfg = resnet.ResNetConfig(image_size=64)
    model = build_network("resnet18", data.num_outputs)
    loss_fn = resnet._criterion(True, cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    predict = resnet.make_predictor(model, torch.device("cpu"), "none", True)
    x, y = item["image"][None], item["target"][None]

    def score() -> float:
        pred = predict(x)[0] >= 0.5
        return float(np.nanmean([metrics.dice(pred[k], y[0, k].bool()) for k in range(y.shape[1])]))

    before = score()
    for _ in range(40):
        model.train()
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = score()
    assert after > 0.8 and after > before + 0.3, (before, after)


def test_refuge_run_writes_valid_metrics_and_predictions(tmp_path, refuge_challenge):
    task = _task(tmp_path, "refuge", refuge_challenge, epochs=2)
    metrics_ = run_task(task)
    assert validate_metrics(metrics_) == []
    assert set(metrics_["per_class"]) == {"cup", "disc"} and metrics_["epochs_completed"] == 2
    run = task.run_dir
    assert run.best_ckpt.is_file() and run.last_ckpt.is_file()
    assert any((run.logs / "tensorboard").iterdir())
    assert len(list(run.predictions.glob("*.png"))) == 2 * metrics_["n_cases"]


def test_btcv_run_scores_volumes_and_resumes(tmp_path, btcv_nifti, monkeypatch):
    """Stopped after epoch 1 (as by Slurm's signal), the rerun continues from last.pt to epoch 2."""
    task = _task(tmp_path, "btcv", btcv_nifti, epochs=2)
    monkeypatch.setattr(engine_loop, "stop_requested", lambda: task.run_dir.last_ckpt.exists())
    with pytest.raises(StopRequested):
        run_task(task)
    assert task.run_dir.status()["state"] == "preempted"
    monkeypatch.undo()
    metrics_ = run_task(task)
    assert validate_metrics(metrics_) == []
    assert metrics_["epochs_completed"] == 2 and task.run_dir.status()["attempts"] == 2
    assert 0.0 <= metrics_["dice_mean_per_slice"] <= 1.0
    assert metrics_["n_cases"] == 2 and "spleen" in metrics_["per_class"]
    assert sorted(p.name for p in task.run_dir.predictions.iterdir()) == \
        ["img0005.nii.gz", "img0005.npy", "img0006.nii.gz", "img0006.npy"]


def test_empty_training_split_is_input_error(tmp_path):
    (tmp_path / "REFUGE" / "Training-400").mkdir(parents=True)
    (tmp_path / "REFUGE" / "Test-400").mkdir(parents=True)
    with pytest.raises(InputError, match="Training-400: no REFUGE cases"):
        resnet.check(_task(tmp_path, "refuge", tmp_path))


def test_deeplab_needs_batches_of_two(tmp_path, refuge_multirater):
    task = _task(tmp_path, "refuge", refuge_multirater, batch_size=1)
    with pytest.raises(InputError, match="hparams.batch_size: deeplabv3_resnet50 needs >= 2"):
        resnet.check(Task(**{**task.to_dict(), "variant": "deeplabv3_resnet50"}))


def test_bad_hparam_names_the_key(tmp_path, refuge_multirater):
    with pytest.raises(InputError, match=r"unknown key 'lrr' in hparams \(did you mean 'lr'\?\)"):
        resnet.check(_task(tmp_path, "refuge", refuge_multirater, lrr=0.1))


def test_cli_unknown_variant_exits_2_with_one_line(tmp_path, refuge_multirater):
    proc = subprocess.run(
        [sys.executable, str(REPO / "baselines" / "train.py"), "--model", "resnet", "--variant", "resnet5",
         "--dataset", "refuge", "--data-path", str(refuge_multirater), "--output-root", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "baselines/train.py: error: variant: 'resnet5' is not one of resnet18, resnet34, resnet50, "
        "resnet101, deeplabv3_resnet50 (did you mean 'resnet50'?)")
    assert not any(tmp_path.iterdir())


def _bench():
    spec = importlib.util.spec_from_file_location("bench", REPO / "benchmarks" / "bench_baselines.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("mode", ["resnet-train", "resnet-predict"])
def test_benchmark_smoke_writes_json(tmp_path, mode):
    out = tmp_path / "bench.json"
    assert _bench().main(["--mode", mode, "--variant", "resnet18", "--image-size", "64", "--batch", "2",
                          "--steps", "2", "--warmup", "1", "--device", "cpu", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["benchmark"] == "baselines" and record["mode"] == mode and record["device"] == "cpu"
    assert record["images_per_s"] > 0 and record["peak_mem_gb"] > 0 and record["params_m"] > 10


def test_btcv_unlabelled_scans_leave_the_scored_test_split_alone(tmp_path):
    """The raw release's imagesTs scans have no labels: test is dataset_0.json's "validation",
    val is carved from "training", and the unlabelled scans are in neither."""
    from medsam2_hpc.data import synthetic

    root = synthetic.make_btcv(tmp_path / "btcv", layout="nifti", n_train=2, n_test=1, size=64, depth=8,
                               unlabelled=2)
    metrics = run_task(_task(tmp_path, "btcv", root, epochs=1))
    assert validate_metrics(metrics) == [] and metrics["split"] == "test"
    assert list(metrics["per_case"]) == ["img0003"]
    assert (metrics["selection_split"], metrics["selection_cases"]) == ("val", ["img0002"])
    assert metrics["hd95_unit"] == "mm" and metrics["checkpoint"]["validated"] is True
