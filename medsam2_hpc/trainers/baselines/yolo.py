"""YOLO11 segmentation baseline (Ultralytics 8.4), trained and scored like the other models.

The same loaders as SAM2 feed an Ultralytics dataset folder in the run directory
(``yolo_data/``: PNG images, polygon label files, ``dataset.yaml``; see yolo_labels.py).
Ultralytics trains into ``yolo/train`` (its results.csv, plots and weights stay there);
``best.pt``/``last.pt`` are linked into ``checkpoints/`` (Ultralytics' format, loaded only by
Ultralytics and only weights-only: see yolo_weights.py). Test predictions are rasterised to
masks / label maps and scored with our Dice by trainers/baselines/data.py, never with YOLO's mAP.

No network at any step: the model is built from ``<variant>.yaml`` (or a local ``.pt``),
``YOLO_OFFLINE``/``YOLO_AUTOINSTALL`` are set and the settings directory (with a bundled
font standing in for Arial, which Ultralytics would download) lives in the run directory,
all before ``ultralytics`` is first imported. AMP runs as bf16, the mode in which
Ultralytics skips its AMP check (which downloads a model). ``best.pt`` is chosen by
Ultralytics' fitness (box/mask mAP on the val split), not by Dice, so metrics.json carries
``selection_dice`` null and no best epoch.
"""

from __future__ import annotations

import csv
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from medsam2_hpc.atomic import read_json, write_json
from medsam2_hpc.contract import RunCost, Selection, build_metrics, checkpoint_record
from medsam2_hpc.data import check_data
from medsam2_hpc.engine.checkpoint import link_into
from medsam2_hpc.engine.runtime import peak_memory_gb, pick_device, reset_peak_memory, seed_everything
from medsam2_hpc.engine.stop import StopRequested, stop_requested
from medsam2_hpc.errors import InputError
from medsam2_hpc.options import config_from_dict, look_up
from medsam2_hpc.registry import model_kind
from medsam2_hpc.task import RunDir, Task
from medsam2_hpc.trainers.baselines.yolo_weights import check_yolo_checkpoint, safe_load_switch

if TYPE_CHECKING:  # the check imports no torch (``submit`` runs it for every task); training does
    import torch

    from medsam2_hpc.trainers.baselines.data import BaselineData, Predict

__all__ = ["VARIANTS", "YoloConfig", "check", "train", "offline_environment"]

VARIANTS = model_kind("yolo").variants


@dataclass
class YoloConfig:
    """``task.hparams`` of the YOLO baseline (unknown keys are rejected with a near miss)."""

    epochs: int = 100
    batch_size: int = 16
    lr: float | None = None  # None: Ultralytics' automatic optimizer and lr; else AdamW at this lr
    image_size: int = 640
    out_size: int | None = None  # REFUGE ground-truth size for scoring (default: image_size)
    num_workers: int = 2
    amp: Literal["bf16", "none"] = "bf16"
    device: str = "auto"
    weights: str | None = None  # local .pt to start from (default: random init from <variant>.yaml)
    classes: list[str] | None = None  # REFUGE classes (default: every class the layout has)
    conf: float = 0.25  # detection confidence kept when rasterising predictions
    patience: int = 100
    # Ultralytics' own augmentation and warm-up, under its names and defaults. A few-minute run from
    # random weights learns faster without them (the demo), and a horizontal flip swaps the sides of
    # BTCV's left/right organs without swapping their classes.
    mosaic: float = 1.0
    fliplr: float = 0.5
    warmup_epochs: float = 3.0
    plots: bool = True
    hd95: bool = False
    select: Literal["best", "last"] = "best"  # best: Ultralytics' best.pt (fitness on val); last: last.pt
    split_file: str | None = None  # JSON train/val/test case ids (data/splits.py)


def _config(task: Task) -> YoloConfig:
    cfg = config_from_dict(YoloConfig, task.hparams, "hparams")
    for key in ("epochs", "batch_size", "image_size"):
        if getattr(cfg, key) < 1:
            raise InputError(f"hparams.{key}: must be >= 1, got {getattr(cfg, key)}")
    for key in ("mosaic", "fliplr"):
        if not 0 <= getattr(cfg, key) <= 1:
            raise InputError(f"hparams.{key}: a probability in [0, 1], got {getattr(cfg, key)}")
    if cfg.warmup_epochs < 0:
        raise InputError(f"hparams.warmup_epochs: must be >= 0, got {cfg.warmup_epochs}")
    if cfg.image_size % 32:
        raise InputError(f"hparams.image_size: YOLO needs a multiple of 32, got {cfg.image_size}")
    return cfg


