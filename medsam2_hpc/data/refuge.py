"""REFUGE optic cup (and disc) segmentation, in the two layouts users download.

Multi-rater copy (the one Medical-SAM2 uses); ``root`` is the REFUGE directory or its parent::

    REFUGE/Training-400/<name>/<name>_cropped.jpg
    REFUGE/Training-400/<name>/<name>_seg_cup_{1..7}_cropped.jpg   (one mask per rater)
    REFUGE/Training-400/<name>/<name>_seg_disc_{1..7}_cropped.jpg  (optional: class "disc")
    REFUGE/Test-400/...                                             (same)

Ground truth = mean of the rater masks (grey / 255) >= 0.5, i.e. the majority of 7 raters.
Split "test" reads Test-400; "train" and "val" read Training-400, val carved from it
(``splits.carve_val``: every 6th image). Classes: ("cup",), or ("cup", "disc") when asked
for and the disc files are there.

Original challenge release (images + one BMP per image: 0 cup, 128 disc, 255 background;
the disc class is the pixels at 0 or 128, so it contains the cup)::

    Training400/{Glaucoma,Non-Glaucoma}/<name>.jpg
    Annotation-Training400/[Annotation-Training400/]Disc_Cup_Masks/{Glaucoma,Non-Glaucoma}/<name>.bmp
    REFUGE-Validation400/<name>.jpg
    REFUGE-Validation400-GT/Disc_Cup_Masks/<name>.bmp
    REFUGE-Test400/<name>.jpg, REFUGE-Test-GT/Disc_Cup_Masks/<name>.bmp   (where present)

With the test set and its ground truth present: train = Training400, val = the challenge's
REFUGE-Validation400, test = REFUGE-Test400. Without them, test = REFUGE-Validation400 (the
held-out set whose ground truth ships with the release) and val is carved from Training400.
Classes: ("cup", "disc").

A split file (``hparams.split_file``, see ``splits``) names the images of each split
instead; its ids are looked up among the training and held-out images together.

Images are resized to ``image_size`` (bilinear) for the model; masks to ``out_size``
(area average of the soft mask, then >= 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..options import look_up
from . import splits
from .images import read_image, resize_image, resize_mask

__all__ = ["RefugeDataset", "LAYOUTS", "detect_layout"]

LAYOUTS = ("multirater", "challenge")
SPLITS = ("train", "val", "test")
_MULTIRATER_DIRS = {"train": "Training-400", "test": "Test-400"}
_CHALLENGE_DIRS = {"train": ("Training400", "Annotation-Training400"),
                   "val": ("REFUGE-Validation400", "REFUGE-Validation400-GT"),
                   "test": ("REFUGE-Test400", "REFUGE-Test-GT")}
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class _Case:
    name: str
    image: Path
    masks: dict[str, tuple[Path, ...]]  # class -> rater masks (multirater) or the one BMP


def detect_layout(root: str | Path) -> tuple[str, Path]:
    """Return (layout, directory holding the split folders); InputError when neither is there."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: REFUGE data directory does not exist")
    for base in (root, root / "REFUGE"):
        if any((base / d).is_dir() for d in _MULTIRATER_DIRS.values()):
            return "multirater", base
        if any((base / pair[0]).is_dir() for pair in _CHALLENGE_DIRS.values()):
            return "challenge", base
    raise InputError(f"{root}: no REFUGE layout found (expected Training-400/ and Test-400/, "
                     "or the challenge's Training400/ and REFUGE-Validation400/)")


