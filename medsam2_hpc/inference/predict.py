"""3D inference over whole volumes: shared by validation, ``inference_3d.py`` and the benchmark.

Every organ of a volume is one object of a single batched SAM2 pass
(:class:`~medsam2_hpc.models.sam2_video.VideoPropagator`); organs that were prompted on the
same slices share a pass. Each slice is encoded once. Overlaps are resolved per voxel by the
highest probability (> 0.5), so the output is one label volume of organ ids.

Evaluation protocol (recorded in metrics.json by :func:`protocol`): prompts from the ground
truth on every ``prompt_freq``-th slice from slice 0 for every organ present in the case (an
empty-mask prompt where the organ is absent on such a slice, as the reference trains), SAM2
propagates to all other slices; Dice is volumetric over the whole volume (every labelled
slice, not the reference's first quarter), with the per-slice mean beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from medsam2_hpc.data.btcv import ORGANS, Volume
from medsam2_hpc.data.images import resize_image
from medsam2_hpc.data.prompts import make_prompt
from medsam2_hpc.engine.runtime import autocast
from medsam2_hpc.models.sam2_video import ObjectPrompts, VideoPropagator
from medsam2_hpc.scoring import Scorer, resize_scores

__all__ = ["SlicePrompt", "VolumePrompts", "prompt_from_mask", "gt_prompts", "object_prompts",
           "predict_volume", "merge_slice", "EvalSettings", "evaluate", "protocol", "resize_volume"]


@dataclass(frozen=True, eq=False)
class SlicePrompt:
    """One organ's prompt on one slice, in that slice's pixels ((x, y) = (column, row)).

    ``empty`` says the organ is absent on this slice (fed to SAM2 as an empty mask).
    """

    kind: Literal["box", "points", "mask", "empty"]
    box: tuple[float, float, float, float] | None = None
    points: np.ndarray | None = None  # (N, 2) float (x, y)
    labels: np.ndarray | None = None  # (N,) 1 positive / 0 negative
    mask: np.ndarray | None = None  # (H, W) bool


VolumePrompts = dict[int, dict[int, SlicePrompt]]  # organ id -> slice -> prompt


def prompt_from_mask(mask: np.ndarray, kind: str, rng: np.random.Generator) -> SlicePrompt:
    """The ``kind`` prompt (bbox | click | mask) of one organ's mask on one slice."""
    prompt = make_prompt(mask, kind, rng)
    if not prompt.present:
        return SlicePrompt("empty")
    if kind == "bbox":
        return SlicePrompt("box", box=tuple(float(v) for v in prompt.box))
    if kind == "click":
        return SlicePrompt("points", points=prompt.points, labels=prompt.point_labels)
    return SlicePrompt("mask", mask=mask.astype(bool))


def gt_prompts(label: np.ndarray, kind: str, prompt_freq: int, rng: np.random.Generator,
               organs: Iterable[int] | None = None) -> VolumePrompts:
    """Ground-truth prompts on slices 0, f, 2f, ... for every organ present in ``label`` (D, H, W)."""
    present = [int(o) for o in np.unique(label) if o != 0] if organs is None else list(organs)
    slices = range(0, label.shape[0], max(1, int(prompt_freq)))
    return {o: {t: prompt_from_mask(label[t] == o, kind, rng) for t in slices} for o in present}


def object_prompts(specs: list[SlicePrompt], hw: tuple[int, int], image_size: int,
                   device: torch.device | str) -> ObjectPrompts:
    """The K organs' prompts on one slice as model-input tensors (coordinates rescaled)."""
    k, (h, w), s = len(specs), hw, image_size
    use_mask = torch.tensor([p.kind in ("mask", "empty") for p in specs], dtype=torch.bool)
    masks = None
    if bool(use_mask.any()):
        masks = torch.zeros(k, 1, s, s)
        for i, p in enumerate(specs):
            if p.kind == "mask":
                m = torch.from_numpy(np.asarray(p.mask, dtype=np.float32))[None, None]
                masks[i] = (F.interpolate(m, size=(s, s), mode="bilinear", align_corners=False) > 0.5)[0]
    coords = labels = None
    point_specs = [p for p in specs if p.kind in ("box", "points")]
    if point_specs:
        n = max(2 if p.kind == "box" else len(p.points) for p in point_specs)
        coords = torch.zeros(k, n, 2)
        labels = -torch.ones(k, n, dtype=torch.int32)
        for i, p in enumerate(specs):
            if p.kind == "box":
                x0, y0, x1, y1 = p.box
                coords[i, :2] = torch.tensor([[x0, y0], [x1, y1]])
                labels[i, :2] = torch.tensor([2, 3], dtype=torch.int32)
            elif p.kind == "points":
                pts = torch.as_tensor(np.asarray(p.points, dtype=np.float32)).reshape(-1, 2)
                coords[i, :len(pts)] = pts
                labels[i, :len(pts)] = torch.as_tensor(np.asarray(p.labels), dtype=torch.int32)
        # pixel centres of the slice -> pixel units of the model input
        scale = torch.tensor([s / w, s / h])
        coords = (coords + 0.5) * scale - 0.5
    return ObjectPrompts(use_mask, None if masks is None else masks.to(device, non_blocking=True),
                         None if coords is None else coords.to(device, non_blocking=True), labels)


def resize_volume(image: np.ndarray | torch.Tensor, image_size: int) -> torch.Tensor:
    """(T, H, W) grey in [0, 1] -> (T, 3, S, S), as SAM2 takes RGB; the same (antialiased) resize
    the training clips get (``data.images.resize_image``), so the model sees what it trained on."""
    x = torch.as_tensor(image, dtype=torch.float32)[:, None]
    return resize_image(x, image_size).expand(-1, 3, -1, -1)