def check(task: Task) -> None:
    """Hyper-parameters, variant, data (one decoded sample per split) and every checkpoint Ultralytics
    would load (``weights``, a resumed run's last/best.pt), weights-only; writes nothing."""
    cfg = _config(task)
    look_up(task.variant, VARIANTS, "variant")
    pick_device(cfg.device)
    if cfg.weights:
        check_yolo_checkpoint(cfg.weights, "hparams.weights")
    for name in ("last.pt", "best.pt"):
        if (_weights_dir(task.run_dir) / name).exists():
            check_yolo_checkpoint(_weights_dir(task.run_dir) / name, "resume checkpoint")
    check_data(task, cfg.classes, cfg.split_file)


def _weights_dir(run: RunDir) -> Path:
    return run.path / "yolo" / "train" / "weights"


def offline_environment(config_dir: Path) -> None:
    """Make Ultralytics work with no network: call before ``import ultralytics``.

    Ultralytics reads these variables once, at import; in a process that imported it already
    (several runs in one test session) its existing settings directory gets the font instead.
    """
    safe_load_switch()
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "False"
    if "ultralytics" not in sys.modules:
        os.environ["YOLO_CONFIG_DIR"] = os.fspath(config_dir)
    from matplotlib import get_data_path
    from ultralytics.utils import USER_CONFIG_DIR

    font = Path(get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    Path(USER_CONFIG_DIR).mkdir(parents=True, exist_ok=True)
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (Path(USER_CONFIG_DIR) / name).exists():
            shutil.copyfile(font, Path(USER_CONFIG_DIR) / name)
    from ultralytics.utils import SETTINGS

    SETTINGS.update(sync=False, clearml=False, comet=False, dvc=False, mlflow=False, raytune=False,
                    wandb=False, tensorboard=False)


def _ultralytics_device(device: torch.device) -> str:
    return str(device.index or 0) if device.type == "cuda" else "cpu"


def _train_ultralytics(task: Task, run: RunDir, cfg: YoloConfig, data_yaml: Path,
                       device: torch.device) -> Path:
    """Train (or resume from Ultralytics' last.pt) into ``run/yolo/train``; return its weights folder."""
    from ultralytics import YOLO

    # absolute: Ultralytics puts a relative project under its own runs_dir, not under the cwd
    save_dir = _weights_dir(run).parent.resolve()
    last = save_dir / "weights" / "last.pt"
    clock = run.path / "yolo" / "train_seconds.json"
    spent = float(read_json(clock)["seconds"]) if clock.is_file() and last.is_file() else 0.0
    start = time.perf_counter()

    def on_epoch_end(_trainer: Any) -> None:  # last.pt of this epoch is saved by now
        write_json(clock, {"seconds": spent + time.perf_counter() - start})
        if stop_requested():
            raise StopRequested("stop requested by signal; resume from Ultralytics' last.pt")

    def on_train_end(_trainer: Any) -> None:  # last.pt is stripped now: it can no longer be resumed
        write_json(run.path / "yolo" / "done.json", {"epochs": _epochs_done(save_dir / "results.csv")})

    def on_batch_end(_trainer: Any) -> None:
        if stop_requested():
            raise StopRequested("stop requested by signal; resume from Ultralytics' last.pt")

    if last.is_file():
        model = YOLO(os.fspath(last))
        args: dict[str, Any] = {"resume": os.fspath(last), "data": os.fspath(data_yaml.resolve())}
    else:
        model = YOLO(cfg.weights or f"{task.variant}.yaml")
        args = {"data": os.fspath(data_yaml.resolve()), "epochs": cfg.epochs, "imgsz": cfg.image_size,
                "batch": cfg.batch_size, "workers": cfg.num_workers, "seed": task.seed,
                "project": os.fspath(save_dir.parent), "name": save_dir.name, "exist_ok": True,
                "pretrained": bool(cfg.weights), "patience": cfg.patience, "plots": cfg.plots,
                "mosaic": cfg.mosaic, "fliplr": cfg.fliplr, "warmup_epochs": cfg.warmup_epochs,
                "amp": "bf16" if cfg.amp == "bf16" and device.type == "cuda" else False}
        if cfg.lr is not None:
            args.update(optimizer="AdamW", lr0=cfg.lr)
    model.add_callback("on_fit_epoch_end", on_epoch_end)
    model.add_callback("on_train_batch_end", on_batch_end)
    model.add_callback("on_train_end", on_train_end)
    model.train(device=_ultralytics_device(device), verbose=False, **args)
    return save_dir / "weights"


def _epochs_done(results_csv: Path) -> int:
    if not results_csv.is_file():
        return 0
    with open(results_csv, encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh, skipinitialspace=True)]
    return int(float(rows[-1]["epoch"])) if rows else 0


