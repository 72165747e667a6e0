"""Segmentation metrics shared by every trainer: Dice, IoU, HD95, per-slice Dice.

MONAI computes the numbers (``compute_dice``, ``compute_iou``, ``compute_hausdorff_distance``);
this module fixes what the reference got wrong (FACTS.md) and makes the empty cases explicit:

* organ absent in truth and prediction -> NaN, so it drops out of every mean (never Dice 1);
* organ absent in truth but predicted -> 0 (a false positive is an error);
* HD95 -> NaN when either side is empty (a distance to nothing is undefined).

Masks come from probabilities (:func:`probs_to_mask` applies the sigmoid first), never from
thresholding raw logits. 3D Dice is volumetric (one number per case and organ); the number
Medical-SAM2 reports is kept beside it as ``per_slice`` so the two are never confused.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["probs_to_mask", "dice", "iou", "hd95", "per_slice_dice", "summarise"]

Array = Any  # numpy array or torch tensor


def probs_to_mask(logits: Array, threshold: float = 0.5) -> Array:
    """Binary mask from logits: sigmoid first, then ``> threshold`` (same type as the input).

    Thresholding raw logits at 0.5 (the reference's bug) keeps only pixels with p > 0.62.
    """
    if isinstance(logits, torch.Tensor):
        return torch.sigmoid(logits.float()) > threshold
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64))) > threshold


def _bool_tensor(x: Array) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.detach().cpu().bool()


def _pair(pred: Array, truth: Array) -> tuple[torch.Tensor, torch.Tensor]:
    """Both masks as bool tensors shaped [1, 1, *spatial] (MONAI's batch/channel layout)."""
    p, t = _bool_tensor(pred), _bool_tensor(truth)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {tuple(p.shape)} differs from truth shape {tuple(t.shape)}")
    return p[None, None], t[None, None]


def _overlap(fn: Any, pred: Array, truth: Array) -> float:
    p, t = _pair(pred, truth)
    if not t.any():
        return math.nan if not p.any() else 0.0
    return float(fn(p.float(), t.float(), include_background=True, ignore_empty=False)[0, 0])


def dice(pred: Array, truth: Array) -> float:
    """Dice of two binary masks of any shape: NaN when both are empty, 0 when only truth is."""
    from monai.metrics import compute_dice  # MONAI imports in seconds: not where submit only checks

    return _overlap(compute_dice, pred, truth)


def iou(pred: Array, truth: Array) -> float:
    """Intersection over union, with the same empty-case rules as :func:`dice`."""
    from monai.metrics import compute_iou

    return _overlap(compute_iou, pred, truth)


def hd95(pred: Array, truth: Array, spacing: Sequence[float] | float | None = None) -> float:
    """Symmetric 95th-percentile Hausdorff distance in mm (``spacing`` per axis); NaN if a side is empty."""
    p, t = _pair(pred, truth)
    if not p.any() or not t.any():
        return math.nan
    spacing = [float(s) for s in spacing] if isinstance(spacing, Sequence) else spacing
    from monai.metrics import compute_hausdorff_distance

    with warnings.catch_warnings():  # MONAI 1.6 warns about its own deprecated internal argument
        warnings.simplefilter("ignore", FutureWarning)
        out = compute_hausdorff_distance(p.float(), t.float(), include_background=True, percentile=95,
                                         spacing=spacing)
    return float(out[0, 0])


def per_slice_dice(pred: Array, truth: Array) -> float:
    """Mean 2D Dice over the slices (axis 0) where ``truth`` has the object: the reference's number.

    False positives on slices without the object are not counted, which is why this number runs
    higher than the volumetric Dice. NaN when the truth never has the object.
    """
    p, t = _bool_tensor(pred), _bool_tensor(truth)
    keep = t.flatten(1).any(1)
    if not keep.any():
        return math.nan
    from monai.metrics import compute_dice

    scores = compute_dice(p[keep][:, None].float(), t[keep][:, None].float(), include_background=True,
                          ignore_empty=False)
    return float(scores.mean())


def summarise(per_case: Mapping[str, Mapping[str, float | None]]) -> tuple[dict[str, float], float]:
    """Per-class mean over cases and the mean of those, skipping NaN/None (absent organs).

    The overall mean is over classes (every organ weighs the same, as in the BTCV tables),
    NaN when nothing was scored.
    """
    names: list[str] = []
    for scores in per_case.values():
        names.extend(n for n in scores if n not in names)
    per_class = {}
    for name in names:
        values = [_finite(scores.get(name)) for scores in per_case.values()]
        values = [v for v in values if v is not None]
        per_class[name] = float(np.mean(values)) if values else math.nan
    finite = [v for v in per_class.values() if not math.isnan(v)]
    return per_class, (float(np.mean(finite)) if finite else math.nan)


def _finite(value: float | None) -> float | None:
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)