@torch.inference_mode()
def predict_volume(propagator: VideoPropagator, image: np.ndarray, prompts: VolumePrompts, *,
                   image_size: int, device: torch.device, amp: str = "bf16", chunk: int = 8) -> np.ndarray:
    """Label volume (D, H, W) uint8 of organ ids for ``image`` (D, H, W) in [0, 1].

    The model must already be in eval mode on ``device``. Slices go to the device grey and are
    resized there; labels stay on the device until the volume is done, and merging a slice
    needs no host sync, so the host queues the next slice while the GPU works.
    """
    depth, h, w = image.shape
    out = torch.zeros(depth, h, w, dtype=torch.uint8, device=device)
    if not prompts:
        return out.cpu().numpy()
    best = torch.full((depth, h, w), 0.5, dtype=torch.float16, device=device)
    pinned = device.type == "cuda"
    with autocast(device, amp):
        feats = []
        for lo in range(0, depth, chunk):
            grey = torch.from_numpy(np.ascontiguousarray(image[lo:lo + chunk], dtype=np.float32))
            grey = (grey.pin_memory() if pinned else grey).to(device, non_blocking=True)
            feats += propagator.encode(resize_volume(grey, image_size), chunk=chunk)
        groups: dict[tuple[int, ...], list[int]] = {}
        for organ in sorted(prompts):
            groups.setdefault(tuple(sorted(prompts[organ])), []).append(organ)
        for slices, organs in groups.items():
            ids = torch.tensor(organs, dtype=torch.uint8, device=device)
            per_slice = {t: object_prompts([prompts[o][t] for o in organs], (h, w), image_size, device)
                         for t in slices}
            for t, res in propagator.propagate(feats, per_slice, depth, len(organs)):
                merge_slice(out[t], best[t], ids, torch.sigmoid(resize_scores(res.low_res[:, 0], (h, w))))
    return out.cpu().numpy()


def merge_slice(labels: torch.Tensor, best: torch.Tensor, ids: torch.Tensor, probs: torch.Tensor) -> None:
    """Write organ ``ids[k]`` where ``probs[k]`` (K, H, W) is the highest so far and above ``best``.

    ``labels`` (H, W) and ``best`` (H, W, starting at 0.5) are updated in place with
    ``torch.where``: boolean-mask assignment would make the host wait for the device.
    """
    prob, arg = probs.max(0)
    take = prob > best
    labels.copy_(torch.where(take, ids[arg], labels))
    best.copy_(torch.where(take, prob.to(best.dtype), best))


def protocol(kind: str, prompt_freq: int, prompt_file: str | None = None) -> dict[str, Any]:
    """How the numbers were made, for metrics.json (so 3D results are never compared blind)."""
    if prompt_file:
        return {"prompts": "file", "prompt_file": str(prompt_file), "scored": "whole volume",
                "dice": "volumetric per case and organ"}
    return {"prompts": "ground truth", "prompt": kind, "prompt_freq": int(prompt_freq),
            "prompt_slices": f"every {prompt_freq}th slice from 0, every organ present in the case "
                             "(empty-mask prompt where absent on that slice)",
            "scored": "whole volume (every labelled slice)", "dice": "volumetric per case and organ",
            "dice_mean_per_slice": "mean 2D Dice over the slices holding the organ"}


@dataclass(frozen=True)
class EvalSettings:
    """How :func:`evaluate` prompts, predicts and scores volumes: set once by the 3D trainer (its
    config) or ``inference_3d.py`` (its flags), the same for every set of volumes it scores.

    Args:
        kind: ground-truth prompt kind (bbox | click | mask), every ``prompt_freq``-th slice.
        image_size: the model's input side; ``device`` and ``amp`` where and how it runs.
        unit: HD95's unit (mm | px), the volumes' ``hd95_unit``.
        seed: seeds the click positions (volume ``i`` draws from ``[seed, i]``).
        hd95: compute HD95 (the slow score).
    """

    kind: str
    prompt_freq: int
    image_size: int
    device: torch.device
    amp: str
    unit: str
    seed: int = 0
    hd95: bool = True


def evaluate(propagator: VideoPropagator, volumes: Iterable[Volume], settings: EvalSettings, *,
             file_prompts: dict[str, VolumePrompts] | None = None,
             on_case: Callable[[Volume, np.ndarray], None] | None = None) -> Scorer:
    """Predict every volume (GT prompts, or ``file_prompts[case]``) and score those with labels
    (:class:`~medsam2_hpc.scoring.Scorer`, HD95 in ``settings.unit``)."""
    s = settings
    model = propagator.model
    was_training = model.training
    model.eval()
    result = Scorer(s.unit, hd95=s.hd95, per_slice=True)
    try:
        for i, volume in enumerate(volumes):
            if file_prompts is not None:
                prompts = file_prompts.get(volume.case, {})
            else:
                prompts = gt_prompts(volume.label, s.kind, s.prompt_freq, np.random.default_rng([s.seed, i]))
            pred = predict_volume(propagator, volume.image, prompts, image_size=s.image_size,
                                  device=s.device, amp=s.amp)
            if volume.label is not None:
                result.add_labels(volume.case, pred, volume.label, ORGANS, volume.spacing)
            if on_case is not None:
                on_case(volume, pred)
    finally:
        model.train(was_training)
    return result
