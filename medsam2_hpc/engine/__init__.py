"""What trainers share: the epoch loop, checkpoints, precision, stop requests.

The names below are imported from their submodule on first use, so that importing one torch-free
part (``engine.stop``, the trainers' checks) does not import torch: ``submit`` checks thousands of
tasks on a login node, and ``import torch`` alone takes seconds there.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
    "LoopConfig": "loop", "LoopState": "loop", "TrainLoop": "loop", "progress": "loop",
    "autocast": "runtime", "count_params_m": "runtime", "peak_memory_gb": "runtime", "pick_device": "runtime",
    "seed_everything": "runtime",
    "StopRequested": "stop", "install_handlers": "stop", "request_stop": "stop", "stop_requested": "stop",
}

__all__ = list(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
