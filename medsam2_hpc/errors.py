"""The one exception type for bad user input.

Every command maps :class:`InputError` to exit code 2 and prints its message as one line,
so the message must name the file, key or flag at fault and say what is wrong with it.
"""

from __future__ import annotations

__all__ = ["InputError", "EXIT_OK", "EXIT_FAILURE", "EXIT_BAD_INPUT", "EXIT_REQUEUE"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
# A run stopped by Slurm's signal and resumable from last.pt (sysexits EX_TEMPFAIL): the host-side
# wrapper (slurm/train_slurm.sh, the launcher's container wrapper) requeues the job on it.
EXIT_REQUEUE = 75


class InputError(Exception):
    """Bad spec, flag, data or checkpoint: reported in one line, exit code 2."""