class RefugeDataset:
    """REFUGE samples: ``{"image": [3,S,S] in [0,1], "mask": [C,O,O] in {0,1}, "name": str}``.

    A map-style dataset (``len`` and ``[i]``, what DataLoader takes). Scanning the layout and
    :meth:`decode` need no torch, so checking a dataset before queueing imports none.
    """

    def __init__(self, root: str | Path, split: str = "train", image_size: int = 1024,
                 out_size: int = 1024, classes: tuple[str, ...] | list[str] | None = None,
                 split_file: str | Path | None = None) -> None:
        split = look_up(split, SPLITS, "REFUGE split")
        if image_size < 1 or out_size < 1:
            raise InputError(f"image_size/out_size: must be positive, got {image_size}/{out_size}")
        self.layout, self.root = detect_layout(root)
        self.split, self.image_size, self.out_size = split, int(image_size), int(out_size)
        cases = _split_cases(self.layout, self.root, split, split_file)
        available = ("cup", "disc") if self.layout == "challenge" or all("disc" in c.masks for c in cases) \
            else ("cup",)
        default = ("cup",) if self.layout == "multirater" else ("cup", "disc")
        self.classes = tuple(look_up(c, available, f"REFUGE classes ({self.layout} layout)")
                             for c in (classes or default))
        self._cases = cases

    @property
    def names(self) -> list[str]:
        return [c.name for c in self._cases]

    @property
    def hd95_unit(self) -> str:
        """Fundus photographs carry no pixel spacing, so distances are in pixels (of ``out_size``)."""
        return "px"

    def __len__(self) -> int:
        return len(self._cases)

    def decode(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Case ``index``'s files, decoded: the (H,W,3) uint8 image and its (C,H,W) soft masks."""
        case = self._cases[index]
        rgb = read_image(case.image, "RGB")
        return rgb, np.stack([self._soft_mask(case, c, rgb.shape[:2]) for c in self.classes])

    def __getitem__(self, index: int) -> dict:
        import torch

        case = self._cases[index]
        rgb, soft = self.decode(index)
        image = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)
        return {"image": resize_image(image, self.image_size),
                "mask": resize_mask(torch.from_numpy(soft), self.out_size),
                "name": case.name}

    def _soft_mask(self, case: _Case, cls: str, shape: tuple[int, int]) -> np.ndarray:
        """Per-pixel fraction of raters (multi-rater) or the 0/1 class map (challenge)."""
        maps = []
        for path in case.masks[cls]:
            grey = read_image(path, "L")
            if grey.shape != shape:
                raise InputError(f"{path}: mask is {grey.shape[1]}x{grey.shape[0]} but its image "
                                 f"{case.image.name} is {shape[1]}x{shape[0]}")
            maps.append(grey)
        if self.layout == "multirater":
            return np.mean(maps, axis=0, dtype=np.float32) / 255.0
        (grey,) = maps
        return (grey < (64 if cls == "cup" else 192)).astype(np.float32)


def _part_dirs(layout: str, base: Path) -> dict[str, str]:
    """split -> the release part it reads ("carve": val carved from train); module docstring."""
    if layout == "multirater":
        return {"train": "train", "val": "carve", "test": "test"}
    if all((base / d).is_dir() for d in _CHALLENGE_DIRS["test"]):
        return {"train": "train", "val": "val", "test": "test"}
    return {"train": "train", "val": "carve", "test": "val"}


def _scan(layout: str, base: Path, part: str) -> list[_Case]:
    return _scan_multirater(base, part) if layout == "multirater" else _scan_challenge(base, part)


def _split_cases(layout: str, base: Path, split: str, split_file: str | Path | None) -> list[_Case]:
    parts = _part_dirs(layout, base)
    if split_file is not None:
        pool: dict[str, _Case] = {}
        for part in dict.fromkeys(p for p in parts.values() if p != "carve"):
            for case in _scan(layout, base, part):
                if case.name in pool:
                    raise InputError(f"{case.image}: image name {case.name} appears twice in {base}; "
                                     "a split file cannot tell them apart")
                pool[case.name] = case
        return [pool[name] for name in splits.assign(list(pool), split_file, split)]
    if parts[split] != "carve" and (split != "train" or parts["val"] != "carve"):
        return _scan(layout, base, parts[split])
    train = _scan(layout, base, "train")
    chosen = set(splits.carve_val([c.name for c in train], f"{base} (REFUGE training images)")[split])
    return [c for c in train if c.name in chosen]


def _scan_multirater(base: Path, split: str) -> list[_Case]:
    top = base / _MULTIRATER_DIRS[split]
    dirs = sorted(p for p in top.iterdir() if p.is_dir()) if top.is_dir() else []
    if not dirs:
        raise InputError(f"{top}: no REFUGE cases (missing or empty directory)")
    cases = []
    for d in dirs:
        image = d / f"{d.name}_cropped.jpg"
        if not image.is_file():
            raise InputError(f"{image}: image missing for case {d.name}")
        masks = {}
        for cls in ("cup", "disc"):
            found = sorted(d.glob(f"{d.name}_seg_{cls}_*_cropped.jpg"))
            if found:
                masks[cls] = tuple(found)
        if "cup" not in masks:
            raise InputError(f"{d}: case {d.name} has an image but no cup masks "
                             f"({d.name}_seg_cup_{{1..7}}_cropped.jpg)")
        cases.append(_Case(d.name, image, masks))
    return cases


def _scan_challenge(base: Path, split: str) -> list[_Case]:
    image_dir, gt_dir = (base / d for d in _CHALLENGE_DIRS[split])
    images = sorted((p for p in image_dir.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES),
                    key=lambda p: p.stem) if image_dir.is_dir() else []
    if not images:
        raise InputError(f"{image_dir}: no REFUGE images (missing or empty directory)")
    masks = {p.stem: p for p in gt_dir.rglob("*.bmp")} if gt_dir.is_dir() else {}
    cases = []
    for image in images:
        if image.stem not in masks:
            raise InputError(f"{image}: image has no mask {image.stem}.bmp under {gt_dir}")
        bmp = (masks[image.stem],)
        cases.append(_Case(image.stem, image, {"cup": bmp, "disc": bmp}))
    return cases
