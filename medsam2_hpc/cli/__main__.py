"""``python -m medsam2_hpc.cli``: the same as ``medsam2-hpc``."""

import sys

from . import main

sys.exit(main())
