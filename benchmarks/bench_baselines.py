#!/usr/bin/env python
"""ResNet and YOLO11 baseline throughput (train and predict) and peak memory, as one JSON object.

    python benchmarks/bench_baselines.py --mode resnet-train --variant resnet50 --image-size 512 --batch 8
    python benchmarks/bench_baselines.py --mode yolo-train --variant yolo11l-seg --image-size 640 --batch 16

Same record format as bench_sam2.py (mode, device, gpu, torch, ..., images_per_s, peak_mem_gb,
mem_kind). ResNet modes time the trainer's step on random tensors (BTCV-like: 14-class softmax,
Dice + CE). YOLO modes need Ultralytics' data pipeline, so they train on a synthetic REFUGE set
exported exactly as the trainer does, and time only the training batches of the epochs after
the first (``--warmup`` epochs are dropped); predict times ``model.predict`` on batches of arrays.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsam2_hpc.engine.benchmark import emit, memory_figures, positive_int, timed
from medsam2_hpc.engine.runtime import autocast, pick_device, reset_peak_memory
from medsam2_hpc.errors import guarded

__all__ = ["MODES", "build_parser", "main"]

NUM_CLASSES = 14  # BTCV: background + 13 organs


def _resnet(args: argparse.Namespace, train: bool) -> dict[str, Any]:
    from monai.losses import DiceCELoss

    from medsam2_hpc.trainers.baselines.resnet_net import build_network

    device = pick_device(args.device)
    amp = args.amp if device.type == "cuda" else "none"
    model = build_network(args.variant or "resnet50", NUM_CLASSES).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch, 3, args.image_size, args.image_size, generator=gen).to(device)
    labels = torch.randint(0, NUM_CLASSES, (args.batch, 1, args.image_size, args.image_size), generator=gen)
    labels = labels.to(device)

    def step() -> None:
        with autocast(device, amp):
            loss = loss_fn(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def infer() -> None:
        with autocast(device, amp):
            torch.softmax(model(images).float(), 1).argmax(1)

    model.train(train)
    seconds, _ = timed(step if train else infer, args.steps, args.warmup, device)
    return {"variant": args.variant or "resnet50", "image_size": args.image_size, "batch": args.batch,
            "steps": args.steps, "warmup": args.warmup, "amp": amp,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "seconds": seconds,
            "images_per_s": args.batch * args.steps / seconds, **memory_figures(device)}


def _yolo_dataset(root: Path, image_size: int, n_images: int) -> Path:
    from medsam2_hpc.data import synthetic
    from medsam2_hpc.trainers.baselines.data import BaselineData, to_uint8_rgb
    from medsam2_hpc.trainers.baselines.yolo_labels import export_dataset

    src = synthetic.make_refuge(root / "refuge", "challenge", n_train=n_images, n_test=2, size=image_size)
    data = BaselineData("refuge", str(src), image_size)
    return export_dataset(root / "yolo_data", {"train": data.train, "val": data.val}, data.class_names,
                          data.multilabel, to_uint8_rgb)


def _yolo(args: argparse.Namespace, train: bool) -> dict[str, Any]:
    from medsam2_hpc.trainers.baselines.yolo import offline_environment

    device = pick_device(args.device)
    variant = args.variant or "yolo11l-seg"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        offline_environment(root / "yolo_config")
        from ultralytics import YOLO

        model = YOLO(f"{variant}.yaml")
        params = sum(p.numel() for p in model.model.parameters()) / 1e6  # before predict fuses conv+bn
        n_images = args.batch * args.steps
        dev = str(device.index or 0) if device.type == "cuda" else "cpu"
        if train:
            data_yaml = _yolo_dataset(root, args.image_size, n_images)
            marks: list[tuple[float, float]] = []
            model.add_callback("on_train_epoch_start", lambda _t: marks.append((time.perf_counter(), 0.0)))
            model.add_callback("on_train_epoch_end",
                               lambda _t: marks.append((marks.pop()[0], time.perf_counter())))
            reset_peak_memory(device)
            model.train(data=str(data_yaml), epochs=args.warmup + 1, imgsz=args.image_size, batch=args.batch,
                        workers=args.workers, device=dev, project=str(root / "yolo"), name="train",
                        pretrained=False, plots=False, val=False, verbose=False,
                        amp="bf16" if args.amp == "bf16" and device.type == "cuda" else False)
            seconds = sum(end - start for start, end in marks[args.warmup:])
            epochs = len(marks) - args.warmup
        else:
            rng = np.random.default_rng(0)
            batch = [rng.integers(0, 255, (args.image_size, args.image_size, 3), dtype=np.uint8)
                     for _ in range(args.batch)]

            def infer() -> None:
                model.predict(batch, imgsz=args.image_size, retina_masks=True, verbose=False, device=dev,
                              half=False)

            seconds, _ = timed(infer, args.steps, args.warmup, device)
            epochs = 1
    return {"variant": variant, "image_size": args.image_size, "batch": args.batch, "steps": args.steps,
            "warmup": args.warmup, "amp": args.amp if device.type == "cuda" else "none", "params_m": params,
            "seconds": seconds, "images_per_s": n_images * epochs / seconds, **memory_figures(device)}


MODES: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "resnet-train": lambda a: _resnet(a, True), "resnet-predict": lambda a: _resnet(a, False),
    "yolo-train": lambda a: _yolo(a, True), "yolo-predict": lambda a: _yolo(a, False),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench_baselines.py", description=__doc__.splitlines()[0])
    p.add_argument("--mode", required=True, choices=sorted(MODES))
    p.add_argument("--variant", default=None, help="resnet18|34|50|101 (default resnet50) or "
                   "yolo11n-seg..yolo11x-seg (default yolo11l-seg)")
    p.add_argument("--image-size", type=positive_int, default=512)
    p.add_argument("--batch", type=positive_int, default=4)
    p.add_argument("--steps", type=positive_int, default=10,
                   help="timed steps (YOLO train: batches per epoch)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps (YOLO train: untimed epochs)")
    p.add_argument("--workers", type=int, default=2, help="YOLO dataloader workers")
    p.add_argument("--amp", default="bf16", choices=["bf16", "none"])
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        emit(args.mode, MODES[args.mode](args), pick_device(args.device), args.out, benchmark="baselines")
        return 0

    return guarded(run, "bench_baselines.py")


if __name__ == "__main__":
    sys.exit(main())
