"""What the SAM2 trainers (2D and 3D) share: config keys, model setup, encoder and decoder calls.

SAM2Base.forward raises NotImplementedError, so training drives its parts directly, as Meta's
``training/model/sam2.py`` (SAM2Train) does: ``forward_image`` + ``_prepare_backbone_features``
for the image, then ``sam_prompt_encoder`` and ``sam_mask_decoder``. We call the decoder
ourselves rather than ``_forward_sam_heads`` because that one replaces every mask whose object
score is <= 0 by a constant, which cuts the gradient of a freshly initialised head.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from medsam2_hpc.checkpoints import only_in_image
from medsam2_hpc.engine.checkpoint import load_checkpoint
from medsam2_hpc.errors import InputError
from medsam2_hpc.losses import MultimaskLoss, make_loss
from medsam2_hpc.models.sam2 import (
    build_sam2_model,
    config_for_variant,
    default_checkpoint,
    load_sam2_weights,
    resolve_config,
)
from medsam2_hpc.precheck import once
from medsam2_hpc.task import Task

__all__ = ["Sam2Config", "Features", "sam2_config_name", "checkpoint_path", "build_model", "check_model",
           "tokens_to_map", "normalize", "encode", "point_prompts", "decode", "best_mask", "upsample",
           "optimizer_for", "load_weights_from"]

# SAM2 was trained on ImageNet-normalised RGB (sam2.utils.transforms.SAM2Transforms)
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


@dataclass(kw_only=True)
class Sam2Config:
    """Hyper-parameters every SAM2 trainer reads from ``task.hparams`` (jobs.yaml uses the same keys).

    epochs, batch_size, lr, weight_decay (AdamW), grad_clip (max grad norm; 0 = off),
    image_size (model input side, multiple of 32), val_freq (validate every N epochs),
    num_workers (DataLoader), amp (bf16|fp16|none; CUDA only), device (auto|cpu|cuda|cuda:N|N),
    vis (overlay PNGs every N batches; 0 = off), train_vis (also for training batches),
    loss (bce|dicefocal|sam2: Meta's 20 x focal + Dice), pos_weight (positive weight of bce and
    dicefocal), multimask_loss (SAM2Train's: the mask loss on every proposed mask, the lowest
    back-propagated, and an L1 loss on the IoU head's estimates; false = only the mask the IoU
    head picked, which leaves that head untrained), iou_weight (of the IoU loss; Meta's 1),
    obj_score_weight (BCE on SAM2's "object here" logit; Meta's 1), box_jitter (box prompts'
    noise as a fraction of the box size, SAM2Train's 0.1; 0 = exact boxes), box_jitter_px (its
    bound in pixels of a 1024 px image, SAM2Train's 20, scaled with the image),
    sam_config (default: from the task variant), sam_ckpt (default checkpoints/<Meta's file>;
    'none' = random weights, smoke tests only), pretrain (our fine-tuned checkpoint to start from),
    trainable (decoder|decoder+memory|all-but-encoder|all), compat_view (also expose
    ``<run>/Model/{best_dice_epoch,latest_epoch}.pth`` as the Medical-SAM2 commands do),
    select (best: the epoch with the best validation Dice; last: the final weights),
    split_file (JSON train/val/test case ids replacing the dataset's splits, see data/splits.py),
    hd95 (also score HD95: mm where the data has spacing, else px; see scoring.py).
    """

    epochs: int = 100
    batch_size: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    image_size: int = 1024
    val_freq: int = 5
    num_workers: int = 2
    amp: Literal["bf16", "fp16", "none"] = "bf16"
    device: str = "auto"
    vis: int = 0
    train_vis: bool = False
    loss: Literal["bce", "dicefocal", "sam2"] = "bce"
    pos_weight: float = 2.0
    multimask_loss: bool = True
    iou_weight: float = 1.0
    obj_score_weight: float = 1.0
    box_jitter: float = 0.1
    box_jitter_px: float = 20.0
    sam_config: str | None = None
    sam_ckpt: str | None = None
    pretrain: str | None = None
    trainable: Literal["decoder", "decoder+memory", "all-but-encoder", "all"] = "all-but-encoder"
    compat_view: bool = False
    select: Literal["best", "last"] = "best"
    split_file: str | None = None
    hd95: bool = True

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "val_freq"):
            if getattr(self, key) < 1:
                raise InputError(f"hparams.{key}: {getattr(self, key)} must be >= 1")
        for key in ("num_workers", "vis"):
            if getattr(self, key) < 0:
                raise InputError(f"hparams.{key}: {getattr(self, key)} must be >= 0")
        if not self.lr > 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise InputError("hparams: lr must be > 0, weight_decay and grad_clip >= 0")
        for key in ("iou_weight", "obj_score_weight", "box_jitter", "box_jitter_px"):
            value = getattr(self, key)
            if not 0 <= value < math.inf:
                raise InputError(f"hparams.{key}: {value} must be a finite number >= 0")
        if self.box_jitter >= 0.5:
            raise InputError(f"hparams.box_jitter: {self.box_jitter} must be < 0.5 (corners would cross)")

    def train_loss(self) -> MultimaskLoss:
        """SAM2Train's loss over the chosen mask loss, with this config's weights."""
        return MultimaskLoss(make_loss(self.loss, pos_weight=self.pos_weight), multimask=self.multimask_loss,
                             iou_weight=self.iou_weight, obj_weight=self.obj_score_weight)

    def jitter_px(self, side: int) -> float:
        """``box_jitter_px`` for a box drawn on an image ``side`` pixels wide."""
        return self.box_jitter_px * side / 1024


@dataclass
class Features:
    """Image features in the two layouts SAM2 uses: maps for the decoder, tokens for memory."""

    tokens: list[torch.Tensor]  # per level [HW, B, C], last = stride 16
    pos: list[torch.Tensor]  # per level [HW, B, C]
    sizes: list[tuple[int, int]]

    @property
    def high_res(self) -> list[torch.Tensor]:
        """The stride-4 and stride-8 maps the decoder upsamples with (already projected)."""
        return [tokens_to_map(t, s) for t, s in zip(self.tokens[:-1], self.sizes[:-1], strict=True)]

    def repeat(self, n: int) -> Features:
        """Each image ``n`` times in a row (one copy per object/class prompt)."""
        if n == 1:
            return self
        return Features([t.repeat_interleave(n, 1) for t in self.tokens],
                        [p.repeat_interleave(n, 1) for p in self.pos], self.sizes)


def tokens_to_map(tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return tokens.permute(1, 2, 0).reshape(tokens.shape[1], tokens.shape[2], *size)


def sam2_config_name(task: Task, cfg: Sam2Config) -> str:
    return resolve_config(cfg.sam_config) if cfg.sam_config else config_for_variant(task.variant)


def checkpoint_path(task: Task, cfg: Sam2Config) -> str:
    return cfg.sam_ckpt if cfg.sam_ckpt else str(default_checkpoint(sam2_config_name(task, cfg)))


def build_model(task: Task, cfg: Sam2Config, device: torch.device | str = "cpu") -> torch.nn.Module:
    """SAM2 for the task: Meta's weights (or random with sam_ckpt 'none'), then ``pretrain`` if set."""
    config = sam2_config_name(task, cfg)
    ckpt = checkpoint_path(task, cfg)
    model = build_sam2_model(config, ckpt, image_size=cfg.image_size, device="cpu",
                             allow_random=ckpt.lower() == "none")
    if cfg.pretrain:
        load_sam2_weights(model, cfg.pretrain, config, what="pretrain")
    return model.to(device)


def check_model(task: Task, cfg: Sam2Config) -> None:
    """Build once on the CPU so a wrong config/checkpoint fails before anything is written
    (an unreadable ``pretrain`` file first, before a model is built for nothing); once per config,
    checkpoint and size while a study is checked before queueing."""
    def build() -> None:
        if cfg.pretrain:
            load_checkpoint(cfg.pretrain, what="pretrain")
        if only_in_image(checkpoint_path(task, cfg)):  # on the login node: the image's record vouches
            with warnings.catch_warnings():  # for the weights; the config and size are checked here
                warnings.simplefilter("ignore", UserWarning)
                build_sam2_model(sam2_config_name(task, cfg), None, image_size=cfg.image_size,
                                 allow_random=True)
        else:
            build_model(task, cfg, "cpu")

    once(("sam2-model", sam2_config_name(task, cfg), cfg.sam_ckpt, cfg.pretrain, cfg.image_size), build)


def load_weights_from(model: torch.nn.Module, path: Path) -> None:
    """Our own checkpoint (best.pt / last.pt) back into ``model``."""
    model.load_state_dict(load_checkpoint(path, what="checkpoint")["model"])


def normalize(images: torch.Tensor) -> torch.Tensor:
    """[B,3,S,S] in [0,1] -> SAM2's ImageNet-normalised input."""
    mean = images.new_tensor(_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def encode(model: torch.nn.Module, images: torch.Tensor) -> Features:
    """Backbone features of ``images`` ([B,3,S,S] in [0,1]); no graph when the encoder is frozen."""
    trainable = any(p.requires_grad for p in model.image_encoder.parameters())
    with torch.set_grad_enabled(trainable and torch.is_grad_enabled()):
        out = model.forward_image(normalize(images))
        _, tokens, pos, sizes = model._prepare_backbone_features(out)
    return Features(list(tokens), list(pos), list(sizes))


def point_prompts(masks: torch.Tensor, kind: str, rng: np.random.Generator, image_size: int,
                  jitter: float = 0.0, jitter_max_px: float = math.inf
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompts from truth masks [N,O,O]: coords [N,P,2] as (x, y) input pixels, labels [N,P], present [N].

    A click is one positive point; a box is SAM's two corner points (labels 2 and 3), moved by
    ``jitter`` (bounded by ``jitter_max_px`` mask pixels) as SAM2Train does. A mask with no
    foreground gets padding points (label -1) and ``present`` False.
    """
    from medsam2_hpc.data.prompts import make_prompt

    n, out = masks.shape[0], masks.shape[-1]
    count = 2 if kind == "bbox" else 1
    coords = torch.zeros(n, count, 2)
    labels = -torch.ones(n, count, dtype=torch.int32)
    present = torch.zeros(n, dtype=torch.bool)
    scale = image_size / out
    for i in range(n):
        prompt = make_prompt(masks[i].bool().cpu().numpy(), kind, rng, jitter=jitter,
                             jitter_max_px=jitter_max_px)
        if not prompt.present:
            continue
        present[i] = True
        if kind == "bbox":
            x0, y0, x1, y1 = (float(v) for v in prompt.box)
            coords[i] = torch.tensor([[x0, y0], [x1, y1]])
            labels[i] = torch.tensor([2, 3], dtype=torch.int32)
        else:
            coords[i] = torch.as_tensor(np.asarray(prompt.points, dtype=np.float32)[:count])
            labels[i] = torch.as_tensor(np.asarray(prompt.point_labels)[:count], dtype=torch.int32)
    # mask pixel centres -> input-image pixel units (the prompt encoder adds 0.5 itself)
    coords = (coords + 0.5) * scale - 0.5
    return coords, labels, present


def decode(model: torch.nn.Module, embed: torch.Tensor, high_res: list[torch.Tensor],
           coords: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every mask SAM2 proposes for each prompt: (low-res logits [N,M,S/4,S/4], IoU estimates [N,M],
    object score [N,1]); M = 3 for a single click and 1 for a box, by SAM2's own rule
    (``_use_multimask``), as SAM2Train prompts its single images."""
    sparse, dense = model.sam_prompt_encoder(points=(coords.to(embed.device), labels.to(embed.device)),
                                             boxes=None, masks=None)
    low, iou, _, obj = model.sam_mask_decoder(
        image_embeddings=embed, image_pe=model.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
        multimask_output=model._use_multimask(True, {"point_labels": labels}), repeat_image=False,
        high_res_features=high_res)
    return low.float(), iou.float(), obj.float()


def best_mask(masks: torch.Tensor, ious: torch.Tensor) -> torch.Tensor:
    """The mask [N,1,H,W] with the highest IoU estimate among [N,M,H,W], as SAM2 picks it."""
    return masks[torch.arange(masks.shape[0], device=masks.device), ious.argmax(1)][:, None]


def upsample(logits: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)


def optimizer_for(model: torch.nn.Module, cfg: Sam2Config) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise InputError(f"hparams.trainable {cfg.trainable!r}: leaves no parameter to train")
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
