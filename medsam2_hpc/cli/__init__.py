"""``medsam2-hpc``: argparse front end; each subcommand is a module of this package.

Three layers (nnU-Net's run_training idea): argparse here -> a plain function in the
command module -> the builders it calls. Exit codes: 0 ok, 2 bad input, 1 anything else.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import guarded
from .parser import Parser

__all__ = ["main", "build_parser"]

# Modules of this package; each defines register(subparsers).
COMMANDS = ("train", "data", "submit", "container", "collect", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="medsam2-hpc",
        description="Fine-tune SAM2 for medical segmentation on Slurm clusters and compare "
                    "it with ResNet and YOLO baselines.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"medsam2_hpc.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return guarded(lambda: args.func(args), "medsam2-hpc")


if __name__ == "__main__":
    sys.exit(main())
