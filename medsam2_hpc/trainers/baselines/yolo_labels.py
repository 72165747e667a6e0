"""Masks <-> YOLO segmentation labels, and the dataset folder Ultralytics trains from.

YOLO segmentation labels are polygons (one text row per object: ``<class> x1 y1 x2 y2 ...``
normalised to [0, 1]); our ground truth is raster masks. A polygon row has no holes, so each
hole is joined to its outer contour by a zero-width "keyhole" bridge: filled with
``cv2.fillPoly`` (what Ultralytics does when it rasterises labels) the hole stays empty.
Several components of one class become several rows.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import yaml
from torch.utils.data import Dataset

from medsam2_hpc.atomic import atomic_write, write_text
from medsam2_hpc.errors import InputError

__all__ = ["mask_to_polygons", "label_rows", "write_sample", "write_dataset_yaml",
           "export_dataset"]

IMAGE_SUFFIX = ".png"


def _keyhole(outer: np.ndarray, holes: list[np.ndarray]) -> np.ndarray:
    """Splice each hole into ``outer`` at their closest points (there and back on one segment)."""
    poly = outer
    for hole in holes:
        dist = ((poly[:, None, :] - hole[None, :, :]) ** 2).sum(-1)
        i, j = np.unravel_index(int(dist.argmin()), dist.shape)
        ring = np.roll(hole, -j, axis=0)
        poly = np.concatenate([poly[: i + 1], ring, ring[:1], poly[i:]])
    return poly


def mask_to_polygons(mask: np.ndarray, min_area: float = 1.0) -> list[np.ndarray]:
    """Polygons (N, 2) as (x, y) pixel coordinates, one per connected component, holes bridged in.

    Args:
        mask: (H, W) boolean or {0, 1} array.
        min_area: components with fewer pixels are dropped (specks are not objects).
    """
    m = np.ascontiguousarray(mask.astype(np.uint8))
    contours, hierarchy = cv2.findContours(m, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    if hierarchy is None:
        return []
    hierarchy = hierarchy[0]
    polygons = []
    for idx, contour in enumerate(contours):
        if hierarchy[idx][3] != -1:  # a hole: spliced into its parent below
            continue
        outer = contour[:, 0, :].astype(np.float64)
        holes = []
        child = hierarchy[idx][2]
        while child != -1:
            holes.append(contours[child][:, 0, :].astype(np.float64))
            child = hierarchy[child][0]
        area = cv2.contourArea(contour) + len(contour)  # a thin line has zero area but pixels
        if area < min_area:
            continue
        if len(outer) < 3:  # a single pixel or a two-pixel line: make it a tiny square
            x, y = outer.mean(0)
            outer = np.array([[x - 0.5, y - 0.5], [x + 0.5, y - 0.5], [x + 0.5, y + 0.5], [x - 0.5, y + 0.5]])
        polygons.append(_keyhole(outer, holes))
    return polygons


def label_rows(masks: dict[int, np.ndarray]) -> list[str]:
    """Label-file rows for ``{class index: (H, W) mask}``; coordinates normalised to [0, 1].

    Pixel ``i`` spans ``[i, i + 1)``, so a contour through pixel ``i`` is written at its centre,
    ``(i + 0.5) / w``: Ultralytics scales by ``w`` and truncates to int before ``cv2.fillPoly``
    (``ultralytics.data.utils.polygon2mask``), which gives pixel ``i`` back. Written as ``i / w``,
    six decimals put it a hair below ``i`` and the right and bottom edges were lost.
    """
    rows = []
    for cls, mask in masks.items():
        h, w = mask.shape
        for poly in mask_to_polygons(mask):
            xy = np.clip((poly + 0.5) / np.array([w, h]), 0.0, 1.0)
            rows.append(f"{cls} " + " ".join(f"{v:.6f}" for v in xy.reshape(-1)))
    return rows


def write_sample(root: Path, split: str, name: str, image: np.ndarray, masks: dict[int, np.ndarray]) -> None:
    """Write ``images/<split>/<name>.png`` (RGB uint8 (H, W, 3)) and ``labels/<split>/<name>.txt``."""
    ok, png = cv2.imencode(IMAGE_SUFFIX, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise InputError(f"{root}: cannot encode image {name!r} as PNG")
    atomic_write(root / "images" / split / f"{name}{IMAGE_SUFFIX}", lambda fh: fh.write(png.tobytes()))
    rows = label_rows(masks)
    write_text(root / "labels" / split / f"{name}.txt", "\n".join(rows) + ("\n" if rows else ""))


def write_dataset_yaml(root: Path, names: dict[int, str], splits: dict[str, str]) -> Path:
    """The dataset YAML Ultralytics reads (absolute ``path``, so nothing resolves against its settings).

    Raises:
        InputError: when the file cannot be written (read-only or missing output location).
    """
    data = {"path": os.fspath(root.resolve()), **splits, "names": {int(k): v for k, v in names.items()}}
    path = root / "dataset.yaml"
    try:
        return write_text(path, yaml.safe_dump(data, sort_keys=False))
    except OSError as exc:
        raise InputError(f"{path}: dataset YAML cannot be written ({exc.strerror or exc})") from exc


def _class_masks(target: torch.Tensor, multilabel: bool) -> dict[int, np.ndarray]:
    """{YOLO class: mask}: channel k for multi-label masks, organ id - 1 for label maps."""
    if multilabel:
        return {k: target[k].numpy() > 0.5 for k in range(target.shape[0])}
    label = target.numpy()
    return {int(v) - 1: label == v for v in np.unique(label) if v > 0}


def export_dataset(root: Path, splits: dict[str, Dataset], names: tuple[str, ...], multilabel: bool,
                   to_rgb: Any) -> Path:
    """Write every item of ``splits`` (``{"image", "target", "name"}``) as PNG + label file, then the YAML.

    The YAML is written last, so its presence means the export is complete (a resumed run reuses it).

    Raises:
        InputError: when the folder cannot be written.
    """
    yaml_path = root / "dataset.yaml"
    if yaml_path.is_file():
        return yaml_path
    try:
        for split, data in splits.items():
            for i in range(len(data)):  # type: ignore[arg-type]
                item = data[i]
                masks = _class_masks(item["target"], multilabel)
                write_sample(root, split, item["name"], to_rgb(item["image"]), masks)
    except OSError as exc:
        raise InputError(f"{root}: YOLO dataset folder cannot be written ({exc.strerror or exc})") from exc
    return write_dataset_yaml(root, dict(enumerate(names)), {s: f"images/{s}" for s in splits})
