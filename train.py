#!/usr/bin/env python
"""Local fallback: `python train.py --model sam2-2d|sam2-3d|resnet|yolo [...]` (no Slurm needed)."""

import sys

from medsam2_hpc.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
