#!/usr/bin/env python
"""Fine-tune SAM2 on 2D images with the Medical-SAM2 command users know.

    python train_2d.py -net sam2 -exp_name REFUGE_MedSAM2 -vis 1 -sam_ckpt ./checkpoints/sam2_hiera_small.pt
        -sam_config sam2_hiera_s -image_size 1024 -out_size 1024 -b 4 -val_freq 1 -dataset REFUGE
        -data_path ./data/REFUGE [-epoch 100 -seed 0 -amp bf16 -prompt click -loss bce -resume]

Output: logs/<exp_name>_<timestamp>/ (run directory contract + Model/best_dice_epoch.pth).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from medsam2_hpc.cli.compat.common import common_hparams, common_parser, compat_task, nonneg_int, positive_int
from medsam2_hpc.errors import guarded
from medsam2_hpc.registry import model_kind


def run(argv: Sequence[str] | None) -> int:
    kind = model_kind("sam2-2d")
    parser = common_parser("train_2d.py", __doc__.splitlines()[1], datasets=kind.datasets,
                           default_prompt=kind.default_prompt)
    parser.add_argument("-out_size", type=positive_int, default=1024, help="side at which masks are scored")
    parser.add_argument("-memory_bank_size", type=nonneg_int, default=16,
                        help="memories of earlier images per class; 0 = off")
    args = parser.parse_args(argv)
    hparams = common_hparams(args)
    hparams.update(out_size=args.out_size, memory_bank_size=args.memory_bank_size)
    task = compat_task(args, kind.name, hparams)

    from medsam2_hpc.runner import run_in_foreground

    return run_in_foreground(task, "train_2d")


def main(argv: Sequence[str] | None = None) -> int:
    return guarded(lambda: run(argv), "train_2d.py")


if __name__ == "__main__":
    sys.exit(main())
