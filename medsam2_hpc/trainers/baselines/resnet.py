"""ResNet baseline trainer: a ResNet-encoder U-Net (see resnet_net.py) trained per 2D image/slice.

REFUGE: one sigmoid channel per class (cup, and disc where present; the disc contains the cup,
so the classes overlap and a softmax would not fit), Dice+focal or weighted BCE like SAM2.
BTCV: softmax over background + 13 organs with Dice+CE, slice by slice; test volumes are
predicted slice by slice, stacked and scored volumetrically (trainers/baselines/data.py), exactly
like the SAM2 3D trainer. The shared TrainLoop gives resume, TensorBoard and best/last.
``check`` imports no torch (``submit`` runs it for every task on a login node); ``train`` does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from medsam2_hpc.contract import RunCost, Selection, build_metrics
from medsam2_hpc.data import check_data
from medsam2_hpc.engine.checkpoint import check_resumable
from medsam2_hpc.engine.runtime import pick_device
from medsam2_hpc.errors import InputError
from medsam2_hpc.options import config_from_dict, look_up
from medsam2_hpc.registry import model_kind
from medsam2_hpc.task import RunDir, Task

if TYPE_CHECKING:
    import torch
    from torch import nn

    from medsam2_hpc.trainers.baselines.data import Predict

__all__ = ["ResNetConfig", "check", "train", "make_predictor"]


@dataclass
class ResNetConfig:
    """``task.hparams`` of the ResNet baseline (unknown keys are rejected with a near miss)."""

    epochs: int = 50
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    image_size: int = 256
    out_size: int | None = None  # REFUGE ground-truth size for scoring (default: image_size)
    val_freq: int = 1
    num_workers: int = 2
    amp: Literal["bf16", "fp16", "none"] = "bf16"
    device: str = "auto"
    loss: Literal["dicefocal", "bce"] = "dicefocal"  # REFUGE; BTCV always uses Dice + CE
    pos_weight: float = 2.0
    classes: list[str] | None = None  # REFUGE classes (default: every class the layout has)
    pretrained_weights: str | None = None  # local torchvision ResNet state dict (ImageNet)
    hd95: bool = False
    select: Literal["best", "last"] = "best"  # scored weights: best validation Dice, or the last epoch
    split_file: str | None = None  # JSON train/val/test case ids (data/splits.py)


def _config(task: Task) -> ResNetConfig:
    cfg = config_from_dict(ResNetConfig, task.hparams, "hparams")
    for key in ("epochs", "batch_size", "image_size", "val_freq"):
        if getattr(cfg, key) < 1:
            raise InputError(f"hparams.{key}: must be >= 1, got {getattr(cfg, key)}")
    if not 0 < cfg.pos_weight < math.inf:  # what losses.make_loss would refuse in the job
        raise InputError(f"hparams.pos_weight: {cfg.pos_weight!r} must be a number > 0")
    if cfg.pretrained_weights and not Path(cfg.pretrained_weights).is_file():
        raise InputError(f"hparams.pretrained_weights {cfg.pretrained_weights}: no such file")
    return cfg


def check(task: Task) -> None:
    """Hyper-parameters, variant, weights file and data (a non-empty training split); writes nothing."""
    cfg = _config(task)
    look_up(task.variant, model_kind("resnet").variants, "variant")  # torchvision's builders of these names
    if task.variant.startswith("deeplab") and cfg.batch_size < 2:  # its ASPP pooling has BatchNorm on 1x1
        raise InputError(f"hparams.batch_size: {task.variant} needs >= 2 images per batch, "
                         f"got {cfg.batch_size}")
    pick_device(cfg.device)
    check_resumable(task.run_dir)
    check_data(task, cfg.classes, cfg.split_file)


def _criterion(multilabel: bool, cfg: ResNetConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Multi-label loss on [B,C,H,W] masks (REFUGE) or Dice+CE on [B,H,W] label maps (BTCV)."""
    if multilabel:
        from medsam2_hpc.losses import make_loss

        loss = make_loss(cfg.loss, cfg.pos_weight)
        return lambda logits, target: loss(logits.float(), target.float())
    from monai.losses import DiceCELoss  # MONAI imports in seconds: built here, not where submit checks

    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
    return lambda logits, target: dice_ce(logits.float(), target[:, None].long())


