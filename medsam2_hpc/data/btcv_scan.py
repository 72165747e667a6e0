"""Find the BTCV cases of a split on disk, in either layout, before anything is decoded.

Preprocessed slices (Medical-SAM2's copy); ``root`` is the btcv directory or its parent::

    {Training,Test}/image/<case>/<i>.jpg     one axial slice per file, i = 0, 1, ... (numeric order)
    {Training,Test}/mask/<case>/<i>.npy      integer label map (H,W) of the same slice

Split mapping: test = Test (its labelled cases); train and val = Training, val carved from it
(:func:`medsam2_hpc.data.splits.carve_val`); unlabelled = the Test cases without masks.

Raw NIfTI (the BTCV challenge files, MONAI's split file)::

    imagesTr/img00XX.nii.gz, labelsTr/label00XX.nii.gz, imagesTs/img00XX.nii.gz (unlabelled)
    dataset_0.json   {"training": [{"image": "imagesTr/img0001.nii.gz", "label": "labelsTr/..."}],
                      "validation": [...],
                      "test": ["imagesTs/img0061.nii.gz", ...]}   (paths relative to the json's directory)

Split mapping: test = "validation" (the labelled held-out scans published numbers use);
train and val = "training", val carved from it (``splits.carve_val``: 4 of the real 24);
unlabelled = the json's "test" list (strings, or ``{"image": ...}`` objects with an optional
"label"; the real release's imagesTs/ scans have no labels). Without dataset_0.json the
images in imagesTr/ are paired with labelsTr/ (``img0001`` <-> ``label0001``, or the same file
name): the last 20 % (at least one) of the sorted cases are test, val is carved from the rest;
a log line says so. A bare folder of scans (``*.nii.gz`` / ``*.nii`` directly under ``root``,
e.g. ``imagesTs/`` itself) is one unlabelled set that every split lists in full.

A split file (``splits.read_split_file``) replaces the mapping of train, val and test: its
case ids are looked up among the training and test sources together.

Labels: with ``labels="required"`` (training, scoring, ground-truth prompts) a case without
labels is an InputError naming its file. With ``labels="optional"`` (prediction from a
prompt file) such a case gets ``CaseFiles.labels == ()``: an image case folder without its
mask folder, a json entry without "label", an image without a labelsTr/ counterpart. A label
the data names but that is absent or incomplete (a json "label" path, part of a mask folder)
stays an error either way: that is a broken copy, not an unlabelled scan.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from . import splits

__all__ = ["CaseFiles", "detect_layout", "scan_cases", "SPLITS", "LABEL_POLICIES"]

log = logging.getLogger(__name__)

SPLITS = (*splits.SPLITS, "unlabelled")
LABEL_POLICIES = ("required", "optional")
_SLICE_DIRS = {"train": "Training", "test": "Test", "unlabelled": "Test"}
_JSON_KEYS = {"train": "training", "test": "validation"}
SPLIT_FILE = "dataset_0.json"
_NIFTI_GLOBS = ("*.nii.gz", "*.nii")


@dataclass(frozen=True)
class CaseFiles:
    """Where one case lives: slice files (slices layout) or one image/label file each (NIfTI).

    ``labels`` is empty for an unlabelled case (only produced with ``labels="optional"``).
    """

    case: str
    images: tuple[Path, ...]
    labels: tuple[Path, ...]


def _bare_scans(base: Path) -> list[Path]:
    return sorted({p for pattern in _NIFTI_GLOBS for p in base.glob(pattern) if p.is_file()})


def detect_layout(root: str | Path) -> tuple[str, Path]:
    """Return ("slices"|"nifti", base directory); InputError when ``root`` holds neither."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: BTCV data directory does not exist")
    for base in (root, root / "btcv", root / "BTCV"):
        if (base / "Training").is_dir() or (base / "Test").is_dir():
            return "slices", base
        if (base / "imagesTr").is_dir() or (base / SPLIT_FILE).is_file() or _bare_scans(base):
            return "nifti", base
    raise InputError(f"{root}: no BTCV layout found (expected Training/ and Test/ with image/ and "
                     f"mask/, or imagesTr/ + labelsTr/ [+ {SPLIT_FILE}], or a folder of .nii.gz scans)")


def scan_cases(layout: str, base: Path, split: str, labels: str = "required",
               split_file: str | Path | None = None) -> list[CaseFiles]:
    """The cases of ``split``; ``labels`` is "required" or "optional" (module docstring)."""
    required = labels == "required"
    if layout == "nifti" and not (base / SPLIT_FILE).is_file() and not (base / "imagesTr").is_dir():
        cases = _scan_nifti(base, split, required)  # a bare folder: every split is all of it
    elif split_file is not None and split != "unlabelled":
        pool = {c.case: c for source in ("train", "test") for c in _source(layout, base, source, required)}
        cases = [pool[case] for case in splits.assign(list(pool), split_file, split)]
    elif split in ("train", "val"):
        source = _source(layout, base, "train", required)
        chosen = set(splits.carve_val([c.case for c in source], f"{base} (BTCV training cases)")[split])
        cases = [c for c in source if c.case in chosen]
    else:
        cases = _source(layout, base, split, required)
    if not cases:
        raise InputError(f"{base}: BTCV split {split!r} has no cases")
    return cases


