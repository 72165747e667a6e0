"""One training step of SAM2 3D: a clip's organs through SAM2 together, and the loss.

Kept apart from the trainer so the benchmark (``benchmarks/_bench_sam2_3d.py``) times
exactly the step that trains. Which organs a clip holds, and on which prompt slices, is read
from the loader's host copy of the label (a few bincounts); boxes and masks are cut on the
device in a few vectorised ops (numpy prompts over an 8-slice 1024 px label took longer on the
CPU than the GPU's whole forward pass). From there on the step never waits for the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medsam2_hpc.errors import InputError
from medsam2_hpc.inference.predict import SlicePrompt, object_prompts, prompt_from_mask
from medsam2_hpc.losses import MultimaskLoss
from medsam2_hpc.models.sam2_video import ObjectPrompts, VideoPropagator

__all__ = ["BoxJitter", "clip_organs", "clip_prompts", "clip_loss", "propagated_loss", "param_groups",
           "adamw"]

_DECODER = ("sam_mask_decoder.", "sam_prompt_encoder.")


@dataclass(frozen=True)
class BoxJitter:
    """SAM2Train's box noise (``sam2.modeling.sam2_utils.sample_box_points``): each corner
    coordinate moves by U(-1, 1) x min(``fraction`` x box width (height), ``max_px``), then is
    clamped to the image. Meta's defaults (0.1, 20 px at 1024 px); ``fraction`` 0 = exact boxes."""

    fraction: float = 0.0
    max_px: float = 20.0


def clip_organs(label: torch.Tensor) -> list[int]:
    """Organ ids (ascending, background 0 left out) present in ``label``, the loader's host copy."""
    counts = torch.bincount(label.flatten())
    return (torch.nonzero(counts[1:]).flatten() + 1).tolist()


def prompt_slices(num_frames: int, prompt_freq: int) -> list[int]:
    """The conditioning slices of a clip: 0, f, 2f, ..."""
    return list(range(0, num_frames, max(1, prompt_freq)))


def clip_prompts(label: torch.Tensor, organs: Sequence[int], kind: str, prompt_freq: int,
                 rng: np.random.Generator, device: torch.device, jitter: BoxJitter = BoxJitter()
                 ) -> dict[int, ObjectPrompts]:
    """Ground-truth prompts on slices 0, f, 2f, ... of a clip ``label`` (T, S, S) at model size.

    ``label`` is the loader's host copy: which organ is on which prompt slice is read there, so
    the prompts cost no device sync; boxes and masks are cut on ``device``. The same prompts as
    :func:`~medsam2_hpc.inference.predict.prompt_from_mask` + ``object_prompts`` slice by slice
    without jitter (tests hold them equal): an absent organ gets an empty mask, a box its
    inclusive pixel bounds as corner points (labels 2, 3), moved by ``jitter``, a mask itself.
    """
    slices = prompt_slices(label.shape[0], prompt_freq)
    if kind == "click":  # random interior points: numpy, but only inside each organ's box
        lab = label[slices].numpy()
        return {t: object_prompts([_click(lab[i] == o, rng) for o in organs], lab.shape[1:], lab.shape[-1],
                                  device) for i, t in enumerate(slices)}
    if kind not in ("bbox", "mask"):
        raise InputError(f"prompt {kind!r}: sam2-3d needs bbox, click or mask")
    # which organ is on which slice, and the prompts' host parts (kinds, labels, groups), in numpy:
    # host planning of a few small arrays, where torch would issue an op for each step
    lab = label.numpy()[slices]  # (P, S, S)
    ids = np.asarray(organs)
    on_slices = torch.from_numpy(lab).to(device, non_blocking=True)
    masks = on_slices[:, None] == torch.from_numpy(ids).to(device, non_blocking=True).view(1, -1, 1, 1)
    if kind == "mask":  # (P, K, S, S)
        on = torch.ones(len(organs), dtype=torch.bool)
        plan = [(torch.arange(len(organs)), "mask", 0)]
        return {t: ObjectPrompts(on, m, plan=plan)
                for t, m in zip(slices, masks.unsqueeze(2).float().unbind(0), strict=True)}
    present = np.stack([np.bincount(s.ravel(), minlength=ids.max() + 1)[ids] > 0 for s in lab])  # (P, K)
    return _box_prompts(masks, present, slices, jitter, rng)


def _first_true(a: torch.Tensor) -> torch.Tensor:
    """Index of the first True along the last dim (0 where there is none)."""
    return a.to(torch.uint8).argmax(dim=-1)


