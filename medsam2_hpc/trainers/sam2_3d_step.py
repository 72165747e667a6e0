"""One training step of SAM2 3D: a clip's organs through SAM2 together, and the loss.

Kept apart from the trainer so the benchmark (``benchmarks/_bench_sam2_3d.py``) times
exactly the step that trains.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..infer import object_prompts, prompt_from_mask
from ..models.sam2_video import ObjectPrompts, VideoPropagator

__all__ = ["clip_prompts", "clip_loss", "param_groups"]

_DECODER = ("sam_mask_decoder.", "sam_prompt_encoder.")


def clip_prompts(label: np.ndarray, organs: list[int], kind: str, prompt_freq: int,
                 rng: np.random.Generator, device: torch.device) -> dict[int, ObjectPrompts]:
    """Ground-truth prompts on slices 0, f, 2f, ... of a clip ``label`` (T, S, S) at model size."""
    size = label.shape[-1]
    return {t: object_prompts([prompt_from_mask(label[t] == o, kind, rng) for o in organs],
                              (size, size), size, device)
            for t in range(0, label.shape[0], max(1, prompt_freq))}


def clip_loss(propagator: VideoPropagator, clip: dict[str, Any], kind: str, prompt_freq: int,
              loss_fn: torch.nn.Module, rng: np.random.Generator, device: torch.device, *,
              obj_score_weight: float = 1.0) -> dict[str, torch.Tensor] | None:
    """Loss of one clip ``{"image": (T,3,S,S), "label": (T,S,S)}``; None when it holds no organ.

    Mask loss over every (slice, organ) the decoder produced (not the prompt masks SAM2 passes
    through unchanged), plus BCE on SAM2's object-score logit against "organ on this slice".
    """
    label = clip["label"]
    organs = [int(o) for o in torch.unique(label) if int(o) != 0]
    if not organs:
        return None
    frames, k = label.shape[0], len(organs)
    prompts = clip_prompts(label.numpy(), organs, kind, prompt_freq, rng, device)
    feats = propagator.encode(clip["image"].to(device, non_blocking=True))
    ids = torch.tensor(organs, device=device).view(1, k, 1, 1)
    target = (label.to(device)[:, None] == ids).float()  # (T, K, S, S)
    logits: list[torch.Tensor] = [torch.empty(0)] * frames
    scores: list[torch.Tensor] = [torch.empty(0)] * frames
    keep: list[torch.Tensor] = [torch.empty(0)] * frames
    for t, out in propagator.propagate(feats, prompts, frames, k):
        logits[t], scores[t] = out.high_res[:, 0].float(), out.object_score[:, 0].float()
        keep[t] = out.from_decoder
    sel = torch.stack(keep)  # (T, K)
    zero = target.new_zeros(())
    if not bool(sel.any()):
        return {"loss": zero, "mask": zero, "obj": zero}
    pred, truth = torch.stack(logits)[sel][:, None], target[sel][:, None]
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
