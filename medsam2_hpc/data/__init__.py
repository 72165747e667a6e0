"""Data layer shared by every model: REFUGE (2D), BTCV (3D), prompts, synthetic data.

Submodules are imported by name (``from medsam2_hpc.data import btcv``) so that importing
the package stays cheap; see docs/DEVELOPING.md ("Data interface") for the contract.
"""

from __future__ import annotations

from ..options import look_up

__all__ = ["DATASETS", "check_dataset"]

DATASETS = ("refuge", "btcv")


def check_dataset(name: str, flag: str = "-dataset") -> str:
    """Normalise a dataset name ("REFUGE", "btcv", ...) or raise InputError naming ``flag``."""
    return look_up(str(name).lower(), DATASETS, flag)
