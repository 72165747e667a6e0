"""The one exception type for bad user input.

Every command maps :class:`InputError` to exit code 2 and prints its message as one line,
so the message must name the file, key or flag at fault and say what is wrong with it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["guarded", "InputError", "SlurmError", "WaitTimeout", "EXIT_OK", "EXIT_FAILURE", "EXIT_BAD_INPUT",
           "EXIT_REQUEUE"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
# A run stopped by Slurm's signal and resumable from last.pt (sysexits EX_TEMPFAIL): the host-side
# wrapper (slurm/train_slurm.sh, the launcher's container wrapper) requeues the job on it.
EXIT_REQUEUE = 75


class InputError(Exception):
    """Bad spec, flag, data or checkpoint: reported in one line, exit code 2."""


class SlurmError(Exception):
    """A Slurm command failed or gave no answer: one line, exit code 1 (never read as "empty")."""


class WaitTimeout(Exception):
    """A wait (``status --watch``, ``submit --wait``, the demo) ran out of time: one line, exit 1."""


def guarded(fn: Callable[[], int], prog: str) -> int:
    """Run ``fn``; bad input becomes one line and exit 2, other errors exit 1."""
    try:
        return int(fn() or 0)
    except InputError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (SlurmError, WaitTimeout) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except Exception as exc:  # the traceback goes to the log, the summary line last
        import traceback

        traceback.print_exc()
        print(f"{prog}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
