"""YOLO11 baseline: offline end-to-end runs, resume from Ultralytics' last.pt, rasterising, errors."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from medsam2_hpc.cli.train import main as train_main
from medsam2_hpc.contract import validate_metrics
from medsam2_hpc.data import synthetic
from medsam2_hpc.engine.stop import StopRequested
from medsam2_hpc.errors import InputError
from medsam2_hpc.runner import run_task
from medsam2_hpc.task import Task
from medsam2_hpc.trainers.baselines import yolo
from medsam2_hpc.trainers.baselines.yolo_weights import check_yolo_checkpoint

REPO = Path(__file__).resolve().parents[1]
FAST = {"batch_size": 4, "image_size": 64, "num_workers": 0}


@pytest.fixture
def no_network(monkeypatch):
    """Every connect or DNS lookup is recorded and refused; the test asserts none happened.

    Recording (not only raising) matters: Ultralytics wraps its online checks in
    ``except Exception``, which would swallow a raised failure.
    """
    attempts: list[str] = []

    def refuse(what):
        def call(*args, **kwargs):
            attempts.append(f"{what}{args[1:] if what == 'connect' else args}")
            raise OSError(f"network blocked in tests: {what}")
        return call

    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("connect"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    yield attempts
    assert attempts == [], f"network access attempted: {attempts}"


def _task(tmp_path, dataset, root, variant="yolo11n-seg", **hparams) -> Task:
    return Task(model="yolo", variant=variant, dataset=dataset, data_path=str(root),
                output_root=str(tmp_path / "runs"), hparams={**FAST, **hparams})


def test_refuge_run_offline_keeps_ultralytics_outputs(tmp_path, refuge_challenge, no_network, monkeypatch):
    """A relative output root (as `python train.py` uses) keeps Ultralytics' files in the run dir."""
    monkeypatch.chdir(tmp_path)
    task = dataclasses.replace(_task(tmp_path, "refuge", refuge_challenge, epochs=1), output_root="runs")
    metrics = run_task(task)
    assert validate_metrics(metrics) == []
    assert set(metrics["per_class"]) == {"cup", "disc"} and metrics["epochs_completed"] == 1
    run = task.run_dir.path
    data = yaml.safe_load((run / "yolo_data" / "dataset.yaml").read_text())
    assert data["names"] == {0: "cup", 1: "disc"}
    assert len(list((run / "yolo_data" / "labels" / "train").glob("*.txt"))) == 4
    assert {"results.csv", "results.png", "args.yaml"} <= {p.name for p in (run / "yolo" / "train").iterdir()}
    for name in ("best.pt", "last.pt"):
        assert os.path.samefile(task.run_dir.checkpoints / name, run / "yolo" / "train" / "weights" / name)
    assert len(list(task.run_dir.predictions.glob("*.png"))) == 2 * metrics["n_cases"]


def test_btcv_run_resumes_from_ultralytics_last_pt(tmp_path, btcv_slices, monkeypatch, no_network):
    """Stopped after epoch 1 (as by Slurm's signal), the rerun resumes and finishes epoch 2."""
    task = _task(tmp_path, "btcv", btcv_slices, epochs=2, plots=False)
    last = task.run_dir.path / "yolo" / "train" / "weights" / "last.pt"
    monkeypatch.setattr(yolo, "stop_requested", last.exists)
    with pytest.raises(StopRequested):
        run_task(task)
    assert task.run_dir.status()["state"] == "preempted" and last.is_file()
    check_yolo_checkpoint(last, "resume checkpoint")  # our own checkpoints pass the weights-only read
    monkeypatch.setattr(yolo, "stop_requested", lambda: False)
    metrics = run_task(task)
    check_yolo_checkpoint(task.run_dir.best_ckpt, "best.pt")
    assert validate_metrics(metrics) == []
    assert metrics["epochs_completed"] == 2 and metrics["n_cases"] == 2
    assert 0.0 <= metrics["dice_mean_per_slice"] <= 1.0 and metrics["train_seconds"] > 0
    assert sorted(p.suffix for p in task.run_dir.predictions.iterdir()) == [".npy", ".npy"]


