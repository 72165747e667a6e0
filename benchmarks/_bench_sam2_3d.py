"""SAM2 3D modes of ``bench_sam2.py``: ``train3d`` and ``infer3d`` (imported by it into MODES).

    python benchmarks/bench_sam2.py --mode train3d --config sam2_hiera_s --frames 8 --organs 13
    python benchmarks/bench_sam2.py --mode infer3d --config sam2_hiera_s --frames 100 --organs 13

Both time the code that trains and predicts (``trainers/sam2/step_3d.clip_loss``,
``infer.predict_volume``) on synthetic slices: K disc-shaped organs at fixed places in every
slice, random pixels (speed does not depend on them). ``train3d`` reports slices/s of whole
optimizer steps on one clip of N slices; ``infer3d`` slices/s over an N-slice volume with one
box per organ on the middle slice, and the encoder's share of the time. After the timing, one
more run counts the FLOPs (``tflop_per_run``, by PyTorch's FLOP counter with grouped
convolutions corrected) and gives the rate achieved (``achieved_tflops``); another runs under
the profiler for the host's time (``host_seconds_per_step``: CPU self time of every op, per step
or slice) and its ops (``host_ops_per_step``: what the host issues one by one, the operators the
dispatcher runs plus each call of a compiled kernel, ``engine.benchmark.count_host_ops``; of them
``compiled_kernels_per_step`` and the operators, ``aten_ops_per_step``, per training step or per
slice of the volume; on a GPU also ``kernel_launches_per_step``, else null). Far below the GPU's
peak, with host seconds near the step's, means the host's issuing of ops, not arithmetic, sets
the speed. ``--profile FILE`` also writes the profiler's table.

``aten_ops_per_step`` is counted from the profiler's events, not by a dispatch mode
(:class:`~medsam2_hpc.engine.benchmark.OpCounter`): under a mode the compiled regions run
eagerly, and the mode itself makes autograd issue a ``detach`` for every output it saves, which
plain eager does not (about 3.2k of OpCounter's 18.9k on the 128 px, 13-organ training step).
On an eager step it equals ``host_ops_per_step``.

``memory3d`` runs no step: it counts what train3d's autograd graph holds after a clip's forward
on a GPU (``activation_gib_estimate``), on fake tensors, so 1024 px clips can be compared on
any machine (``--no-checkpoint`` / ``--recompute-attention`` as for train3d).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsam2_hpc.engine.benchmark import (
    count_flops,
    memory_figures,
    profile_ops,
    record_compiled_kernels,
    sync,
    timed,
)

__all__ = ["MODES_3D", "add_arguments", "synthetic_volume", "bench_train3d", "bench_infer3d",
           "bench_memory3d"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=int, default=None, help="3D: slices per clip (train3d, default 8) "
                   "or per volume (infer3d, default 100)")
    p.add_argument("--organs", type=int, default=13, help="3D: organs (objects) per clip/volume")
    p.add_argument("--prompt-freq", type=int, default=2, help="train3d: prompt every k-th slice")
    p.add_argument("--no-checkpoint", dest="checkpoint", action="store_false",
                   help="train3d: keep every activation (the trainer recomputes per-slice ones by default)")
    p.add_argument("--recompute-attention", dest="keep_attention", action="store_false",
                   help="train3d: with checkpointing, recompute the attention kernels too (less memory)")
    p.add_argument("--profile", type=Path, default=None,
                   help="3D: after the timing, profile one more run and write the op table here")
    p.add_argument("--attention", default="default", choices=["default", "cudnn"],
                   help="3D: fused attention kernel tried first (sam2_video.ATTENTION)")
    p.add_argument("--compile", action="store_true",
                   help="3D: torch.compile the memory attention, memory encoder and mask decoder (dynamic "
                   "shapes); pair it with --warmup >= 1 so the compilation stays out of the timing, and "
                   "train3d with --recompute-attention or --no-checkpoint (the selective recompute fails "
                   "on it)")


def synthetic_volume(frames: int, organs: int, size: int, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(image (D,S,S) float32 in [0,1], label (D,S,S) uint8 with organs 1..K as discs on a grid)."""
    image = rng.random((frames, size, size), dtype=np.float32)
    label = np.zeros((frames, size, size), np.uint8)
    side = int(np.ceil(np.sqrt(organs)))
    cell = size / side
    yy, xx = np.mgrid[:size, :size]
    for k in range(organs):
        cy, cx = (k // side + 0.5) * cell, (k % side + 0.5) * cell
        label[:, (yy - cy) ** 2 + (xx - cx) ** 2 <= (0.35 * cell) ** 2] = k + 1
    return image, label


def _model(args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    from medsam2_hpc.models.sam2 import build_sam2_model

    return build_sam2_model(args.config, args.ckpt or "none", image_size=args.image_size, device=device,
                            allow_random=args.ckpt is None)


def bench_train3d(args: argparse.Namespace) -> dict[str, Any]:
    """Optimizer steps on one clip of N slices with K organs batched as objects."""
    from medsam2_hpc.engine.runtime import autocast, pick_device
    from medsam2_hpc.losses import MultimaskLoss, make_loss
    from medsam2_hpc.models.sam2 import set_trainable
    from medsam2_hpc.models.sam2_video import VideoPropagator
    from medsam2_hpc.trainers.sam2.step_3d import adamw, clip_loss

    device = pick_device(args.device)
    frames = args.frames or 8
    model = _model(args, device)
    trainable = set_trainable(model, args.trainable)
    model.train()
    if args.compile:  # before the first compiled call: its C++ kernels then show in the profiler
        record_compiled_kernels()
    propagator = VideoPropagator(model, checkpoint=args.checkpoint, keep_attention=args.keep_attention,
                                 attention=args.attention, compile=args.compile)
    optimizer = adamw(model, 1e-4, 1e-5, 1e-5)  # as the trainer's
    loss_fn = MultimaskLoss(make_loss("bce"))
    rng = np.random.default_rng(0)
    image, label = synthetic_volume(frames, args.organs, args.image_size, rng)
    clip = {"image": torch.from_numpy(image)[:, None].expand(-1, 3, -1, -1).contiguous(),
            "label": torch.from_numpy(label).long()}
    if device.type == "cuda":  # as the trainer's DataLoader (pin_memory) hands them over
        clip = {key: value.pin_memory() for key, value in clip.items()}
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> float:
        with autocast(device, args.amp):
            parts = clip_loss(propagator, clip, "bbox", args.prompt_freq, loss_fn, rng, device)
        optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        return float(parts["loss"].detach())

    seconds, losses = timed(step, args.steps, args.warmup, device)
    # after the timing: the counters slow the step
    work = _work_figures(step, device, args.profile, 1)
    return {"config": args.config, "image_size": args.image_size, "frames": frames, "organs": args.organs,
            "prompt_freq": args.prompt_freq, "checkpoint": args.checkpoint,
            "keep_attention": args.keep_attention, "attention": args.attention, "compile": args.compile,
            "steps": args.steps,
            "warmup": args.warmup,
            "amp": args.amp if device.type == "cuda" else "none", "trainable": args.trainable,
            "trainable_m": trainable / 1e6, "seconds": seconds, "step_seconds": seconds / args.steps,
            "slices_per_s": frames * args.steps / seconds, "final_loss": losses[-1],
            **_compute_figures(work.pop("flops"), seconds / args.steps), **work, **memory_figures(device)}


def bench_infer3d(args: argparse.Namespace) -> dict[str, Any]:
    """Whole-volume prediction (encoder once per slice, K organs batched), one box per organ."""
    from medsam2_hpc.engine.runtime import autocast, pick_device
    from medsam2_hpc.inference.predict import SlicePrompt, predict_volume, resize_volume
    from medsam2_hpc.models.sam2_video import VideoPropagator

    device = pick_device(args.device)
    frames = args.frames or 100
    model = _model(args, device).eval()
    if args.compile:
        record_compiled_kernels()
    propagator = VideoPropagator(model, attention=args.attention, compile=args.compile)
    image, label = synthetic_volume(frames, args.organs, args.image_size, np.random.default_rng(0))
    mid = frames // 2
    prompts = {}
    for organ in range(1, args.organs + 1):
        rows, cols = np.nonzero(label[mid] == organ)
        prompts[organ] = {mid: SlicePrompt("box", box=(cols.min(), rows.min(), cols.max(), rows.max()))}

    def run() -> np.ndarray:
        return predict_volume(propagator, image, prompts, image_size=args.image_size, device=device,
                              amp=args.amp)

    seconds, preds = timed(run, args.steps, args.warmup, device)
    seconds, pred = seconds / args.steps, preds[-1]
    work = _work_figures(run, device, args.profile, frames)
    with torch.inference_mode(), autocast(device, args.amp):  # the encoder's share alone
        t1 = time.perf_counter()
        for lo in range(0, frames, 8):
            propagator.encode(resize_volume(image[lo:lo + 8], args.image_size).to(device))
        sync(device)
        encode_seconds = time.perf_counter() - t1
    return {"config": args.config, "image_size": args.image_size, "frames": frames, "organs": args.organs,
            "runs": args.steps, "warmup": args.warmup, "attention": args.attention, "compile": args.compile,
            "amp": args.amp if device.type == "cuda" else "none",
            "seconds_per_volume": seconds, "slices_per_s": frames / seconds,
            "encode_seconds": encode_seconds, "organs_found": int(len(np.unique(pred)) - 1),
            **_compute_figures(work.pop("flops"), seconds), **work, **memory_figures(device)}


def _work_figures(run: Any, device: torch.device, table: Path | None, per: int
                  ) -> dict[str, Any]:
    """FLOPs of one ``run``; its host ops, launches and host seconds per step (``per`` steps in a run)."""
    _, flops = count_flops(run)
    prof = profile_ops(run, device, table)
    ops = prof.host_ops
    return {"flops": flops, "aten_ops_per_step": (ops.total - ops.kernels) / per,
            "host_ops_per_step": ops.total / per, "compiled_kernels_per_step": ops.kernels / per,
            "kernel_launches_per_step": ops.launches / per if device.type == "cuda" else None,
            "host_seconds_per_step": prof.host_seconds / per, "profile_top": prof.top if table else None}


def _compute_figures(flops: int, seconds: float) -> dict[str, float]:
    """FLOPs of one step or volume and the rate achieved: compare with the device's peak."""
    return {"tflop_per_run": flops / 1e12, "achieved_tflops": flops / seconds / 1e12}


def bench_memory3d(args: argparse.Namespace) -> dict[str, Any]:
    """train3d's activation memory on a GPU, counted without one (:mod:`~medsam2_hpc.engine.fake_memory`).

    One clip's forward (``clip_loss``'s device part, bf16 autocast unless ``--amp none``) on fake
    CUDA tensors: ``activation_gib_estimate`` is what the autograd graph holds for the backward
    pass, ``state_gib`` the weights with the trainable ones' gradients and AdamW's two moments
    (fp32). Any size runs in seconds on the CPU: compare the recompute settings at 1024 px.
    """
    import dataclasses

    from medsam2_hpc.engine.fake_memory import DEVICE, fake_cuda, held_bytes, to_fake
    from medsam2_hpc.losses import MultimaskLoss, make_loss
    from medsam2_hpc.models.sam2 import set_trainable
    from medsam2_hpc.models.sam2_video import VideoPropagator
    from medsam2_hpc.trainers.sam2.step_3d import clip_organs, clip_prompts, prompt_slices, propagated_loss

    frames = args.frames or 8
    model = _model(args, torch.device("cpu"))
    trainable = set_trainable(model, args.trainable)
    model.train()
    image, label = synthetic_volume(frames, args.organs, args.image_size, np.random.default_rng(0))
    label = torch.from_numpy(label).long()
    organs = clip_organs(label[prompt_slices(frames, args.prompt_freq)])
    # the host part of clip_loss on real tensors (it reads the label), then the device part on fake ones
    prompts = clip_prompts(label, organs, "bbox", args.prompt_freq, np.random.default_rng(0),
                           torch.device("cpu"))
    with fake_cuda() as mode:
        to_fake(model, mode)
        clip = {"image": to_fake(torch.from_numpy(image)[:, None].expand(-1, 3, -1, -1), mode, None),
                "label": to_fake(label, mode, None)}
        fake = {t: dataclasses.replace(p, use_mask=to_fake(p.use_mask, mode, None),
                                       masks=to_fake(p.masks, mode),
                                       point_coords=to_fake(p.point_coords, mode),
                                       point_labels=to_fake(p.point_labels, mode, None),
                                       plan=[(to_fake(i, mode, None), kind, n) for i, kind, n in p.groups()])
                for t, p in prompts.items()}
        propagator = VideoPropagator(model, checkpoint=args.checkpoint, keep_attention=args.keep_attention,
                                     attention=args.attention)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)

        def forward() -> torch.Tensor:
            with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                return propagated_loss(propagator, clip, organs, fake, MultimaskLoss(make_loss("bce")),
                                       DEVICE)["loss"]

        held = held_bytes(forward)
    weights = sum(p.numel() for p in model.parameters()) * 4
    return {"config": args.config, "image_size": args.image_size, "frames": frames, "organs": len(organs),
            "prompt_freq": args.prompt_freq, "checkpoint": args.checkpoint,
            "keep_attention": args.keep_attention, "amp": args.amp, "trainable": args.trainable,
            "trainable_m": trainable / 1e6,
            "activation_gib_estimate": held / 2**30, "state_gib": (weights + 3 * trainable * 4) / 2**30}


MODES_3D = {"train3d": bench_train3d, "infer3d": bench_infer3d, "memory3d": bench_memory3d}