def make_predictor(model: Any, data: BaselineData, cfg: YoloConfig, device: torch.device) -> Predict:
    """``images [B,3,S,S] -> scores [B,K,S,S]``: instance masks unioned per class (REFUGE) or painted
    into a label map in increasing confidence, so the most confident instance wins (BTCV)."""
    import numpy as np
    import torch

    from medsam2_hpc.trainers.baselines.data import to_uint8_rgb

    def predict(images: torch.Tensor) -> torch.Tensor:
        size = images.shape[-2:]
        batch = [np.ascontiguousarray(to_uint8_rgb(im)[..., ::-1]) for im in images]  # Ultralytics wants BGR
        results = model.predict(batch, imgsz=cfg.image_size, conf=cfg.conf, retina_masks=True, verbose=False,
                                device=_ultralytics_device(device))
        out = torch.zeros(len(images), data.num_outputs, *size)
        for i, res in enumerate(results):
            if res.masks is None:
                if not data.multilabel:
                    out[i, 0] = 1.0
                continue
            masks = res.masks.data.float().cpu() > 0.5
            cls = res.boxes.cls.long().cpu()
            if data.multilabel:
                for m, c in zip(masks, cls, strict=True):
                    out[i, c] = torch.maximum(out[i, c], m.float())
            else:
                label = torch.zeros(size, dtype=torch.long)
                for j in res.boxes.conf.cpu().argsort():
                    label[masks[j]] = int(cls[j]) + 1
                out[i] = torch.nn.functional.one_hot(label, data.num_outputs).permute(2, 0, 1).float()
        return out

    return predict


def train(task: Task, run: RunDir) -> dict[str, Any]:
    from medsam2_hpc.trainers.baselines.data import load_data, to_uint8_rgb
    from medsam2_hpc.trainers.baselines.yolo_labels import export_dataset

    cfg = _config(task)
    seed_everything(task.seed)
    device = pick_device(cfg.device)
    offline_environment(run.path / "yolo_config")
    data = load_data(task, cfg.image_size, cfg.out_size, cfg.classes, cfg.split_file)
    data_yaml = export_dataset(run.path / "yolo_data", {"train": data.train, "val": data.val},
                               data.class_names, data.multilabel, to_uint8_rgb)
    reset_peak_memory(device)
    weights = _weights_dir(run)
    if not (run.path / "yolo" / "done.json").is_file():
        weights = _train_ultralytics(task, run, cfg, data_yaml, device)
    for name in ("last.pt", "best.pt"):
        link_into(weights / name, run.checkpoints / name)
    from ultralytics import YOLO

    chosen = run.best_ckpt if cfg.select == "best" else run.last_ckpt
    model = YOLO(os.fspath(chosen))
    t0 = time.perf_counter()
    scores = data.evaluate(make_predictor(model, data, cfg, device), run.predictions,
                           batch_size=cfg.batch_size, hd95=cfg.hd95)
    clock = run.path / "yolo" / "train_seconds.json"
    epochs = _epochs_done(weights.parent / "results.csv")
    cost = RunCost(epochs, float(read_json(clock)["seconds"]) if clock.is_file() else 0.0,
                   time.perf_counter() - t0, sum(p.numel() for p in model.model.parameters()) / 1e6,
                   peak_memory_gb(device))
    checkpoint = checkpoint_record(cfg.select, None if cfg.select == "best" else epochs, True)
    return build_metrics(task, split="test", scores=scores, cost=cost, hparams=asdict(cfg),
                         selection=Selection("val", data.selection_cases, None, checkpoint),
                         image_size=cfg.image_size)
