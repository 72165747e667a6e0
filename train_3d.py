#!/usr/bin/env python
"""Medical-SAM2's `python train_3d.py ...`: see medsam2_hpc.cli.compat.train_3d."""

import sys

from medsam2_hpc.cli.compat.train_3d import main

if __name__ == "__main__":
    sys.exit(main())
