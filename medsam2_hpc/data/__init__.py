"""Data layer shared by every model: REFUGE (2D), BTCV (3D), prompts, synthetic data.

Submodules are imported by name (``from medsam2_hpc.data import btcv``) so that importing
the package stays cheap; see docs/DEVELOPING.md ("Data interface") for the contract.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import InputError
from ..options import look_up

__all__ = ["DATASETS", "check_dataset", "decode_first"]

DATASETS = ("refuge", "btcv")


def check_dataset(name: str, flag: str = "-dataset") -> str:
    """Normalise a dataset name ("REFUGE", "btcv", ...) or raise InputError naming ``flag``."""
    return look_up(str(name).lower(), DATASETS, flag)


def decode_first(splits: Mapping[str, Any], root: Any) -> None:
    """Decode the first item of every split, so a file that cannot be read fails before a run
    directory exists (listing files proves little: a truncated image lists like a good one)."""
    for split, items in splits.items():
        if not len(items):
            raise InputError(f"{root}: no cases in the {split} split")
        items[0]
