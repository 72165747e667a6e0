"""Training losses for SAM2's mask heads, and the multimask loss SAM2Train trains them with.

Mask losses (``make_loss``), each also scoring every mask of a stack on its own (``per_mask``):
- ``bce`` with ``pos_weight=2`` is the Medical-SAM2 recipe (FACTS.md): small organs are a few
  percent of the pixels, so positives are weighted up;
- ``dicefocal`` is MONAI's DiceFocalLoss; the same ``pos_weight`` becomes its focal
  ``alpha = w / (1 + w)`` (the positive:negative ratio ``alpha / (1 - alpha)`` equals ``w``);
- ``sam2`` is Meta's: 20 x sigmoid focal (alpha 0.25, gamma 2) + 1 x Dice (smoothing 1), the
  weights of ``sam2.1_training/sam2.1_hiera_b+_MOSE_finetune.yaml`` (``pos_weight`` unused).
All take raw logits and a float target of the same shape ([B, C, H, W] or [B, C, D, H, W]).

:class:`MultimaskLoss` is ``training/loss_fns.py::MultiStepMultiMasksAndIous`` of the ``sam2``
package: the mask loss on every mask SAM2 proposed, only the lowest back-propagated; an L1
loss between the IoU head's estimates and each mask's real IoU (all masks); both only for
objects present in the truth; and BCE on the object-score logit. Without it the IoU head,
which picks the mask SAM2 passes on, never trains.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError
from .options import look_up

__all__ = ["LOSSES", "MaskLoss", "WeightedBCE", "DiceFocal", "Sam2MaskLoss", "MultimaskLoss", "check_loss",
           "make_loss", "mask_iou"]

LOSSES = ("bce", "dicefocal", "sam2")


class MaskLoss(nn.Module):
    """A mask loss that can score each mask alone: ``per_mask`` gives one value per (item, mask)."""

    def per_mask(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(N, M) losses of logits (N, M, ...) against a target of the same shape."""
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.per_mask(logits, target.to(logits.dtype)).mean()


class WeightedBCE(MaskLoss):
    """BCE on logits with ``pos_weight`` moved to the logits' device and dtype at each call.

    ``nn.BCEWithLogitsLoss`` keeps the weight as a buffer, which breaks when a trainer moves
    the model but not the loss to the GPU.
    """

    def __init__(self, pos_weight: float) -> None:
        super().__init__()
        self.pos_weight = float(pos_weight)

    def per_mask(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = torch.full((), self.pos_weight, device=logits.device, dtype=logits.dtype)  # no host copy
        loss = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), pos_weight=weight,
                                                  reduction="none")
        return loss.flatten(2).mean(-1)


class DiceFocal(MaskLoss):
    """MONAI's DiceFocalLoss (sigmoid, gamma 2), Dice per mask plus the mask's mean focal term."""

    def __init__(self, pos_weight: float) -> None:
        from monai.losses import DiceFocalLoss  # imported when built: submit's checks need no MONAI

        super().__init__()
        self.loss = DiceFocalLoss(sigmoid=True, alpha=pos_weight / (1.0 + pos_weight), gamma=2.0,
                                  reduction="none")

    def per_mask(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, target.to(logits.dtype)).flatten(2).mean(-1)


