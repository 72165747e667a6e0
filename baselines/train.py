"""Train a baseline locally: ``python baselines/train.py --model resnet|yolo [--variant V] ...``.

The same flags, Task and run directory as ``python train.py`` (medsam2_hpc.cli.train),
restricted to the baseline model kinds (registry). See baselines/README.md.
"""

from __future__ import annotations

import sys

from medsam2_hpc.cli.train import main
from medsam2_hpc.registry import model_names

if __name__ == "__main__":
    sys.exit(main(models=model_names(baseline=True), prog="baselines/train.py"))
