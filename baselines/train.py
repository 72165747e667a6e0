"""Train a baseline locally: ``python baselines/train.py --model resnet|yolo [--variant V] ...``.

The same flags, Task and run directory as ``python train.py`` (medsam2_hpc.cli.train),
restricted to the two baselines. See baselines/README.md.
"""

from __future__ import annotations

import sys

from medsam2_hpc.cli.train import main

if __name__ == "__main__":
    sys.exit(main(models=("resnet", "yolo"), prog="baselines/train.py"))
