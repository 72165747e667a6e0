#!/usr/bin/env python
"""Fine-tune SAM2 on 3D volumes (BTCV) with the Medical-SAM2 command users know.

    python train_3d.py -net sam2 -exp_name BTCV_MedSAM2 -sam_ckpt ./checkpoints/sam2_hiera_small.pt
        -sam_config sam2_hiera_s -image_size 1024 -val_freq 1 -prompt bbox -prompt_freq 2
        -dataset btcv -data_path ./data/btcv [-video_length 8 -epoch 100 -memory_lr 1e-5 -resume]

Output: logs/<exp_name>_<timestamp>/ (run directory contract + Model/best_dice_epoch.pth).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from medsam2_hpc.cli.compat.common import (
    common_hparams,
    common_parser,
    compat_task,
    positive_float,
    positive_int,
)
from medsam2_hpc.errors import guarded
from medsam2_hpc.registry import model_kind


def run(argv: Sequence[str] | None) -> int:
    kind = model_kind("sam2-3d")
    parser = common_parser("train_3d.py", __doc__.splitlines()[1], datasets=kind.datasets,
                           default_prompt=kind.default_prompt)
    parser.add_argument("-video_length", type=positive_int, default=2, help="slices per training clip")
    parser.add_argument("-prompt_freq", type=positive_int, default=2, help="prompt every k-th slice")
    parser.add_argument("-memory_lr", type=positive_float, default=1e-5,
                        help="learning rate of the memory modules (-lr is the mask decoder's)")
    parser.add_argument("-trainable", default="decoder+memory",
                        help="decoder | decoder+memory | all-but-encoder | all")
    args = parser.parse_args(argv)
    hparams = common_hparams(args)
    hparams.update(video_length=args.video_length, prompt_freq=args.prompt_freq, memory_lr=args.memory_lr,
                   trainable=args.trainable)
    task = compat_task(args, kind.name, hparams)

    from medsam2_hpc.runner import run_in_foreground

    return run_in_foreground(task, "train_3d")


def main(argv: Sequence[str] | None = None) -> int:
    return guarded(lambda: run(argv), "train_3d.py")


if __name__ == "__main__":
    sys.exit(main())
