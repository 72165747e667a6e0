"""What trainers share: the epoch loop, checkpoints, precision, stop requests."""

from .checkpoint import load_checkpoint, save_checkpoint
from .loop import LoopConfig, LoopState, TrainLoop, progress
from .runtime import autocast, count_params_m, peak_memory_gb, pick_device, seed_everything
from .stop import StopRequested, install_handlers, request_stop, stop_requested

__all__ = [
    "LoopConfig", "LoopState", "TrainLoop", "progress", "save_checkpoint", "load_checkpoint",
    "autocast", "count_params_m", "peak_memory_gb", "pick_device", "seed_everything",
    "StopRequested", "install_handlers", "request_stop", "stop_requested",
]
