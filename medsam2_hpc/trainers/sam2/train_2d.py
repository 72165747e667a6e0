"""SAM2 fine-tuning on 2D images (REFUGE optic cup/disc) with click or box prompts.

One prompt per (image, class) drawn from the ground truth; the mask decoder predicts one mask
per prompt, scored at ``out_size`` with Dice and IoU on sigmoid probabilities > 0.5. Validation
runs on the val split every ``val_freq`` epochs (chooses ``best.pt``); the selected weights
are scored once on the test split at the end for metrics.json.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medsam2_hpc import metrics
from medsam2_hpc.contract import RunCost, Selection, build_metrics
from medsam2_hpc.data import decode_first
from medsam2_hpc.engine import (
    LoopConfig,
    TrainLoop,
    autocast,
    count_params_m,
    peak_memory_gb,
    pick_device,
    progress,
    seed_everything,
)
from medsam2_hpc.engine.checkpoint import check_resumable
from medsam2_hpc.engine.distributed import any_process, epoch_loader, is_main_process, on_main, shard_size
from medsam2_hpc.engine.runtime import reset_peak_memory
from medsam2_hpc.errors import InputError
from medsam2_hpc.losses import MultimaskLoss
from medsam2_hpc.models.sam2 import set_trainable
from medsam2_hpc.options import config_from_dict
from medsam2_hpc.precheck import once
from medsam2_hpc.scoring import Scorer, Scores, resize_scores
from medsam2_hpc.task import RunDir, Task
from medsam2_hpc.trainers.sam2.common import (
    Sam2Config,
    best_mask,
    build_model,
    check_model,
    decode,
    encode,
    load_weights_from,
    optimizer_for,
    point_prompts,
    upsample,
)
from medsam2_hpc.trainers.sam2.memory_bank import MemoryBank
from medsam2_hpc.trainers.sam2.vis import mask_png, overlay_png

__all__ = ["Sam2Config2D", "config", "check", "train", "Prompted", "Proposals", "Predictor", "evaluate"]


@dataclass(kw_only=True)
class Sam2Config2D(Sam2Config):
    """2D keys on top of :class:`Sam2Config`: out_size (side at which masks are scored),
    memory_bank_size (earlier images' memories per class; 0 = off), classes (REFUGE classes,
    default: the layout's). Prompts are drawn from the task seed."""

    val_freq: int = 5
    out_size: int = 1024
    memory_bank_size: int = 16
    classes: list[str] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.out_size < 1 or self.memory_bank_size < 0:
            raise InputError("hparams: out_size must be >= 1 and memory_bank_size >= 0")


def config(task: Task) -> Sam2Config2D:
    return config_from_dict(Sam2Config2D, task.hparams, "hparams")


def _datasets(task: Task, cfg: Sam2Config2D) -> dict[str, Any]:
    """train, val (selection) and test (scored once) REFUGE datasets."""
    from medsam2_hpc.data.refuge import RefugeDataset

    kw = dict(image_size=cfg.image_size, out_size=cfg.out_size, classes=cfg.classes,
              split_file=cfg.split_file)
    return {split: RefugeDataset(task.data_path, split, **kw) for split in ("train", "val", "test")}


def check(task: Task) -> None:
    """Hyper-parameters, data layout and model/checkpoint fit, before anything is written."""
    cfg = config(task)
    check_resumable(task.run_dir)

    def decode() -> None:
        decode_first(_datasets(task, cfg), task.data_path)

    once(("refuge-data", task.data_path, cfg.image_size, cfg.out_size, tuple(cfg.classes or ()),
          cfg.split_file), decode)
    pick_device(cfg.device)
    check_model(task, cfg)


class Prompted(Dataset):
    """A dataset whose items also carry their ground-truth prompts (``coords``, ``labels``, ``present``).

    Prompts are made in the DataLoader workers: a click needs a distance transform of the mask,
    about 0.1 s at 1024 px, which on the main process kept the GPU waiting. The generator is
    seeded by (seed, epoch, index) alone, so prompts do not depend on worker count or on resume.
    """

    EVAL_EPOCH = 2**31 - 1  # every evaluation uses the same prompts

    def __init__(self, base: Dataset, kind: str, image_size: int, seed: int, epoch: int,
                 jitter: tuple[float, float] = (0.0, 0.0)) -> None:
        self.base, self.kind, self.image_size, self.seed, self.epoch = base, kind, image_size, seed, epoch
        self.jitter = jitter  # (fraction, bound in mask pixels) of box noise; training only
        self.classes = base.classes

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.base[index])
        rng = np.random.default_rng([self.seed, self.epoch, index])
        item["coords"], item["labels"], item["present"] = point_prompts(item["mask"], self.kind, rng,
                                                                        self.image_size, *self.jitter)
        return item


