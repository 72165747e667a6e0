"""Cooperative stop requests: Slurm's pre-timeout/preemption signal ends the epoch early.

The signal handler only sets a flag; the training loop checks it between batches and
leaves with :class:`StopRequested`, keeping ``last.pt`` from the last finished epoch.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["StopRequested", "request_stop", "stop_requested", "clear_stop", "install_handlers"]

_STOP = threading.Event()


class StopRequested(Exception):
    """Raised inside the loop when a stop was requested; the run is resumable."""


def request_stop(*_: object) -> None:
    _STOP.set()


def stop_requested() -> bool:
    return _STOP.is_set()


def clear_stop() -> None:
    _STOP.clear()


def install_handlers(signals: tuple[int, ...] = (signal.SIGUSR2, signal.SIGTERM)) -> None:
    """For runs outside submitit (plain sbatch): turn these signals into a stop request."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in signals:
        signal.signal(sig, request_stop)
