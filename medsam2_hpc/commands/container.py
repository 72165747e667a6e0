"""`medsam2-hpc container` (placeholder until its issue lands)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("container", help="not built yet")
    p.set_defaults(func=lambda args: _not_built())


def _not_built() -> int:
    print("medsam2-hpc container: not built yet")
    return 1
