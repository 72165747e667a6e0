"""SAM2 2D trainer end to end on synthetic REFUGE (Hiera-T, random weights, 128 px images)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from medsam2_hpc import metrics
from medsam2_hpc.cli.compat import train_2d
from medsam2_hpc.cli.compat.common import find_resume_dir
from medsam2_hpc.contract import validate_metrics
from medsam2_hpc.data.refuge import RefugeDataset
from medsam2_hpc.engine import pick_device
from medsam2_hpc.engine.checkpoint import load_checkpoint
from medsam2_hpc.engine.stop import StopRequested, clear_stop, install_handlers
from medsam2_hpc.errors import InputError
from medsam2_hpc.models.sam2 import build_sam2_model, set_trainable
from medsam2_hpc.runner import run_task
from medsam2_hpc.task import Task
from medsam2_hpc.trainers.sam2 import train_2d as sam2_2d
from medsam2_hpc.trainers.sam2.common import build_model, optimizer_for, upsample

REPO = Path(__file__).resolve().parents[1]
SMALL = ["-net", "sam2", "-sam_config", "sam2_hiera_t", "-sam_ckpt", "none", "-image_size", "128",
         "-out_size", "64", "-b", "2", "-num_workers", "0", "-dataset", "REFUGE"]


@pytest.fixture(autouse=True)
def _quiet_random_weights():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "sam2_hiera_t: no checkpoint", UserWarning)
        yield


@pytest.fixture(scope="module")
def compat_run(refuge_multirater: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-epoch Medical-SAM2-compatible run: `train_2d.py -exp_name smoke ...` in a fresh directory."""
    work = tmp_path_factory.mktemp("compat_run")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            rc = train_2d.main([*SMALL, "-exp_name", "smoke", "-epoch", "2", "-val_freq", "1", "-vis", "1",
                                "-train_vis", "1", "-memory_bank_size", "2",
                                "-data_path", str(refuge_multirater)])
    finally:
        os.chdir(cwd)
    assert rc == 0
    (run,) = (work / "logs").iterdir()
    return run


