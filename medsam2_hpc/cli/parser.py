"""The ArgumentParser of every front end: a bad flag is one line and a hint, not a usage dump.

argparse prints the whole usage (4-8 lines) before its error; users read the last line only, and
``--help`` is one flag away. Flag values that reach a path or a script are refused with control
characters in them (``prog: error: --name: control character ...``), before anything is parsed.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from medsam2_hpc.errors import EXIT_BAD_INPUT, InputError
from medsam2_hpc.inputs import control_chars, safe_name

__all__ = ["Parser", "positive_int", "nonneg_int", "positive_float", "seed_int", "name_arg"]


class Parser(argparse.ArgumentParser):
    """``prog: error: <what>`` and ``prog: run 'prog --help' for the flags``; exit 2.

    Abbreviated flags are refused: ``-out`` silently meaning ``-output_dir`` (or ``--epoch``
    meaning ``--epochs``) is how a typo runs for hours.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def _get_option_tuples(self, option_string: str) -> list:
        # Python 3.11 still expands single-dash prefixes ('-out' -> '-output_dir') with allow_abbrev
        # off; keep only a one-letter flag glued to its value ('-b4' -> '-b 4').
        found = super()._get_option_tuples(option_string)
        return found if self.allow_abbrev else [t for t in found if len(t[1]) == 2]

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        print(f"{self.prog}: run '{self.prog} --help' for the flags", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        argv = list(sys.argv[1:] if args is None else args)
        for arg in argv:
            if (bad := control_chars(str(arg))) is not None:
                self.error(f"argument {str(arg)[:40]!r}: control character {bad!r} is not allowed")
        return super().parse_args(argv, namespace)


def _typed(cast: Callable[[str], Any], check: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value
    return parse


positive_int = _typed(int, lambda v: v >= 1, "an integer >= 1")
nonneg_int = _typed(int, lambda v: v >= 0, "an integer >= 0")
seed_int = _typed(int, lambda v: 0 <= v < 2**32, "a seed (an integer in [0, 2**32))")
positive_float = _typed(float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")


def name_arg(text: str) -> str:
    """A flag value that becomes a directory name (inputs.safe_name)."""
    try:
        return safe_name(text, "name")
    except InputError:
        raise argparse.ArgumentTypeError(f"{text[:60]!r} is not a safe directory name (letters, digits, "
                                         "'_', '.', '+', '-'; no '/' or '..')") from None
