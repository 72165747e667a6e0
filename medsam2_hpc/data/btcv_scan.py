"""Find the BTCV cases of a split on disk, in either layout, before anything is decoded.

Preprocessed slices (Medical-SAM2's copy); ``root`` is the btcv directory or its parent::

    {Training,Test}/image/<case>/<i>.jpg     one axial slice per file, i = 0, 1, ... (numeric order)
    {Training,Test}/mask/<case>/<i>.npy      integer label map (H,W) of the same slice

Split mapping: train = Training, val = Test, test = Test (the copy has no third set).

Raw NIfTI (the BTCV challenge files, MONAI's split file)::

    imagesTr/img00XX.nii.gz, labelsTr/label00XX.nii.gz
    dataset_0.json   {"training": [{"image": "imagesTr/img0001.nii.gz", "label": "labelsTr/..."}],
                      "validation": [...]}   (paths relative to the json's directory)

Split mapping: train = "training", val = test = "validation". Without dataset_0.json the
images in imagesTr/ are paired with labelsTr/ (``img0001`` <-> ``label0001``, or the same
file name) and a deterministic split is generated: the last 20 % (at least one) of the
sorted cases are val/test, the rest train; a log line says so.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

__all__ = ["CaseFiles", "detect_layout", "scan_cases", "SPLITS"]

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_SLICE_DIRS = {"train": "Training", "val": "Test", "test": "Test"}
_JSON_KEYS = {"train": "training", "val": "validation", "test": "validation"}
SPLIT_FILE = "dataset_0.json"


@dataclass(frozen=True)
class CaseFiles:
    """Where one case lives: slice files (slices layout) or one image/label file each (NIfTI)."""

    case: str
    images: tuple[Path, ...]
    labels: tuple[Path, ...]


def detect_layout(root: str | Path) -> tuple[str, Path]:
    """Return ("slices"|"nifti", base directory); InputError when ``root`` holds neither."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: BTCV data directory does not exist")
    for base in (root, root / "btcv", root / "BTCV"):
        if (base / "Training").is_dir() or (base / "Test").is_dir():
            return "slices", base
        if (base / "imagesTr").is_dir() or (base / SPLIT_FILE).is_file():
            return "nifti", base
    raise InputError(f"{root}: no BTCV layout found (expected Training/ and Test/ with image/ and "
                     f"mask/, or imagesTr/ + labelsTr/ [+ {SPLIT_FILE}])")


def scan_cases(layout: str, base: Path, split: str) -> list[CaseFiles]:
    cases = _scan_slices(base, split) if layout == "slices" else _scan_nifti(base, split)
    if not cases:
        raise InputError(f"{base}: BTCV split {split!r} has no cases")
    return cases


def _slice_index(path: Path) -> int:
    try:
        return int(path.stem)
    except ValueError:
        raise InputError(f"{path}: slice file name must be its integer index (0.jpg, 1.jpg, ...)") from None


def _scan_slices(base: Path, split: str) -> list[CaseFiles]:
    top = base / _SLICE_DIRS[split]
    image_root, mask_root = top / "image", top / "mask"
    case_dirs = sorted(p for p in image_root.iterdir() if p.is_dir()) if image_root.is_dir() else []
    if not case_dirs:
        raise InputError(f"{image_root}: no BTCV cases (missing or empty directory)")
    cases = []
    for case_dir in case_dirs:
        images = sorted(case_dir.glob("*.jpg"), key=_slice_index)
        if not images:
            raise InputError(f"{case_dir}: case {case_dir.name} has no .jpg slices")
        mask_dir = mask_root / case_dir.name
        if not mask_dir.is_dir():
            raise InputError(f"{case_dir}: case {case_dir.name} has images but no masks ({mask_dir} missing)")
        labels = tuple(mask_dir / f"{p.stem}.npy" for p in images)
        missing = [p for p in labels if not p.is_file()]
        if missing:
            raise InputError(f"{missing[0]}: mask missing for slice {missing[0].stem} "
                             f"of case {case_dir.name}")
        cases.append(CaseFiles(case_dir.name, tuple(images), labels))
    return cases


def _case_id(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else path.stem


def _scan_nifti(base: Path, split: str) -> list[CaseFiles]:
    split_file = base / SPLIT_FILE
    pairs = _pairs_from_json(split_file, split) if split_file.is_file() else _generated_split(base, split)
    cases = []
    for image, label in pairs:
        for path, what in ((image, "image"), (label, "label")):
            if not path.is_file():
                raise InputError(f"{path}: {what} file missing")
        cases.append(CaseFiles(_case_id(image), (image,), (label,)))
    return cases


def _pairs_from_json(split_file: Path, split: str) -> list[tuple[Path, Path]]:
    try:
        data = json.loads(split_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{split_file}: not a readable JSON split file ({exc})") from None
    key = _JSON_KEYS[split]
    entries = data.get(key) if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise InputError(f"{split_file}: key {key!r} (a list of {{image, label}}) is missing")
    pairs = []
    for i, entry in enumerate(entries):
        if not (isinstance(entry, dict) and isinstance(entry.get("image"), str)
                and isinstance(entry.get("label"), str)):
            raise InputError(f"{split_file}: {key}[{i}] needs string keys 'image' and 'label'")
        pairs.append((split_file.parent / entry["image"], split_file.parent / entry["label"]))
    return pairs


def _generated_split(base: Path, split: str) -> list[tuple[Path, Path]]:
    images_dir, labels_dir = base / "imagesTr", base / "labelsTr"
    images = sorted(images_dir.glob("*.nii*")) if images_dir.is_dir() else []
    if not images:
        raise InputError(f"{images_dir}: no .nii/.nii.gz images (missing or empty directory)")
    pairs = []
    for image in images:
        candidates = [labels_dir / image.name.replace("img", "label", 1), labels_dir / image.name]
        label = next((c for c in candidates if c.is_file()), None)
        if label is None:
            raise InputError(f"{image}: case has an image but no label in {labels_dir}")
        pairs.append((image, label))
    n_val = max(1, round(0.2 * len(pairs))) if len(pairs) > 1 else 0
    log.warning("%s: no %s; generated split: %d train, %d val/test (last cases in sorted order)",
                base, SPLIT_FILE, len(pairs) - n_val, n_val)
    return pairs[: len(pairs) - n_val] if split == "train" else pairs[len(pairs) - n_val:]