def _source(layout: str, base: Path, source: str, required: bool) -> list[CaseFiles]:
    """The cases of one part of the release: "train", "test" or "unlabelled" (module docstring)."""
    if layout == "slices":
        cases = _scan_slices(base, source, required and source != "unlabelled")
        return [c for c in cases if not c.labels] if source == "unlabelled" else cases
    return _scan_nifti(base, source, required)


def _slice_index(path: Path) -> int:
    try:
        return int(path.stem)
    except ValueError:
        raise InputError(f"{path}: slice file name must be its integer index (0.jpg, 1.jpg, ...)") from None


def _scan_slices(base: Path, split: str, required: bool) -> list[CaseFiles]:
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
            if required:
                raise InputError(f"{case_dir}: case {case_dir.name} has images but no masks "
                                 f"({mask_dir} missing)")
            cases.append(CaseFiles(case_dir.name, tuple(images), ()))
            continue
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


def _scan_nifti(base: Path, split: str, required: bool) -> list[CaseFiles]:
    split_file = base / SPLIT_FILE
    if split_file.is_file():
        pairs = _pairs_from_json(split_file, split, required)
    elif (base / "imagesTr").is_dir():
        pairs = _generated_split(base, split, required)
    else:
        pairs = [(scan, None) for scan in _bare_scans(base)]
    cases = []
    for image, label in pairs:
        if not image.is_file():
            raise InputError(f"{image}: image file missing")
        if label is not None and not label.is_file():
            raise InputError(f"{label}: label file missing")
        if label is None and required:
            raise InputError(f"{image}: case {_case_id(image)} has no label file (an unlabelled scan: "
                             "predict it with a prompt file; training and scoring need labels)")
        cases.append(CaseFiles(_case_id(image), (image,), () if label is None else (label,)))
    return cases


def _read_split_file(split_file: Path) -> Any:
    try:
        return json.loads(split_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{split_file}: not a readable JSON split file ({exc})") from None


def _pairs_from_json(split_file: Path, split: str, required: bool) -> list[tuple[Path, Path | None]]:
    data = _read_split_file(split_file)
    if not isinstance(data, dict):
        raise InputError(f"{split_file}: expected a JSON object with 'training' and 'validation' lists")
    if split == "unlabelled":
        test = data.get("test")
        if not isinstance(test, list):
            raise InputError(f"{split_file}: key 'test' must be a list of image paths or {{image}} objects "
                             "(the unlabelled scans)")
        return [_test_entry(split_file, i, entry) for i, entry in enumerate(test)]
    key = _JSON_KEYS[split]
    entries = data.get(key)
    if not isinstance(entries, list):
        raise InputError(f"{split_file}: key {key!r} (a list of {{image, label}}) is missing")
    pairs: list[tuple[Path, Path | None]] = []
    for i, entry in enumerate(entries):
        image = entry.get("image") if isinstance(entry, dict) else None
        label = entry.get("label") if isinstance(entry, dict) else None
        if not isinstance(image, str) or not (isinstance(label, str) or (label is None and not required)):
            raise InputError(f"{split_file}: {key}[{i}] needs string keys 'image' and 'label'")
        pairs.append((split_file.parent / image, None if label is None else split_file.parent / label))
    return pairs


def _test_entry(split_file: Path, i: int, entry: Any) -> tuple[Path, Path | None]:
    """One item of the json's "test" list: "imagesTs/x.nii.gz" or {"image": ..., "label"?: ...}."""
    image, label = (entry, None) if isinstance(entry, str) else (
        (entry.get("image"), entry.get("label")) if isinstance(entry, dict) else (None, None))
    if not isinstance(image, str) or not isinstance(label, (str, type(None))):
        raise InputError(f"{split_file}: test[{i}] must be an image path or an object with string "
                         "'image' (and optional 'label')")
    return split_file.parent / image, None if label is None else split_file.parent / label


def _generated_split(base: Path, split: str, required: bool) -> list[tuple[Path, Path | None]]:
    images_dir, labels_dir = base / "imagesTr", base / "labelsTr"
    images = sorted(images_dir.glob("*.nii*")) if images_dir.is_dir() else []
    if not images:
        raise InputError(f"{images_dir}: no .nii/.nii.gz images (missing or empty directory)")
    pairs = []
    for image in images:
        candidates = [labels_dir / image.name.replace("img", "label", 1), labels_dir / image.name]
        label = next((c for c in candidates if c.is_file()), None)
        if label is None and required:
            raise InputError(f"{image}: case has an image but no label in {labels_dir}")
        pairs.append((image, label))
    n_test = max(1, round(0.2 * len(pairs))) if len(pairs) > 1 else 0
    if split == "unlabelled":
        raise InputError(f"{base}: no {SPLIT_FILE}, so no list of unlabelled scans")
    log.warning("%s: no %s; generated split: %d train + val, %d test (last cases in sorted order)",
                base, SPLIT_FILE, len(pairs) - n_test, n_test)
    return pairs[: len(pairs) - n_test] if split == "train" else pairs[len(pairs) - n_test:]