def test_two_epoch_run_writes_every_output(compat_run: Path, refuge_multirater: Path) -> None:
    assert re.fullmatch(r"smoke_\d{4}(_\d\d){5}", compat_run.name)
    data = json.loads((compat_run / "metrics.json").read_text())
    assert validate_metrics(data) == []
    assert (data["model"], data["variant"], data["prompt"]) == ("sam2-2d", "hiera_t", "click")
    test_names = RefugeDataset(refuge_multirater, "test").names
    assert sorted(data["per_case"]) == sorted(test_names) and set(data["per_class"]) == {"cup"}
    assert data["epochs_completed"] == 2 and 0 <= data["iou_mean"] <= data["dice_mean"] <= 1
    assert json.loads((compat_run / "status.json").read_text())["state"] == "completed"
    for name in ("checkpoints/last.pt", "checkpoints/best.pt", "Model/best_dice_epoch.pth",
                 "Model/latest_epoch.pth", "task.yaml"):
        assert (compat_run / name).is_file(), name
    assert load_checkpoint(compat_run / "Model/latest_epoch.pth")["loop"]["epoch"] == 2
    assert {p.name for p in (compat_run / "predictions").iterdir()} == {f"{n}_cup.png" for n in test_names}
    vis = {p.name for p in (compat_run / "vis").iterdir()}
    for tag in ("val_e1_", "val_e2_", "test_", "train_e1_"):
        assert any(v.startswith(tag) for v in vis), tag
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(compat_run / "logs" / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/lr", "val/dice", "val/iou"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("val/dice")] == [0, 1]


def test_reloaded_checkpoint_gives_identical_predictions(compat_run: Path, tmp_path: Path) -> None:
    task = Task.from_yaml(compat_run / "task.yaml")
    cfg = dataclasses.replace(sam2_2d.config(task), sam_ckpt=str(compat_run / "Model/best_dice_epoch.pth"))
    device = pick_device(cfg.device)  # the run's own device: CUDA and CPU kernels round differently
    model = build_model(task, cfg, device)  # the strict builder path users take with -sam_ckpt / -pretrain
    test_ds = RefugeDataset(task.data_path, "test", cfg.image_size, cfg.out_size)
    predictor = sam2_2d.Predictor(model, cfg, 1, device)
    prompted = sam2_2d.Prompted(test_ds, task.prompt, cfg.image_size, task.seed, sam2_2d.Prompted.EVAL_EPOCH)
    scores = sam2_2d.evaluate(predictor, prompted, pred_dir=tmp_path, tag="reload")
    saved = json.loads((compat_run / "metrics.json").read_text())["per_case"]
    assert {c: v["cup"] for c, v in scores.per_case.items()} == pytest.approx(
        {c: v["cup"] for c, v in saved.items()}, abs=1e-6)
    for png in (compat_run / "predictions").iterdir():
        assert (tmp_path / png.name).read_bytes() == png.read_bytes()


def test_overfitting_one_image_raises_dice(refuge_multirater: Path) -> None:
    torch.manual_seed(0)
    data = sam2_2d.Prompted(RefugeDataset(refuge_multirater, "train", image_size=128, out_size=64), "click",
                            128, seed=0, epoch=0)
    batch = {k: v[None] if torch.is_tensor(v) else [v] for k, v in data[0].items()}
    mask = batch["mask"]
    cfg = sam2_2d.Sam2Config2D(image_size=128, out_size=64, lr=1e-3, memory_bank_size=0, loss="dicefocal")
    model = build_sam2_model("sam2_hiera_t", "none", image_size=128, allow_random=True)
    set_trainable(model, cfg.trainable)
    optimizer, loss_fn = optimizer_for(model, cfg), cfg.train_loss()
    predictor = sam2_2d.Predictor(model, cfg, 1, torch.device("cpu"))

    def dice() -> float:
        model.eval()
        with torch.no_grad():
            logits, _ = predictor(batch)
        model.train()
        return metrics.dice(metrics.probs_to_mask(logits)[0, 0], mask[0, 0].bool())

    start = dice()
    for _ in range(15):
        prop = predictor.propose(batch)  # a click: three proposals, as the trainer scores them
        loss = loss_fn(upsample(prop.masks, 64), prop.ious, prop.obj[:, 0], mask[:, 0])["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    end = dice()
    assert end > 0.8 and end > start + 0.4, (start, end)


def test_resume_after_interruption_continues_at_next_epoch(refuge_challenge: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Slurm's USR2 (sent for real to this process) stops the run after epoch 1; the rerun does 2 and 3."""
    task = Task(model="sam2-2d", variant="hiera_t", dataset="refuge", data_path=str(refuge_challenge),
                output_root=str(tmp_path), study="resume", prompt="bbox",
                hparams={"epochs": 3, "batch_size": 2, "image_size": 128, "out_size": 64, "val_freq": 1,
                         "num_workers": 0, "sam_ckpt": "none", "memory_bank_size": 0, "loss": "dicefocal"})
    real, trained = sam2_2d._train_epoch, []

    def epoch_then_signal(ctx, epoch):
        trained.append(epoch)
        out = real(ctx, epoch)
        if len(trained) == 1:
            os.kill(os.getpid(), signal.SIGUSR2)
        return out

    monkeypatch.setattr(sam2_2d, "_train_epoch", epoch_then_signal)
    old = {s: signal.getsignal(s) for s in (signal.SIGUSR2, signal.SIGTERM)}
    install_handlers()
    try:
        with pytest.raises(StopRequested):
            run_task(task)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        clear_stop()
    run = task.run_dir
    assert run.status()["state"] == "preempted"
    assert load_checkpoint(run.last_ckpt)["loop"]["epoch"] == 1
    metrics_out = run_task(task)
    assert trained == [0, 1, 2]
    assert [h["epoch"] for h in load_checkpoint(run.last_ckpt)["loop"]["history"]] == [0.0, 1.0, 2.0]
    assert metrics_out["epochs_completed"] == 3 and set(metrics_out["per_class"]) == {"cup", "disc"}
    assert metrics_out["prompt"] == "bbox" and validate_metrics(metrics_out) == []


def test_resume_flag_finds_the_run(compat_run: Path) -> None:
    assert find_resume_dir("latest", "smoke", compat_run.parent) == compat_run
    assert find_resume_dir(str(compat_run / "Model" / "latest_epoch.pth"), "x") == compat_run
    with pytest.raises(InputError, match="-resume: no run of -exp_name other"):
        find_resume_dir("latest", "other", compat_run.parent)


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "train_2d.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("train_2d.py: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_cli_mismatched_checkpoint_exits_2_and_writes_nothing(refuge_multirater: Path,
                                                              tmp_path: Path) -> None:
    ckpt = tmp_path / "sam2_hiera_tiny.pt"
    torch.save({"model": build_sam2_model("sam2_hiera_t", "none", image_size=128, allow_random=True)
                .state_dict()}, ckpt)
    args = [a if a != "none" else str(ckpt) for a in SMALL]
    args[args.index("sam2_hiera_t")] = "sam2_hiera_s"
    out = _cli([*args, "-exp_name", "bad", "-data_path", str(refuge_multirater)], tmp_path)
    assert out.returncode == 2
    assert "pass -sam_config sam2_hiera_t" in _one_line(out.stderr)
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("change,expect", [
    (["-sam_ckpt", "missing.pt"], "-sam_ckpt missing.pt: no such file"),
    (["-vis", "-1"], "-vis"),
])
def test_cli_bad_input_exits_2(refuge_multirater: Path, tmp_path: Path, change: list[str],
                               expect: str) -> None:
    out = _cli([*SMALL, *change, "-data_path", str(refuge_multirater)], tmp_path)
    assert out.returncode == 2 and expect in _one_line(out.stderr)
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("change,expect", [
    (["-distributed", "0,1"], "-distributed 0,1: multi-GPU training goes through jobs.yaml"),
    (["-b", "0"], "-b"),
    (["-amp", "fp8"], "-amp: 'fp8'"),
    (["-prompt", "mask"], "-prompt: 'mask'"),
    (["-net", "sam"], "-net: 'sam'"),
    (["-dataset", "btcv"], "-dataset: 'btcv'"),
    (["-sam_config", "sam2_hiera_x"], "did you mean 'sam2_hiera_t'"),
    (["-loss", "focal"], "-loss: 'focal'"),
    (["-image_size", "100"], "-image_size 100"),
    (["-train_vis", "maybe"], "-train_vis"),
    (["-resume"], "-resume: no run of -exp_name sam2"),
    (["-pretrain", "nope.pth"], "-pretrain nope.pth: no such file"),
])
def test_bad_flags_are_one_line(refuge_multirater: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture, change: list[str], expect: str) -> None:
    monkeypatch.chdir(tmp_path)
    assert train_2d.main([*SMALL, "-data_path", str(refuge_multirater), *change]) == 2
    assert expect in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "logs").exists()


def test_benchmark_cpu_smoke(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = importlib.util.spec_from_file_location("bench_sam2", REPO / "benchmarks" / "bench_sam2.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rc = bench.main(["--mode", "train2d", "--config", "sam2_hiera_t", "--image-size", "128", "--batch", "2",
                     "--steps", "1", "--warmup", "0", "--device", "cpu", "--out", str(tmp_path / "b.json")])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == json.loads((tmp_path / "b.json").read_text())
    assert printed["mode"] == "train2d" and printed["images_per_s"] > 0
    assert printed["mem_kind"] == "rss" and printed["peak_mem_gb"] > 0
    assert printed["params_m"] == pytest.approx(38.9, rel=0.01)
