"""Prompts for SAM2 from a ground-truth mask: clicks, boxes and mask prompts.

Conventions (the reference gets the first one wrong, swapping rows and columns):
- points are (x, y) = (column, row) in pixel coordinates of the mask given;
- boxes are (x0, y0, x1, y1) with inclusive pixel bounds, so every object pixel lies inside;
- an object absent from the mask gives ``Prompt(present=False)`` with every field None,
  never a NaN box, so callers test ``present`` instead of checking numbers.
All randomness comes from the numpy Generator passed in: same seed, same prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..options import look_up

__all__ = ["Prompt", "make_prompt", "make_prompts", "KINDS"]

KINDS = ("click", "bbox", "mask")
# Positive clicks are drawn from pixels at least this fraction of the object's largest
# inner distance from its border: well inside, but not always the single centre pixel.
INTERIOR_FRACTION = 0.5


@dataclass(frozen=True, eq=False)
class Prompt:
    """One object's prompt; fields not used by ``kind`` are None."""

    present: bool
    points: np.ndarray | None = None  # (N,2) float32, (x, y)
    point_labels: np.ndarray | None = None  # (N,) int64, 1 positive / 0 negative
    box: np.ndarray | None = None  # (4,) float32, x0 y0 x1 y1
    mask: np.ndarray | None = None  # (H,W) float32 in {0,1}
    kind: str | None = None  # "click" | "bbox" | "mask"


def _pick(rng: np.random.Generator, rows: np.ndarray, cols: np.ndarray, n: int) -> np.ndarray:
    """n (x, y) points drawn without replacement when possible."""
    idx = rng.choice(rows.size, size=n, replace=n > rows.size)
    return np.stack([cols[idx], rows[idx]], axis=1).astype(np.float32)


def _clicks(mask: np.ndarray, rng: np.random.Generator, n_pos: int,
            n_neg: int) -> tuple[np.ndarray, np.ndarray]:
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    rows, cols = np.nonzero(depth >= INTERIOR_FRACTION * depth.max())
    points, labels = [_pick(rng, rows, cols, n_pos)], [np.ones(n_pos, np.int64)]
    if n_neg:
        rows, cols = np.nonzero(~mask)
        if rows.size:  # an object filling the image has no outside to click on
            points.append(_pick(rng, rows, cols, n_neg))
            labels.append(np.zeros(n_neg, np.int64))
    return np.concatenate(points), np.concatenate(labels)


def _box(mask: np.ndarray, rng: np.random.Generator, jitter: float, jitter_max_px: float) -> np.ndarray:
    """Tight inclusive box, each coordinate moved as SAM2Train moves it (``sample_box_points``):
    by U(-1, 1) x min(``jitter`` x box width (height), ``jitter_max_px``), clamped to the image."""
    rows, cols = np.nonzero(mask)
    box = np.array([cols.min(), rows.min(), cols.max(), rows.max()], dtype=np.float64)
    if jitter > 0:
        reach = np.minimum(jitter * (box[2:] - box[:2]), jitter_max_px)  # (dx, dy)
        box += rng.uniform(-1.0, 1.0, 4) * np.tile(reach, 2)
        height, width = mask.shape
        box = np.clip(box, 0, [width - 1, height - 1, width - 1, height - 1])
    return box.astype(np.float32)


def make_prompt(mask: np.ndarray, kind: str, rng: np.random.Generator, n_pos: int = 1, n_neg: int = 0,
                jitter: float = 0.0, jitter_max_px: float = np.inf) -> Prompt:
    """Prompt for the object in ``mask`` (H,W).

    Args:
        mask: the object's pixels (anything > 0 counts).
        kind: "click" (``n_pos`` interior positive + ``n_neg`` outside negative points),
            "bbox" (tight box, each side moved by up to ``jitter`` x the box size and at most
            ``jitter_max_px``, clipped to the image, as SAM2Train does) or "mask" (the mask
            itself as float).
        rng: numpy Generator; the only source of randomness.

    Raises:
        InputError: unknown ``kind``.
        ValueError: ``mask`` not 2D, negative counts or jitter.
    """
    kind = look_up(kind, KINDS, "prompt")
    mask = np.asarray(mask) > 0
    if mask.ndim != 2:
        raise ValueError(f"prompt mask must be 2D (H,W), got shape {mask.shape}")
    if n_pos < 1 or n_neg < 0 or jitter < 0 or not jitter_max_px >= 0:
        raise ValueError("need n_pos >= 1, n_neg >= 0, jitter >= 0, jitter_max_px >= 0; "
                         f"got {n_pos}, {n_neg}, {jitter}, {jitter_max_px}")
    if not mask.any():
        return Prompt(present=False, kind=kind)
    if kind == "click":
        points, labels = _clicks(mask, rng, n_pos, n_neg)
        return Prompt(True, points=points, point_labels=labels, kind=kind)
    if kind == "bbox":
        return Prompt(True, box=_box(mask, rng, jitter, jitter_max_px), kind=kind)
    return Prompt(True, mask=mask.astype(np.float32), kind=kind)


def make_prompts(label: np.ndarray, ids: list[int] | tuple[int, ...], kind: str, rng: np.random.Generator,
                 **kwargs) -> dict[int, Prompt]:
    """One prompt per label id of a multi-class label map (H,W), in the order of ``ids``."""
    label = np.asarray(label)
    return {int(i): make_prompt(label == i, kind, rng, **kwargs) for i in ids}
