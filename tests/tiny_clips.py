"""A random-weight Hiera-T that trains like SAM2 and a clip of disc organs, for the 3D step's tests.

Random heads call every object absent (all masks -1024), so the object-score bias is raised:
the organs are present and their masks, losses and gradients differ.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from medsam2_hpc.models.sam2 import build_sam2_model, set_trainable


def tiny_sam2(size: int) -> torch.nn.Module:
    """Hiera-T at ``size`` px, seed 0, decoder and memory trainable, in train mode (dropout on)."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_sam2_model("sam2_hiera_t", None, image_size=size, allow_random=True)
    set_trainable(model, "decoder+memory")
    model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.data.fill_(5.0)  # organs present
    return model.train()


def disc_clip(size: int, frames: int, centres: Sequence[tuple[int, int]], radius: int
              ) -> dict[str, torch.Tensor]:
    """Random pixels (seed 0) and organs 1, 2, ... as discs at ``centres`` (y, x) on every slice."""
    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    label = torch.zeros(frames, size, size, dtype=torch.long)
    for organ, (cy, cx) in enumerate(centres, start=1):
        label[:, (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = organ
    return {"image": torch.rand(frames, 3, size, size, generator=gen), "label": label}
