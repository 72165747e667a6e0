"""One training step of SAM2 3D: a clip's organs through SAM2 together, and the loss.

Kept apart from the trainer so the benchmark (``benchmarks/_bench_sam2_3d.py``) times
exactly the step that trains. Which organs a clip holds and their box/mask prompts are found
on the device in a few vectorised ops: ``torch.unique`` and numpy prompts over an 8-slice
1024 px label took longer on the CPU than the GPU's whole forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medsam2_hpc.errors import InputError
from medsam2_hpc.inference.predict import SlicePrompt, object_prompts, prompt_from_mask
from medsam2_hpc.models.sam2_video import ObjectPrompts, VideoPropagator

__all__ = ["clip_organs", "clip_prompts", "clip_loss", "param_groups"]

_DECODER = ("sam_mask_decoder.", "sam_prompt_encoder.")


def clip_organs(label: torch.Tensor) -> list[int]:
    """Organ ids (ascending, background 0 left out) present in ``label``; one device sync."""
    counts = torch.bincount(label.flatten())
    return (torch.nonzero(counts[1:]).flatten() + 1).tolist()


def clip_prompts(label: torch.Tensor, organs: Sequence[int], kind: str, prompt_freq: int,
                 rng: np.random.Generator, device: torch.device) -> dict[int, ObjectPrompts]:
    """Ground-truth prompts on slices 0, f, 2f, ... of a clip ``label`` (T, S, S) at model size.

    The same prompts as :func:`~medsam2_hpc.inference.predict.prompt_from_mask` + ``object_prompts`` slice
    by slice (tests hold them equal): an absent organ gets an empty mask, a box its inclusive
    pixel bounds as corner points (labels 2, 3), a mask itself.
    """
    slices = list(range(0, label.shape[0], max(1, prompt_freq)))
    if kind == "click":  # random interior points: numpy, but only inside each organ's box
        lab = label[slices].cpu().numpy()
        return {t: object_prompts([_click(lab[i] == o, rng) for o in organs], lab.shape[1:], lab.shape[-1],
                                  device) for i, t in enumerate(slices)}
    ids = torch.as_tensor(list(organs), device=device)
    masks = label[slices].to(device)[:, None] == ids.view(1, -1, 1, 1)  # (P, K, S, S)
    if kind == "mask":
        on = torch.ones(len(organs), dtype=torch.bool, device=device)
        return {t: ObjectPrompts(on, masks[i, :, None].float()) for i, t in enumerate(slices)}
    if kind != "bbox":
        raise InputError(f"prompt {kind!r}: sam2-3d needs bbox, click or mask")
    return _box_prompts(masks, slices)


def _first_true(a: torch.Tensor) -> torch.Tensor:
    """Index of the first True along the last dim (0 where there is none)."""
    return a.to(torch.uint8).argmax(dim=-1)


def _box_prompts(masks: torch.Tensor, slices: list[int]) -> dict[int, ObjectPrompts]:
    """Box prompts of organ masks (P, K, S, S) on ``slices``; one sync for "which are present"."""
    size, device = masks.shape[-1], masks.device
    rows, cols = masks.any(dim=3), masks.any(dim=2)  # (P, K, S)
    present = rows.any(dim=2)
    low = torch.stack([_first_true(cols), _first_true(rows)], -1)
    high = size - 1 - torch.stack([_first_true(cols.flip(-1)), _first_true(rows.flip(-1))], -1)
    corners = torch.stack([low, high], 2).float() * present[..., None, None]  # (P, K, 2, 2) as (x, y)
    labels = torch.tensor([2, 3], dtype=torch.int32, device=device).expand(*present.shape, 2)
    labels = torch.where(present[..., None], labels, torch.full_like(labels, -1))
    empty = torch.zeros(masks.shape[1], 1, size, size, device=device)
    out = {}
    for i, (t, here) in enumerate(zip(slices, present.cpu(), strict=True)):
        any_box = bool(here.any())
        out[t] = ObjectPrompts((~here).to(device), None if bool(here.all()) else empty,
                               corners[i] if any_box else None, labels[i] if any_box else None)
    return out


def _click(mask: np.ndarray, rng: np.random.Generator) -> SlicePrompt:
    """``prompt_from_mask(mask, "click", rng)`` with the distance transform on the organ's box.

    Same points and the same draws from ``rng``: every background pixel nearest to an organ
    pixel lies inside the box or on the one-pixel ring around it, which the padding supplies.
    """
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if not rows.size:
        return SlicePrompt("empty")
    r0, c0 = rows[0], cols[0]
    prompt = prompt_from_mask(mask[r0:rows[-1] + 1, c0:cols[-1] + 1], "click", rng)
    return SlicePrompt("points", points=prompt.points + np.array([c0, r0], np.float32), labels=prompt.labels)


def clip_loss(propagator: VideoPropagator, clip: dict[str, Any], kind: str, prompt_freq: int,
              loss_fn: torch.nn.Module, rng: np.random.Generator, device: torch.device, *,
              obj_score_weight: float = 1.0) -> dict[str, torch.Tensor] | None:
    """Loss of one clip ``{"image": (T,3,S,S), "label": (T,S,S)}``; None when it holds no organ.

    Mask loss over every (slice, organ) the decoder produced (not the prompt masks SAM2 passes
    through unchanged), plus BCE on SAM2's object-score logit against "organ on this slice".
    """
    label = clip["label"].to(device, non_blocking=True)
    organs = clip_organs(label)
    if not organs:
        return None
    frames, k = label.shape[0], len(organs)
    prompts = clip_prompts(label, organs, kind, prompt_freq, rng, device)
    feats = propagator.encode(clip["image"].to(device, non_blocking=True))
    ids = torch.tensor(organs, device=device).view(1, k, 1, 1)
    logits: list[torch.Tensor] = [torch.empty(0)] * frames
    scores: list[torch.Tensor] = [torch.empty(0)] * frames
    keep: list[torch.Tensor] = [torch.empty(0)] * frames
    for t, out in propagator.propagate(feats, prompts, frames, k):
        logits[t], scores[t] = out.high_res[:, 0].float(), out.object_score[:, 0].float()
        keep[t] = out.from_decoder
    sel = torch.stack(keep)  # (T, K)
    zero = torch.zeros((), device=device)
    if not bool(sel.any()):
        return {"loss": zero, "mask": zero, "obj": zero}
    pred = torch.stack(logits)[sel][:, None]
    truth = (label[:, None] == ids)[sel][:, None].float()
    mask_loss = loss_fn(pred, truth)
    present = truth.flatten(1).any(1).float()
    obj_loss = F.binary_cross_entropy_with_logits(torch.stack(scores)[sel], present)
    total = mask_loss + obj_score_weight * obj_loss
    return {"loss": total, "mask": mask_loss.detach(), "obj": obj_loss.detach()}


def param_groups(model: torch.nn.Module, lr: float, memory_lr: float, encoder_lr: float
                 ) -> list[dict[str, Any]]:
    """Trainable parameters by part: decoder (``lr``), image encoder, and the rest = memory.

    "Memory" is everything SAM2 adds to SAM for video: memory attention and encoder, object
    pointer projections and the learned memory embeddings.
    """
    groups: dict[str, list[torch.nn.Parameter]] = {"decoder": [], "encoder": [], "memory": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "decoder" if name.startswith(_DECODER) else "encoder" if name.startswith("image_encoder.") \
            else "memory"
        groups[part].append(p)
    rates = {"decoder": lr, "encoder": encoder_lr, "memory": memory_lr}
    out = [{"params": ps, "lr": rates[part], "name": part} for part, ps in groups.items() if ps]
    if not out:
        raise InputError("hparams.trainable: leaves no parameter to train")
    return out
