"""Data layer shared by every model: REFUGE (2D), BTCV (3D), prompts, synthetic data.

The two datasets are registered here (medsam2_hpc.registry); submodules are imported by name
(``from medsam2_hpc.data import btcv``) so that importing the package stays cheap; see
docs/DEVELOPING.md ("Data interface") for the contract.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import InputError
from ..options import look_up
from ..precheck import once
from ..registry import DatasetKind, dataset_kind, dataset_names, load_entry, register_dataset
from .organs import ORGANS

__all__ = ["check_dataset", "check_data", "decode_first"]

register_dataset(DatasetKind(
    name="refuge", classes=("cup", "disc"), default_path="./data/REFUGE",
    loader="medsam2_hpc.data.refuge:RefugeDataset", layouts=("multirater", "challenge"),
    synthetic="medsam2_hpc.data.synthetic:make_refuge", summary="medsam2_hpc.data.summary:refuge",
    splits=("train", "val", "test"), demo={"layout": "multirater", "n_train": 24, "n_test": 4, "size": 64},
    volumetric=False, sections=("refuge",)))
register_dataset(DatasetKind(
    name="btcv", classes=tuple(ORGANS[k] for k in sorted(ORGANS)), default_path="./data/btcv",
    loader="medsam2_hpc.data.btcv:training_volumes",
    layouts=("slices", "nifti"), synthetic="medsam2_hpc.data.synthetic:make_btcv",
    summary="medsam2_hpc.data.summary:btcv", splits=("train", "val", "test"),
    demo={"layout": "nifti", "n_train": 8, "n_test": 2, "size": 64, "depth": 12, "body_hu": -100.0,
          "organ_radius": (0.1, 0.15)},
    volumetric=True, sections=("btcv_organs", "btcv_per_slice")))


def check_dataset(name: str, flag: str = "-dataset") -> str:
    """Normalise a dataset name ("REFUGE", "btcv", ...) or raise InputError naming ``flag``."""
    return look_up(str(name).lower(), dataset_names(), flag)


def decode_first(splits: Mapping[str, Any], root: Any) -> None:
    """Decode the first item of every split, so a file that cannot be read fails before a run
    directory exists (listing files proves little: a truncated image lists like a good one)."""
    for split, items in splits.items():
        if not len(items):
            raise InputError(f"{root}: no cases in the {split} split")
        getattr(items, "decode", items.__getitem__)(0)  # the files alone where a loader can (no tensors)


def check_data(task: Any, classes: list[str] | None = None, split_file: str | None = None) -> None:
    """Pre-flight before anything is written: layout found, no split empty, and the first item of
    each split decoded (a corrupt file fails now, not after the run directory is made).

    Once per dataset (not per task) while a study is checked before queueing; imports no torch.
    """
    key = ("data", task.dataset, task.data_path, tuple(classes or ()), split_file)
    once(key, lambda: _check_data(task, classes, split_file))


def _check_data(task: Any, classes: list[str] | None, split_file: str | None) -> None:
    kind = dataset_kind(task.dataset)
    load = load_entry(kind.loader)
    if kind.volumetric:
        splits = load(task.data_path, split_file)
    else:
        splits = {split: load(task.data_path, split, image_size=64, out_size=64, classes=classes,
                              split_file=split_file)
                  for split in kind.splits}
    decode_first(splits, task.data_path)