@dataclass
class Proposals:
    """Every mask SAM2 proposed for each (image, class) prompt of a batch, flattened to N = B*C."""

    masks: torch.Tensor  # [N, M, S/4, S/4] low-res logits (M = 3 for a click, 1 for a box)
    ious: torch.Tensor  # [N, M] the IoU head's estimates
    obj: torch.Tensor  # [N, 1] object-score logits
    present: torch.Tensor  # [B, C] the class is in the image (it got a prompt)


class Predictor:
    """Prompted SAM2 forward pass for a batch, with the memory bank of the current pass."""

    def __init__(self, model: torch.nn.Module, cfg: Sam2Config2D, n_classes: int,
                 device: torch.device) -> None:
        self.model, self.cfg, self.n_classes, self.device = model, cfg, n_classes, device
        self.bank = MemoryBank(cfg.memory_bank_size, n_classes)

    def reset(self) -> None:
        self.bank = MemoryBank(self.cfg.memory_bank_size, self.n_classes)

    def propose(self, batch: dict[str, Any]) -> Proposals:
        """Every proposed mask (what the loss sees); the memory bank keeps the one SAM2 picks."""
        c = batch["present"].shape[1]
        coords, labels = batch["coords"].flatten(0, 1), batch["labels"].flatten(0, 1)
        with autocast(self.device, self.cfg.amp):
            feats = encode(self.model, batch["image"].to(self.device, non_blocking=True)).repeat(c)
            embed = self.bank.condition(self.model, feats, c)
            low, ious, obj = decode(self.model, embed, feats.high_res, coords, labels)
        if self.cfg.memory_bank_size:
            with autocast(self.device, self.cfg.amp):
                self.bank.add(self.model, feats, upsample(best_mask(low, ious), self.cfg.image_size), obj, c)
        return Proposals(low, ious, obj, batch["present"].to(self.device))

    def __call__(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B,C,O,O] at out_size of the mask SAM2 picks, present [B,C]) for a batch."""
        p = self.propose(batch)
        b, c = p.present.shape
        logits = resize_scores(best_mask(p.masks, p.ious), self.cfg.out_size)
        return logits.view(b, c, *logits.shape[-2:]), p.present


@torch.no_grad()
def evaluate(predictor: Predictor, dataset: Prompted, *, vis_dir: Any = None, pred_dir: Any = None,
             tag: str = "val") -> Scores:
    """Scores per case and class (scoring.py, HD95 in the dataset's unit) on thresholded
    probabilities; deterministic for given weights. Batch size, workers, HD95 and the overlay
    cadence (every ``vis``-th batch, into ``vis_dir``) come from the predictor's config."""
    cfg = predictor.cfg
    predictor.model.eval()
    predictor.reset()
    classes = dataset.classes
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers)
    scorer = Scorer(dataset.base.hd95_unit, hd95=cfg.hd95)
    for i, batch in enumerate(progress(loader, desc=f"{tag}")):
        logits, present = predictor(batch)
        pred = metrics.probs_to_mask(logits).cpu() & present.cpu()[..., None, None]
        truth = batch["mask"].bool()
        for k, name in enumerate(batch["name"]):
            scorer.add(name, pred[k], truth[k], classes)
            if pred_dir is not None:
                for j, cls in enumerate(classes):
                    mask_png(pred_dir / f"{name}_{cls}.png", pred[k, j])
            if cfg.vis and vis_dir is not None and i % cfg.vis == 0:
                overlay_png(vis_dir / f"{tag}_{name}.png", batch["image"][k], truth[k], pred[k])
    return scorer.summary()


@dataclass(frozen=True)
class Epoch2D:
    """What every 2D training epoch reads: built once in :func:`train`, passed whole to the loop."""

    loop: TrainLoop
    predictor: Predictor
    dataset: Dataset
    loss_fn: MultimaskLoss
    scheduler: Any
    cfg: Sam2Config2D
    task: Task


