"""The one evaluation path: every model kind's predictions become scores here, the same way.

Before this module each trainer resized and scored on its own, and the numbers had drifted
apart (HD95 averaged over all (case, class) pairs for the baselines but per class for SAM2;
two BTCV evaluators). Now a model supplies only its prediction; this module

* resizes model outputs back to the ground truth's grid with one function
  (:func:`resize_scores`: bilinear, ``align_corners=False``, no antialiasing when enlarging),
* scores binary masks per (case, class) with one code path (:meth:`Scorer.add`, on MONAI
  through :mod:`medsam2_hpc.metrics`): Dice, IoU, HD95, and for volumes the per-slice Dice,
* summarises every score the same way: mean over cases per class, then mean over classes
  (NaN, an organ absent from truth and prediction, drops out).

HD95 is in millimetres where the data carries spacing (NIfTI) and in pixels otherwise;
the :class:`Scorer` is told which, and the unit travels into metrics.json as ``hd95_unit``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import metrics

__all__ = ["resize_scores", "Scorer", "Scores"]


def resize_scores(scores: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Model outputs [..., h, w] (logits or probabilities) -> [..., H, W] on the truth's grid."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(scores.shape[-2:]) == hw:
        return scores.float()
    lead = scores.shape[:-2]
    x = scores.float().reshape(-1, 1, *scores.shape[-2:])
    x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False)
    return x.reshape(*lead, *hw)


@dataclass
class Scores:
    """Summary of a set of cases, in the shape metrics.json wants (see :meth:`fields`).

    :meth:`Scorer.summary` fills every field; the defaults let a hand-made summary (a test's
    fixture, a toy trainer) name only Dice and the HD95 unit."""

    dice_mean: float
    per_class: dict[str, float]
    per_case: dict[str, dict[str, float]]
    hd95_unit: str
    hd95_mean: float | None = None
    iou_mean: float = math.nan
    per_class_hd95: dict[str, float] = field(default_factory=dict)
    dice_mean_per_slice: float | None = None
    per_class_per_slice: dict[str, float] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        """The metrics.json entries of these scores (the per-slice pair only for volumes);
        ``contract.build_metrics`` places them."""
        out: dict[str, Any] = {
            "dice_mean": _finite(self.dice_mean), "per_class": self.per_class, "per_case": self.per_case,
            "hd95_mean": self.hd95_mean, "hd95_unit": self.hd95_unit, "per_class_hd95": self.per_class_hd95,
            "iou_mean": _finite(self.iou_mean)}
        if self.dice_mean_per_slice is not None:
            out.update(dice_mean_per_slice=_finite(self.dice_mean_per_slice),
                       per_class_per_slice=self.per_class_per_slice)
        return out


class Scorer:
    """Collects one record per (case, class) and summarises them.

    Args:
        unit: "mm" (spacing known) or "px"; what HD95 is measured in.
        hd95: compute HD95 (the slow score); NaN records otherwise, and ``hd95_mean`` None.
        per_slice: also keep the per-slice Dice of volumes (Medical-SAM2's number).
    """

    def __init__(self, unit: str, *, hd95: bool = True, per_slice: bool = False) -> None:
        if unit not in ("mm", "px"):
            raise ValueError(f"unit {unit!r} is not 'mm' or 'px'")
        self.unit, self.hd95, self.per_slice = unit, bool(hd95), bool(per_slice)
        self.records: dict[str, dict[str, dict[str, float]]] = {}  # score -> case -> class -> value

    def add(self, case: str, pred: Any, truth: Any, classes: Sequence[str],
            spacing: Sequence[float] | None = None) -> dict[str, dict[str, float]]:
        """Score binary masks ``pred``/``truth`` [K, *spatial] (K = len(classes)) of one case.

        ``spacing`` (mm per axis) only with ``unit="mm"``; pixel units ignore it.
        """
        pred_t, truth_t = torch.as_tensor(_numpy(pred)), torch.as_tensor(_numpy(truth))
        if pred_t.shape != truth_t.shape or pred_t.shape[0] != len(classes):
            raise ValueError(f"case {case}: prediction {tuple(pred_t.shape)} and truth "
                             f"{tuple(truth_t.shape)} must both be [{len(classes)}, ...]")
        mm = list(spacing) if self.unit == "mm" and spacing is not None else None
        record: dict[str, dict[str, float]] = {"dice": {}, "iou": {}, "hd95": {}, "per_slice": {}}
        for k, name in enumerate(classes):
            p, t = pred_t[k].bool(), truth_t[k].bool()
            record["dice"][name] = metrics.dice(p, t)
            record["iou"][name] = metrics.iou(p, t)
            record["hd95"][name] = metrics.hd95(p, t, mm) if self.hd95 else math.nan
            if self.per_slice:
                record["per_slice"][name] = metrics.per_slice_dice(p, t)
        for score, values in record.items():
            self.records.setdefault(score, {})[case] = values
        return record

    def add_labels(self, case: str, pred: Any, truth: Any, classes: Mapping[int, str],
                   spacing: Sequence[float] | None = None) -> dict[str, dict[str, float]]:
        """Score two integer label maps (one class id per voxel) through :meth:`add`."""
        p, t = np.asarray(_numpy(pred)), np.asarray(_numpy(truth))
        ids = list(classes)
        return self.add(case, np.stack([p == i for i in ids]), np.stack([t == i for i in ids]),
                        [classes[i] for i in ids], spacing)

    def kept(self, score: str) -> dict[str, dict[str, float]]:
        """``score`` per case and class with the undefined (NaN) entries left out."""
        return {case: {k: v for k, v in values.items() if math.isfinite(v)}
                for case, values in self.records.get(score, {}).items()}

    def summary(self) -> Scores:
        per_class, dice_mean = metrics.summarise(self.kept("dice"))
        _, iou_mean = metrics.summarise(self.kept("iou"))
        per_class_hd95, hd95_mean = metrics.summarise(self.kept("hd95"))
        scores = Scores(dice_mean, per_class, self.kept("dice"), self.unit,
                        hd95_mean=_finite(hd95_mean) if self.hd95 else None, iou_mean=iou_mean,
                        per_class_hd95=per_class_hd95)
        if self.per_slice:
            scores.per_class_per_slice, scores.dice_mean_per_slice = metrics.summarise(self.kept("per_slice"))
        return scores


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)
