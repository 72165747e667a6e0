"""The one exception type for bad user input.

Every command maps :class:`InputError` to exit code 2 and prints its message as one line,
so the message must name the file, key or flag at fault and say what is wrong with it.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable

__all__ = ["guarded", "os_input_error", "InputError", "SlurmError", "WaitTimeout", "EXIT_OK", "EXIT_FAILURE",
           "EXIT_BAD_INPUT", "EXIT_REQUEUE"]

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


# What a wrong output path (a file where a directory is meant, no permission, a full or read-only
# disk, a name too long) raises: the user's to fix, so one line and exit 2, not a traceback.
_PATH_ERRNOS = (errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.ENOSPC,
                errno.EROFS, errno.EDQUOT, errno.ENAMETOOLONG, errno.ELOOP)


def os_input_error(exc: BaseException) -> InputError | None:
    """The one-line InputError an expected OS error on a user's path stands for, else None."""
    if not isinstance(exc, OSError) or exc.errno not in _PATH_ERRNOS:
        return None
    target = exc.filename if exc.filename is not None else ""
    return InputError(f"{target}: {exc.strerror or type(exc).__name__}" if target else str(exc.strerror))


def guarded(fn: Callable[[], int], prog: str) -> int:
    """Run ``fn``; bad input (and expected OS errors on paths) becomes one line and exit 2,
    other errors exit 1."""
    try:
        return int(fn() or 0)
    except InputError as exc:
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        if (bad := os_input_error(exc)) is None:
            return _failed(exc, prog)
        print(f"{prog}: error: {bad}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (SlurmError, WaitTimeout) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except Exception as exc:
        return _failed(exc, prog)


def _one_line(exc: BaseException) -> str:
    """A message as one line. A DataLoader worker's error arrives as "Caught X in DataLoader worker
    ... Original Traceback ...": its own message is the traceback's last line, after "Type: "."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if len(lines) > 1 and any(line.startswith("Original Traceback") for line in lines):
        return lines[-1].split(": ", 1)[-1]
    return lines[0]


def _failed(exc: BaseException, prog: str) -> int:
    """The traceback goes to the log, the summary line last."""
    import traceback

    traceback.print_exc()
    print(f"{prog}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    return EXIT_FAILURE
