"""Training losses for the mask heads: BCE with a positive weight, or MONAI's Dice + focal.

``bce`` with ``pos_weight=2`` is the Medical-SAM2 recipe (FACTS.md): small organs are a few
percent of the pixels, so positives are weighted up. ``dicefocal`` is MONAI's DiceFocalLoss;
the same ``pos_weight`` becomes its focal ``alpha = w / (1 + w)`` (the positive:negative ratio
``alpha / (1 - alpha)`` equals ``w``), so both losses weight the classes alike.
Both take raw logits and a float target of the same shape ([B, C, H, W] or [B, C, D, H, W]).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.losses import DiceFocalLoss
from torch import nn

from .errors import InputError
from .options import look_up

__all__ = ["LOSSES", "WeightedBCE", "make_loss"]

LOSSES = ("bce", "dicefocal")


class WeightedBCE(nn.Module):
    """BCE on logits with ``pos_weight`` moved to the logits' device and dtype at each call.

    ``nn.BCEWithLogitsLoss`` keeps the weight as a buffer, which breaks when a trainer moves
    the model but not the loss to the GPU.
    """

    def __init__(self, pos_weight: float) -> None:
        super().__init__()
        self.pos_weight = float(pos_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = torch.tensor(self.pos_weight, device=logits.device, dtype=logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), pos_weight=weight)


def make_loss(name: str, pos_weight: float = 2.0) -> nn.Module:
    """The loss called ``name`` ("bce" | "dicefocal"); InputError names a bad name or weight."""
    look_up(name, LOSSES, "loss")
    if isinstance(pos_weight, bool) or not isinstance(pos_weight, (int, float)) \
            or not 0 < pos_weight < math.inf:
        raise InputError(f"pos_weight: {pos_weight!r} must be a number > 0")
    if name == "bce":
        return WeightedBCE(pos_weight)
    return DiceFocalLoss(sigmoid=True, alpha=pos_weight / (1.0 + pos_weight), gamma=2.0)
