#!/usr/bin/env python
"""SAM2 throughput and peak memory, printed as one JSON object.

    python benchmarks/bench_sam2.py --mode train2d --config sam2_hiera_t --image-size 1024 --batch 4

Modes are functions in ``MODES`` (mode -> fn(args) -> dict); every mode's result goes through
:func:`emit`, so all figures share one format. Inputs are synthetic (random images, one disc
per image as the mask), weights random unless ``--ckpt`` is given: speed and memory do not
depend on what the pixels show. Peak memory is CUDA's allocator peak on a GPU, else the
process's peak RSS (``mem_kind`` says which).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsam2_hpc.engine.benchmark import emit, memory_figures, positive_int, timed
from medsam2_hpc.engine.runtime import pick_device
from medsam2_hpc.errors import guarded

__all__ = ["MODES", "build_parser", "main"]


def _synthetic_batch(batch: int, image_size: int, out_size: int, rng: np.random.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(rng.random((batch, 3, image_size, image_size), dtype=np.float32))
    yy, xx = np.mgrid[:out_size, :out_size]
    masks = np.zeros((batch, 1, out_size, out_size), dtype=np.float32)
    for b in range(batch):
        cy, cx = rng.uniform(0.3, 0.7, 2) * out_size
        masks[b, 0] = (yy - cy) ** 2 + (xx - cx) ** 2 <= (0.15 * out_size) ** 2
    return images, torch.from_numpy(masks)


def bench_train2d(args: argparse.Namespace) -> dict[str, Any]:
    """Training steps of the 2D trainer's forward/backward/optimizer path (sam2_2d.Predictor)."""
    from medsam2_hpc.models.sam2 import build_sam2_model, set_trainable
    from medsam2_hpc.trainers.sam2.common import optimizer_for, point_prompts, upsample
    from medsam2_hpc.trainers.sam2.train_2d import Predictor, Sam2Config2D

    device = pick_device(args.device)
    cfg = Sam2Config2D(image_size=args.image_size, out_size=args.image_size, batch_size=args.batch,
                       amp=args.amp, memory_bank_size=args.memory_bank_size, trainable=args.trainable)
    model = build_sam2_model(args.config, args.ckpt or "none", image_size=args.image_size, device=device,
                             allow_random=args.ckpt is None)
    trainable = set_trainable(model, cfg.trainable)
    model.train()
    optimizer = optimizer_for(model, cfg)
    loss_fn = cfg.train_loss()
    predictor = Predictor(model, cfg, 1, device)
    rng = np.random.default_rng(0)
    images, masks = _synthetic_batch(args.batch, args.image_size, args.image_size, rng)
    # prompts are made once: the trainer makes them in DataLoader workers, off the timed path
    coords, labels, present = point_prompts(masks[:, 0], "click", rng, args.image_size)
    batch = {"image": images, "coords": coords[:, None], "labels": labels[:, None],
             "present": present[:, None]}

    def step() -> float:  # as trainers/sam2/train_2d._train_epoch
        prop = predictor.propose(batch)
        keep = prop.present.flatten()
        loss = loss_fn(upsample(prop.masks[keep], cfg.out_size), prop.ious[keep], prop.obj[keep, 0],
                       masks[:, 0].to(device)[keep])["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        return float(loss.detach())

    seconds, losses = timed(step, args.steps, args.warmup, device)
    return {
        "config": args.config, "image_size": args.image_size, "batch": args.batch, "steps": args.steps,
        "warmup": args.warmup, "amp": args.amp if device.type == "cuda" else "none",
        "memory_bank_size": args.memory_bank_size, "trainable": args.trainable,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "trainable_m": trainable / 1e6,
        "seconds": seconds, "step_seconds": seconds / args.steps,
        "images_per_s": args.batch * args.steps / seconds, "final_loss": losses[-1],
        **memory_figures(device),
    }


MODES: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {"train2d": bench_train2d}


def _load_3d() -> Any:
    """The 3D modes live beside this file (benchmarks/ is not a package)."""
    import importlib.util

    path = Path(__file__).with_name("_bench_sam2_3d.py")
    spec = importlib.util.spec_from_file_location("_bench_sam2_3d", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_BENCH_3D = _load_3d()
MODES.update(_BENCH_3D.MODES_3D)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench_sam2.py", description=__doc__.splitlines()[0])
    p.add_argument("--mode", required=True, choices=sorted(MODES))
    p.add_argument("--config", default="sam2_hiera_t", help="sam2_hiera_t|s|b+|l or sam2.1_hiera_*")
    p.add_argument("--ckpt", default=None, help="weights (default: random; speed does not depend on them)")
    p.add_argument("--image-size", type=positive_int, default=1024)
    p.add_argument("--batch", type=positive_int, default=1)
    p.add_argument("--steps", type=positive_int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "none"])
    p.add_argument("--device", default="auto")
    p.add_argument("--memory-bank-size", type=int, default=0)
    p.add_argument("--trainable", default="all-but-encoder")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    _BENCH_3D.add_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        emit(args.mode, MODES[args.mode](args), pick_device(args.device), args.out)
        return 0

    return guarded(run, "bench_sam2.py")


if __name__ == "__main__":
    sys.exit(main())