class Sam2MaskLoss(MaskLoss):
    """Meta's ``loss_fns.sigmoid_focal_loss`` x 20 + ``loss_fns.dice_loss`` x 1, per mask."""

    FOCAL_WEIGHT, DICE_WEIGHT, ALPHA, GAMMA = 20.0, 1.0, 0.25, 2.0

    def per_mask(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.to(logits.dtype)
        prob = logits.sigmoid()
        ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        p_t = prob * target + (1 - prob) * (1 - target)
        alpha_t = self.ALPHA * target + (1 - self.ALPHA) * (1 - target)
        focal = (alpha_t * ce * (1 - p_t) ** self.GAMMA).flatten(2).mean(-1)
        prob, target = prob.flatten(2), target.flatten(2)
        dice = 1 - (2 * (prob * target).sum(-1) + 1) / (prob.sum(-1) + target.sum(-1) + 1)
        return self.FOCAL_WEIGHT * focal + self.DICE_WEIGHT * dice


def check_loss(name: str, pos_weight: float = 2.0) -> None:
    """What :func:`make_loss` would refuse, without building the loss (trainers' checks)."""
    look_up(name, LOSSES, "loss")
    if isinstance(pos_weight, bool) or not isinstance(pos_weight, (int, float)) \
            or not 0 < pos_weight < math.inf:
        raise InputError(f"pos_weight: {pos_weight!r} must be a number > 0")


def make_loss(name: str, pos_weight: float = 2.0) -> MaskLoss:
    """The loss called ``name`` (one of :data:`LOSSES`); InputError names a bad name or weight."""
    check_loss(name, pos_weight)
    if name == "bce":
        return WeightedBCE(pos_weight)
    if name == "dicefocal":
        return DiceFocal(pos_weight)
    return Sam2MaskLoss()


def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, M) IoU of each mask (logit > 0) with the target (> 0); 0 where both are empty, as Meta's."""
    pred, truth = logits.flatten(2) > 0, target.flatten(2) > 0
    inter = (pred & truth).sum(-1).float()
    union = (pred | truth).sum(-1).float()
    return inter / union.clamp(min=1.0)


class MultimaskLoss(nn.Module):
    """SAM2Train's loss over a :class:`MaskLoss`; returns ``{"loss", "mask", "iou", "obj"}``.

    Args:
        mask_loss: scores each proposed mask (``make_loss``).
        multimask: True (SAM2Train): back-propagate the mask with the lowest loss and train the
            IoU head on every mask. False: only the mask the IoU head picked, no IoU loss (the
            IoU head then gets no gradient; kept to reproduce earlier runs).
        iou_weight: weight of the L1 IoU loss (Meta: 1).
        obj_weight: weight of BCE on the object-score logit (Meta: 1, as ``loss_class``).

    Normalised by the number of (object, slice) outputs scored, where Meta sums over frames and
    divides by the objects: the same up to the clip length, so the learning rate does not
    depend on ``video_length``.
    """

    def __init__(self, mask_loss: MaskLoss, *, multimask: bool = True, iou_weight: float = 1.0,
                 obj_weight: float = 1.0) -> None:
        super().__init__()
        if iou_weight < 0 or obj_weight < 0:
            raise InputError(f"hparams: iou_weight {iou_weight} and obj_score_weight {obj_weight} "
                             "must be >= 0")
        self.mask_loss, self.multimask = mask_loss, multimask
        self.iou_weight, self.obj_weight = float(iou_weight), float(obj_weight)

    def forward(self, masks: torch.Tensor, ious: torch.Tensor, obj_logits: torch.Tensor,
                target: torch.Tensor, weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """masks (N, M, H, W) logits, ious (N, M) estimates, obj_logits (N,), target (N, H, W) in {0, 1}.

        ``weight`` (N,) in {0, 1}: scores only the rows with weight 1, as if the others were left
        out (selecting them instead would make the host wait for the device to count them).
        """
        target = target.to(masks.dtype)[:, None].expand_as(masks)
        present = target[:, 0].flatten(1).any(1).to(masks.dtype)
        rows = torch.arange(masks.shape[0], device=masks.device)
        weight = torch.ones_like(present) if weight is None else weight.to(masks.dtype)
        n = weight.sum().clamp(min=1)
        per_mask = self.mask_loss.per_mask(masks, target)
        l1 = (ious.to(masks.dtype) - mask_iou(masks, target)).abs()
        if self.multimask:
            mask_term, iou_term = per_mask[rows, per_mask.argmin(1)], l1.mean(1)
        else:
            mask_term, iou_term = per_mask[rows, ious.argmax(1)], torch.zeros_like(present)
        mask_loss = (mask_term * present * weight).sum() / n
        iou_loss = (iou_term * present * weight).sum() / n
        obj_loss = (F.binary_cross_entropy_with_logits(obj_logits.to(masks.dtype), present, reduction="none")
                    * weight).sum() / n
        total = mask_loss + self.iou_weight * iou_loss + self.obj_weight * obj_loss
        return {"loss": total, "mask": mask_loss.detach(), "iou": iou_loss.detach(), "obj": obj_loss.detach()}