def _train_epoch(ctx: Epoch2D, epoch: int) -> dict[str, float]:
    loop, predictor, loss_fn, cfg, task = ctx.loop, ctx.predictor, ctx.loss_fn, ctx.cfg, ctx.task
    model = predictor.model
    model.train()
    predictor.reset()
    prompted = Prompted(ctx.dataset, task.prompt, cfg.image_size, task.seed, epoch,
                        jitter=(cfg.box_jitter, cfg.jitter_px(cfg.out_size)))
    loader = epoch_loader(prompted, epoch=epoch, seed=task.seed, batch_size=cfg.batch_size,
                          num_workers=cfg.num_workers)  # this rank's shard
    total, steps = 0.0, 0
    for i, batch in enumerate(progress(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}")):
        masks = batch["mask"]
        prop = predictor.propose(batch)
        keep = prop.present.flatten()
        has = bool(keep.any())  # some class is in some image of the batch
        if has:
            with autocast(predictor.device, cfg.amp):
                parts = loss_fn(upsample(prop.masks[keep], cfg.out_size), prop.ious[keep],
                                prop.obj[keep, 0], masks.flatten(0, 1).to(predictor.device)[keep])
            loop.backward(parts["loss"])
            total, steps = total + float(parts["loss"].detach()), steps + 1
        if any_process(has):  # every rank steps together (zero gradients where it had none)
            loop.step(cfg.grad_clip)
            ctx.scheduler.step()
        if has and is_main_process() and cfg.train_vis and cfg.vis and i % cfg.vis == 0:
            first = slice(0, masks.shape[1])  # the first image's classes
            logits = upsample(best_mask(prop.masks[first], prop.ious[first]), cfg.out_size)
            pred = metrics.probs_to_mask(logits.detach()[:, 0]).cpu()
            overlay_png(loop.run.vis / f"train_e{epoch + 1}_{batch['name'][0]}.png", batch["image"][0],
                        masks[0].bool(), pred)
        loop.check_stop()
    return {"loss": total / steps if steps else math.nan}


def train(task: Task, run: RunDir) -> dict[str, Any]:
    cfg = config(task)
    device = pick_device(cfg.device)
    seed_everything(task.seed)
    data = _datasets(task, cfg)
    train_ds = data["train"]
    model = build_model(task, cfg, device)
    set_trainable(model, cfg.trainable)
    optimizer = optimizer_for(model, cfg)
    steps = cfg.epochs * math.ceil(shard_size(len(train_ds)) / cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1),
                                                           eta_min=cfg.lr * 0.01)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and cfg.amp == "fp16" else None
    loop = TrainLoop(run, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                     config=LoopConfig(epochs=cfg.epochs, val_freq=cfg.val_freq, select=cfg.select,
                                       compat_view=run.path / "Model" if cfg.compat_view else None))
    loop.resume()
    predictor = Predictor(model, cfg, len(train_ds.classes), device)
    val_prompted, test_prompted = (Prompted(data[split], task.prompt, cfg.image_size, task.seed,
                                            Prompted.EVAL_EPOCH) for split in ("val", "test"))
    loss_fn = cfg.train_loss()
    reset_peak_memory(device)

    def validate(epoch: int) -> dict[str, float]:
        s = evaluate(predictor, val_prompted, vis_dir=run.vis, tag=f"val_e{epoch + 1}")
        return {"dice": s.dice_mean, "iou": s.iou_mean}

    epoch_ctx = Epoch2D(loop, predictor, train_ds, loss_fn, scheduler, cfg, task)
    loop.fit(lambda epoch: _train_epoch(epoch_ctx, epoch), validate)
    chosen = loop.selected()
    t0 = time.perf_counter()

    def score() -> Scores:
        load_weights_from(model, chosen.path)
        return evaluate(predictor, test_prompted, vis_dir=run.vis, pred_dir=run.predictions, tag="test")

    scores = on_main(score)  # on rank 0, in one pass: the memory bank sees the images in order
    cost = RunCost(loop.state.epoch, loop.state.train_seconds, time.perf_counter() - t0,
                   count_params_m(model), peak_memory_gb(device))
    return build_metrics(task, split="test", scores=scores, cost=cost, hparams=asdict(cfg),
                         selection=Selection("val", data["val"].names, chosen.score, chosen.record()),
                         image_size=cfg.image_size, out_size=cfg.out_size)