def train(task: Task, run: RunDir) -> dict[str, Any]:
    import torch

    from medsam2_hpc.engine import (
        LoopConfig,
        TrainLoop,
        autocast,
        count_params_m,
        load_checkpoint,
        peak_memory_gb,
        progress,
        seed_everything,
    )
    from medsam2_hpc.engine.distributed import epoch_loader, on_main, shard_size
    from medsam2_hpc.engine.runtime import reset_peak_memory
    from medsam2_hpc.trainers.baselines.data import load_data
    from medsam2_hpc.trainers.baselines.resnet_net import build_network

    cfg = _config(task)
    seed_everything(task.seed)
    device = pick_device(cfg.device)
    data = load_data(task, cfg.image_size, cfg.out_size, cfg.classes, cfg.split_file)
    model = build_network(task.variant, data.num_outputs, cfg.pretrained_weights).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and cfg.amp == "fp16" else None
    criterion = _criterion(data.multilabel, cfg)
    loop = TrainLoop(run, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                     config=LoopConfig(epochs=cfg.epochs, val_freq=cfg.val_freq, select=cfg.select),
                     extra_state={"config": asdict(cfg)})
    loop.resume()
    reset_peak_memory(device)
    predict = make_predictor(model, device, cfg.amp, data.multilabel)
    shard = shard_size(len(data.train))  # this rank's images per epoch (all of them on one GPU)

    def train_epoch(epoch: int) -> dict[str, float]:
        model.train()
        lonely = shard % cfg.batch_size == 1 and shard > 1  # BatchNorm on one image
        loader = epoch_loader(data.train, epoch=epoch, seed=task.seed, batch_size=cfg.batch_size,
                              drop_last=lonely, num_workers=cfg.num_workers)
        total, n = 0.0, 0
        for batch in progress(loader, f"train {epoch + 1}/{cfg.epochs}"):
            loop.check_stop()
            images, target = batch["image"].to(device), batch["target"].to(device)
            with autocast(device, cfg.amp):
                loss = criterion(model(images), target)
            loop.backward(loss)
            loop.step()
            total, n = total + float(loss.detach()) * len(images), n + len(images)
        scheduler.step()
        return {"loss": total / max(n, 1)}

    def validate(epoch: int) -> dict[str, float]:
        scores = data.evaluate(predict, None, batch_size=cfg.batch_size, split="val")
        slices = scores.dice_mean_per_slice
        return {"dice": scores.dice_mean, **({} if slices is None else {"dice_per_slice": slices})}

    loop.fit(train_epoch, validate)
    chosen = loop.selected()
    t0 = time.perf_counter()

    def score() -> Any:
        model.load_state_dict(load_checkpoint(chosen.path, what="selected checkpoint")["model"])
        return data.evaluate(predict, run.predictions, batch_size=cfg.batch_size, hd95=cfg.hd95)

    scores = on_main(score)
    cost = RunCost(loop.state.epoch, loop.state.train_seconds, time.perf_counter() - t0,
                   count_params_m(model), peak_memory_gb(device))
    return build_metrics(task, split="test", scores=scores, cost=cost, hparams=asdict(cfg),
                         selection=Selection("val", data.selection_cases, chosen.score, chosen.record()),
                         image_size=cfg.image_size)


def make_predictor(model: nn.Module, device: torch.device, amp: str, multilabel: bool) -> Predict:
    """``images -> scores in [0,1]`` on the CPU: sigmoid per class, or softmax over the label set."""
    import torch

    from medsam2_hpc.engine.runtime import autocast

    @torch.no_grad()
    def predict(images: torch.Tensor) -> torch.Tensor:
        model.eval()
        with autocast(device, amp):
            logits = model(images.to(device)).float()
        return (torch.sigmoid(logits) if multilabel else torch.softmax(logits, 1)).cpu()

    return predict

