"""Decoding and resizing shared by the REFUGE and BTCV loaders.

One place turns a broken file into one line naming it (InputError, exit 2), so a corrupt
JPEG deep in a dataset stops a run with the path instead of a PIL traceback. Decoding needs no
torch (``submit``'s data check decodes files on a login node); the resizes import it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InputError

if TYPE_CHECKING:
    import torch

__all__ = ["read_image", "read_npy", "resize_image", "resize_mask", "resize_labels"]


def _pil_open():
    """PIL's own ``Image.open``. Importing Ultralytics replaces it with a wrapper that, on a file
    PIL cannot identify, tries to install a HEIF plugin (online), so a corrupt JPEG would end
    as ``ModuleNotFoundError: pi_heif`` instead of one line naming the file."""
    return getattr(sys.modules.get("ultralytics.utils.patches"), "_image_open", Image.open)


def read_image(path: Path, mode: str) -> np.ndarray:
    """Decode ``path`` fully in PIL ``mode`` ("RGB" or "L") as uint8."""
    try:
        with _pil_open()(path) as img:
            img.load()
            return np.array(img.convert(mode))
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path}: corrupt or unreadable image ({exc})") from None


def read_npy(path: Path) -> np.ndarray:
    """Load a label map without pickles (a .npy from the internet must not run code)."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{path}: corrupt or unreadable .npy ({exc})") from None


def resize_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """(C,H,W) or (N,C,H,W) float -> ``size`` x ``size`` bilinear (antialiased when shrinking)."""
    import torch.nn.functional as F

    batched = image.dim() == 4
    x = image if batched else image[None]
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        x = x.clamp_(0.0, 1.0)
    return x if batched else x[0]


def resize_mask(soft: torch.Tensor, size: int) -> torch.Tensor:
    """(C,H,W) soft mask in [0,1] -> area/bilinear resize, then >= 0.5, as float {0,1}.

    Averaging before thresholding keeps thin structures and boundary positions better than
    nearest-neighbour sampling when REFUGE's ~2000 px masks shrink to the model size.
    """
    import torch.nn.functional as F

    x = soft[None].float()
    if x.shape[-2:] != (size, size):
        shrink = x.shape[-2] >= size and x.shape[-1] >= size
        x = (F.interpolate(x, size=(size, size), mode="area") if shrink
             else F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False))
    return (x[0] >= 0.5).float()


def resize_labels(label: torch.Tensor, size: int) -> torch.Tensor:
    """(..., H, W) integer label map -> nearest-neighbour resize (ids must stay ids)."""
    import torch.nn.functional as F

    if label.shape[-2:] == (size, size):
        return label.long()
    lead = label.shape[:-2]
    x = label.reshape(-1, 1, *label.shape[-2:]).float()
    x = F.interpolate(x, size=(size, size), mode="nearest-exact")
    return x.reshape(*lead, size, size).long()