def _box_prompts(masks: torch.Tensor, present: np.ndarray, slices: list[int], jitter: BoxJitter,
                 rng: np.random.Generator) -> dict[int, ObjectPrompts]:
    """Box prompts of organ masks (P, K, S, S) on ``slices``; ``present`` (P, K) on the host.

    Each slice's groups (:meth:`ObjectPrompts.groups`) are known here: absent organs take the
    empty mask, present ones two corner points."""
    size, device = masks.shape[-1], masks.device
    rows, cols = masks.any(dim=3), masks.any(dim=2)  # (P, K, S)
    low = torch.stack([_first_true(cols), _first_true(rows)], -1)
    high = size - 1 - torch.stack([_first_true(cols.flip(-1)), _first_true(rows.flip(-1))], -1)
    corners = torch.stack([low, high], 2).float()  # (P, K, 2, 2) as (x, y)
    if jitter.fraction > 0:
        reach = ((high - low).float() * jitter.fraction).clamp(max=jitter.max_px)  # (P, K, 2) as (dx, dy)
        noise = torch.from_numpy(rng.uniform(-1.0, 1.0, corners.shape)).float().to(device, non_blocking=True)
        corners = (corners + noise * reach[..., None, :]).clamp(0, size - 1)
    weight = present.astype(np.float32).reshape(*present.shape, 1, 1)
    corners = (corners * torch.from_numpy(weight).to(device, non_blocking=True)).unbind(0)
    box_labels = np.where(present[..., None], np.array([2, 3], np.int32), np.int32(-1))  # (P, K, 2)
    labels = torch.from_numpy(box_labels).unbind(0)
    empty = torch.zeros(masks.shape[1], 1, size, size, device=device)
    out = {}
    for i, (t, here) in enumerate(zip(slices, present, strict=True)):
        plan = [(torch.from_numpy(np.flatnonzero(~here)), "mask", 0)] if not here.all() else []
        if here.any():
            plan.append((torch.from_numpy(np.flatnonzero(here)), "points", 2))
        out[t] = ObjectPrompts(torch.from_numpy(~here), None if here.all() else empty,
                               corners[i] if here.any() else None, labels[i] if here.any() else None, plan)
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
              loss_fn: MultimaskLoss, rng: np.random.Generator, device: torch.device, *,
              prompted_only: bool = True, jitter: BoxJitter = BoxJitter()) -> dict[str, torch.Tensor] | None:
    """Loss of one clip ``{"image": (T,3,S,S), "label": (T,S,S)}``; None when it has no organ to train.

    The organs are the clip's objects: with ``prompted_only`` (SAM2Train) only those present on
    a conditioning slice, since one seen only on tracked slices would get nothing but empty
    prompts and a positive target. ``loss_fn`` scores every (slice, organ) the decoder produced
    (not the prompt masks SAM2 passes through unchanged), all its proposed masks and IoU
    estimates, and SAM2's object-score logit against "organ on this slice".
    """
    host = clip["label"]  # the loader's copy: which organs to train is read there, with no device sync
    frames = host.shape[0]
    organs = clip_organs(host[prompt_slices(frames, prompt_freq)] if prompted_only else host)
    if not organs:
        return None
    prompts = clip_prompts(host, organs, kind, prompt_freq, rng, device, jitter)
    return propagated_loss(propagator, clip, organs, prompts, loss_fn, device)


def propagated_loss(propagator: VideoPropagator, clip: dict[str, Any], organs: Sequence[int],
                    prompts: dict[int, ObjectPrompts], loss_fn: MultimaskLoss, device: torch.device
                    ) -> dict[str, torch.Tensor]:
    """The device part of :func:`clip_loss`: the clip through SAM2 and the loss, with no host sync.

    Outputs that are the prompt mask itself (not the decoder's) get weight 0 rather than being
    selected out, which would make the host wait for the device to learn how many there are.
    """
    label = clip["label"].to(device, non_blocking=True)
    frames, k = label.shape[0], len(organs)
    feats = propagator.encode(clip["image"].to(device, non_blocking=True))
    ids = torch.tensor(list(organs)).to(device, non_blocking=True).view(1, k, 1, 1)
    outs: list[Any] = [None] * frames
    for t, out in propagator.propagate(feats, prompts, frames, k, batch_prompted=True):
        outs[t] = out
    weight = torch.stack([o.from_decoder for o in outs]).flatten().float()  # (T K)
    width = max(o.multimasks.shape[1] for o in outs)  # 1 on box-prompted slices, 3 where SAM2 proposes 3
    # each input stacked once (then cast once), expanded only where a slice proposed fewer masks
    masks = torch.stack([_widened(o.multimasks, width) for o in outs]).flatten(0, 1).float()
    ious = torch.stack([_widened(o.ious, width) for o in outs]).flatten(0, 1).float()
    scores = torch.stack([o.object_score for o in outs]).flatten().float()  # (T, K, 1) -> (T K)
    truth = (label[:, None] == ids).flatten(0, 1)
    return loss_fn(masks, ious, scores, truth, weight)


def _widened(x: torch.Tensor, width: int) -> torch.Tensor:
    """``x`` (K, M, ...) with its M proposals repeated to ``width`` (a view; no op when M is already so)."""
    return x if x.shape[1] == width else x.expand(-1, width, *x.shape[2:])


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


def adamw(model: torch.nn.Module, lr: float, memory_lr: float, encoder_lr: float,
              weight_decay: float = 1e-2) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`, fused: a few kernels per step, where PyTorch's default
    issues a dozen ops per parameter group (foreach, on a GPU) or per parameter (on the CPU)."""
    return torch.optim.AdamW(param_groups(model, lr, memory_lr, encoder_lr), weight_decay=weight_decay,
                             fused=True)
