"""``medsam2-hpc``: argparse front end; each subcommand lives in ``medsam2_hpc.commands``.

Three layers (nnU-Net's run_training idea): argparse here -> a plain function in the
command module -> the builders it calls. Exit codes: 0 ok, 2 bad input, 1 anything else.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from . import __version__
from .errors import EXIT_BAD_INPUT, EXIT_FAILURE, InputError

__all__ = ["main", "guarded"]

# Modules under medsam2_hpc.commands; each defines register(subparsers).
COMMANDS = ("train", "data", "submit", "container", "collect", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medsam2-hpc",
        description="Fine-tune SAM2 for medical segmentation on Slurm clusters and compare "
                    "it with ResNet and YOLO baselines.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"medsam2_hpc.commands.{name}").register(sub)
    return parser


def guarded(fn: Callable[[], int], prog: str) -> int:
    """Run ``fn``; bad input becomes one line and exit 2, other errors exit 1."""
    try:
        return int(fn() or 0)
    except InputError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return guarded(lambda: args.func(args), "medsam2-hpc")


if __name__ == "__main__":
    sys.exit(main())