def test_yolo11l_seg_trains_one_epoch(tmp_path, no_network):
    """The size the study uses builds from its YAML and trains (27M parameters, no weights downloaded)."""
    root = synthetic.make_refuge(tmp_path / "refuge", "multirater", n_train=2, n_test=1, size=64, seed=2)
    metrics = run_task(_task(tmp_path, "refuge", root, variant="yolo11l-seg", epochs=1, plots=False))
    assert validate_metrics(metrics) == []
    assert 25 < metrics["params_m"] < 30 and metrics["variant"] == "yolo11l-seg"


def _result(masks, cls, conf):
    boxes = SimpleNamespace(cls=torch.tensor(cls, dtype=torch.float), conf=torch.tensor(conf))
    return SimpleNamespace(masks=SimpleNamespace(data=torch.stack(masks).float()), boxes=boxes)


def test_predictions_rasterise_to_label_maps_most_confident_wins():
    a, b = torch.zeros(8, 8, dtype=torch.bool), torch.zeros(8, 8, dtype=torch.bool)
    a[:4], b[2:6] = True, True  # overlap on rows 2-3
    results = [_result([a, b], [0, 5], [0.9, 0.4]), SimpleNamespace(masks=None)]
    model = SimpleNamespace(predict=lambda *a_, **k: results)
    data = SimpleNamespace(multilabel=False, num_outputs=14)
    scores = yolo.make_predictor(model, data, yolo.YoloConfig(image_size=64), torch.device("cpu"))(
        torch.zeros(2, 3, 8, 8))
    label = scores.argmax(1)
    assert label[0, 0, 0] == 1 and label[0, 3, 0] == 1 and label[0, 5, 0] == 6 and label[0, 7, 0] == 0
    assert (label[1] == 0).all()


def test_predictions_union_per_class_for_refuge():
    a, b = torch.zeros(8, 8, dtype=torch.bool), torch.zeros(8, 8, dtype=torch.bool)
    a[:2], b[6:] = True, True
    model = SimpleNamespace(predict=lambda *a_, **k: [_result([a, b], [1, 1], [0.5, 0.6])])
    data = SimpleNamespace(multilabel=True, num_outputs=2)
    scores = yolo.make_predictor(model, data, yolo.YoloConfig(image_size=64), torch.device("cpu"))(
        torch.zeros(1, 3, 8, 8))
    assert torch.equal(scores[0, 1] >= 0.5, a | b) and not scores[0, 0].any()


def test_unknown_variant_suggests_the_near_miss(tmp_path, refuge_multirater):
    with pytest.raises(InputError, match=r"variant: 'yolo11l-sg' .*did you mean 'yolo11l-seg'"):
        yolo.check(_task(tmp_path, "refuge", refuge_multirater, variant="yolo11l-sg"))


def test_image_size_must_be_multiple_of_32(tmp_path, refuge_multirater):
    with pytest.raises(InputError, match="hparams.image_size: YOLO needs a multiple of 32"):
        yolo.check(_task(tmp_path, "refuge", refuge_multirater, image_size=100))


def test_unwritable_dataset_folder_exits_2(tmp_path, refuge_multirater, capsys):
    """A file where yolo_data/ should go: one line naming it, exit 2 (through the train command)."""
    run = tmp_path / "runs" / "local" / "blocked"
    run.mkdir(parents=True)
    (run / "yolo_data").write_text("in the way")
    code = train_main(["--model", "yolo", "--variant", "yolo11n-seg", "--dataset", "refuge", "--data-path",
                       str(refuge_multirater), "--output-root", str(tmp_path / "runs"), "--name", "blocked",
                       "--epochs", "1", "--image-size", "64", "--set", "num_workers=0"],
                      models=("resnet", "yolo"))
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "yolo_data: YOLO dataset folder cannot be written" in err


@pytest.mark.parametrize("mode", ["yolo-train", "yolo-predict"])
def test_benchmark_smoke_writes_json(tmp_path, mode, no_network):
    spec = importlib.util.spec_from_file_location("bench", REPO / "benchmarks" / "bench_baselines.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert bench.main(["--mode", mode, "--variant", "yolo11n-seg", "--image-size", "64", "--batch", "2",
                       "--steps", "2", "--warmup", "1", "--workers", "0", "--device", "cpu",
                       "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["benchmark"] == "baselines" and record["mode"] == mode
    assert record["variant"] == "yolo11n-seg"
    assert record["images_per_s"] > 0 and record["peak_mem_gb"] > 0
