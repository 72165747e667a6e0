"""Overlay PNGs users look at: image | truth | prediction, side by side, one row per class."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from medsam2_hpc.atomic import atomic_write

__all__ = ["overlay_png", "mask_png"]

_COLOURS = np.array([[0, 255, 0], [255, 64, 64], [64, 128, 255], [255, 255, 0]], dtype=np.float32)


def _tint(rgb: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> np.ndarray:
    out = rgb.copy()
    out[mask] = 0.5 * out[mask] + 0.5 * colour
    return out


def overlay_png(path: Path, image: torch.Tensor, truth: torch.Tensor, pred: torch.Tensor) -> Path:
    """Write ``image`` [3,S,S] in [0,1] with ``truth`` and ``pred`` [C,O,O] (bool) tinted over it."""
    size = truth.shape[-1]
    img = F.interpolate(image[None].float().cpu(), size=(size, size), mode="bilinear",
                        align_corners=False)[0].clamp(0, 1)
    rgb = (img.permute(1, 2, 0).numpy() * 255).astype(np.float32)
    rows = []
    for c in range(truth.shape[0]):
        colour = _COLOURS[c % len(_COLOURS)]
        t, p = truth[c].bool().cpu().numpy(), pred[c].bool().cpu().numpy()
        rows.append(np.concatenate([rgb, _tint(rgb, t, colour), _tint(rgb, p, colour)], axis=1))
    return _save(path, np.concatenate(rows, axis=0).astype(np.uint8))


def mask_png(path: Path, mask: torch.Tensor) -> Path:
    """A binary mask [O,O] as a 0/255 greyscale PNG (the prediction files)."""
    return _save(path, mask.bool().cpu().numpy().astype(np.uint8) * 255)


def _save(path: Path, array: np.ndarray) -> Path:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return atomic_write(path, lambda fh: fh.write(buf.getvalue()))
