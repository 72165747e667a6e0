"""BTCV multi-organ CT: one volume API over the preprocessed-slices and raw-NIfTI layouts.

Layouts and split mapping: see ``btcv_scan``. Every case becomes a :class:`Volume` with
``image`` (D,H,W) float32 in [0,1] and ``label`` (D,H,W) uint8 with the 13 BTCV organ ids,
or ``label`` None for an unlabelled scan, which only ``labels="optional"`` admits (prediction
from a prompt file); the default ``"required"`` rejects it by file name, as training and
scoring need the truth.
NIfTI volumes are reoriented to RAS, windowed (CT: -175..250 HU -> [0,1]; ``window=None``
min-max normalises, e.g. for MRI) and sliced along the axial axis (``nifti.py``); their
source affine is kept so :func:`write_prediction` writes a ``.nii.gz`` that overlays the
input exactly. The slices layout has no geometry: spacing (1, 1, 1) and affine None.

A volume is decoded once and cached in :class:`BTCVVolumes` (optionally LRU-bounded by
``cache_size``), because training draws many clips from each case every epoch.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..atomic import atomic_write
from ..errors import InputError
from ..options import look_up
from . import nifti
from .btcv_scan import LABEL_POLICIES, SPLITS, CaseFiles, detect_layout, scan_cases
from .images import read_image, read_npy, resize_image, resize_labels
from .organs import ORGANS

if TYPE_CHECKING:
    import torch

__all__ = ["ORGANS", "Volume", "BTCVVolumes", "training_volumes", "BTCVClips", "BTCVSlices",
           "write_prediction", "labelled_slices"]

MAX_LABEL = max(ORGANS)


@dataclass(frozen=True, eq=False)
class Volume:
    """One decoded case in display order (D axial slices of H x W)."""

    case: str
    image: np.ndarray  # (D,H,W) float32 in [0,1]
    label: np.ndarray | None  # (D,H,W) uint8, 0 = background
    spacing: tuple[float, float, float]  # (d,h,w) mm
    affine: np.ndarray | None  # 4x4 of the source NIfTI; None for the slices layout
    source: Path  # the image file (NIfTI) or slice directory


def labelled_slices(volume: Volume) -> np.ndarray:
    """Indices of the slices that contain at least one organ voxel."""
    if volume.label is None:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(volume.label.reshape(volume.label.shape[0], -1).any(axis=1))


def _check_labels(values: np.ndarray, path: Path) -> np.ndarray:
    if values.size and (values.min() < 0 or values.max() > MAX_LABEL):
        bad = values.min() if values.min() < 0 else values.max()
        raise InputError(f"{path}: label value {bad:g} outside the BTCV organ ids 0..{MAX_LABEL}")
    if np.issubdtype(values.dtype, np.floating) and not np.array_equal(values, np.rint(values)):
        raise InputError(f"{path}: label values are not integers")
    return values.astype(np.uint8)


class BTCVVolumes:
    """The cases of one split; ``[i]`` / ``get(case)`` decode on first use, then serve the cache."""

    def __init__(self, root: str | Path, split: str = "train", *,
                 window: tuple[float, float] | None = nifti.CT_WINDOW, cache_size: int | None = None,
                 labels: str = "required", split_file: str | Path | None = None) -> None:
        split = look_up(split, SPLITS, "BTCV split")
        labels = look_up(labels, LABEL_POLICIES, "labels")
        if window is not None and not window[0] < window[1]:
            raise InputError(f"window: lower bound must be below upper bound, got {window}")
        if cache_size is not None and cache_size < 1:
            raise InputError(f"cache_size: must be >= 1 or None, got {cache_size}")
        self.layout, self.root = detect_layout(root)
        self.split, self.window, self.cache_size, self.labels = split, window, cache_size, labels
        self._files = {c.case: c for c in scan_cases(self.layout, self.root, split, labels, split_file)}
        self._cache: OrderedDict[str, Volume] = OrderedDict()

    @property
    def cases(self) -> list[str]:
        return list(self._files)

    @property
    def labelled(self) -> bool:
        """Every case has labels (decides nothing; read from the file listing, nothing decoded)."""
        return all(files.labels for files in self._files.values())

    @property
    def hd95_unit(self) -> str:
        """Distances are in mm where the files carry spacing (NIfTI), in pixels for JPEG slices."""
        return "mm" if self.layout == "nifti" else "px"

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, index: int) -> Volume:
        return self.get(self.cases[index])

    def __iter__(self) -> Iterator[Volume]:
        return (self.get(case) for case in self._files)

    def get(self, case: str) -> Volume:
        if case in self._cache:
            self._cache.move_to_end(case)
            return self._cache[case]
        files = self._files.get(case)
        if files is None:
            look_up(case, self._files, f"BTCV case in {self.root} ({self.split})")
        volume = self._read_slices(files) if self.layout == "slices" else self._read_nifti(files)
        self._cache[case] = volume
        if self.cache_size is not None and len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return volume

    def _read_slices(self, files: CaseFiles) -> Volume:
        images = [read_image(path, "L") for path in files.images]
        if len({im.shape for im in images}) > 1:
            raise InputError(f"{files.images[0].parent}: slices of case {files.case} differ in size")
        labels = [self._read_mask(label_path, image_path, grey) for image_path, label_path, grey
                  in zip(files.images, files.labels, images, strict=True)] if files.labels else []
        image = np.stack(images).astype(np.float32) / 255.0
        return Volume(files.case, image, np.stack(labels) if labels else None, (1.0, 1.0, 1.0), None,
                      files.images[0].parent)

    @staticmethod
    def _read_mask(label_path: Path, image_path: Path, grey: np.ndarray) -> np.ndarray:
        label = read_npy(label_path)
        label = label[..., 0] if label.ndim == 3 and label.shape[-1] == 1 else label
        if label.shape != grey.shape:
            raise InputError(f"{label_path}: mask shape {label.shape} != image shape {grey.shape} "
                             f"of {image_path.name}")
        return _check_labels(label, label_path)

    def _read_nifti(self, files: CaseFiles) -> Volume:
        (image_path,) = files.images
        data, affine, spacing = nifti.read_nifti(image_path)
        label = None
        if files.labels:
            (label_path,) = files.labels
            raw, _, _ = nifti.read_nifti(label_path)
            if raw.shape != data.shape:
                raise InputError(f"{label_path}: label shape {raw.shape} != image shape {data.shape} "
                                 f"of {image_path.name} (after RAS reorientation)")
            label = nifti.to_display(_check_labels(raw, label_path))
        if self.window is not None:
            lo, hi = self.window
            data = np.clip((data - lo) / (hi - lo), 0.0, 1.0)
        else:
            lo, hi = float(data.min()), float(data.max())
            data = (data - lo) / (hi - lo) if hi > lo else np.zeros_like(data)
        image = nifti.to_display(data.astype(np.float32))
        return Volume(files.case, image, label, spacing, affine, image_path)


def training_volumes(root: str | Path, split_file: str | Path | None = None) -> dict[str, BTCVVolumes]:
    """What a training run reads: train, val (selection) and test (scored once); every case labelled."""
    return {split: BTCVVolumes(root, split, split_file=split_file) for split in ("train", "val", "test")}


def write_prediction(volume: Volume, label_volume: np.ndarray | torch.Tensor,
                     out_dir: str | Path) -> list[Path]:
    """Save ``label_volume`` (D,H,W) as ``<case>.npy`` and, for NIfTI sources, ``<case>.nii.gz``
    on the source grid (same shape, affine and orientation as the input image file)."""
    import torch

    labels = label_volume.detach().cpu().numpy() if isinstance(label_volume, torch.Tensor) \
        else np.asarray(label_volume)
    if labels.shape != volume.image.shape:
        raise ValueError(f"prediction shape {labels.shape} != volume shape {volume.image.shape} "
                         f"of case {volume.case}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"prediction for case {volume.case} has values outside 0..255")
    labels = labels.astype(np.uint8)
    out_dir = Path(out_dir)
    written = [atomic_write(out_dir / f"{volume.case}.npy", lambda fh: np.save(fh, labels))]
    if volume.affine is not None:
        written.append(nifti.write_nifti(out_dir / f"{volume.case}.nii.gz", labels, volume.affine))
    return written


class _VolumeItems:
    """Shared index building: decodes each volume once (into the cache) to find its slices.
    Map-style datasets of tensors (``len`` and ``[i]``); the volumes themselves need no torch."""

    def __init__(self, volumes: BTCVVolumes, image_size: int, labelled_only: bool) -> None:
        if image_size < 1:
            raise InputError(f"image_size: must be positive, got {image_size}")
        self.volumes, self.image_size, self.labelled_only = volumes, int(image_size), labelled_only

    def _image(self, volume: Volume, lo: int, hi: int) -> torch.Tensor:
        import torch

        x = torch.from_numpy(volume.image[lo:hi])[:, None]  # (T,1,H,W)
        return resize_image(x, self.image_size).expand(-1, 3, -1, -1).contiguous()

    def _label(self, volume: Volume, lo: int, hi: int) -> torch.Tensor:
        import torch

        if volume.label is None:
            return torch.zeros(hi - lo, self.image_size, self.image_size, dtype=torch.long)
        return resize_labels(torch.from_numpy(volume.label[lo:hi]), self.image_size)


class BTCVClips(_VolumeItems):
    """Clips of ``video_length`` consecutive slices (3D training); with ``labelled_only`` only
    clips holding at least one labelled slice."""

    def __init__(self, volumes: BTCVVolumes, video_length: int, image_size: int,
                 labelled_only: bool = True) -> None:
        super().__init__(volumes, image_size, labelled_only)
        if video_length < 1:
            raise InputError(f"video_length: must be >= 1, got {video_length}")
        self.video_length = int(video_length)
        self.index: list[tuple[str, int]] = []
        for volume in volumes:
            depth = volume.image.shape[0]
            if depth < self.video_length:
                raise InputError(f"video_length: {video_length} exceeds the {depth} slices "
                                 f"of case {volume.case}")
            has = np.zeros(depth, bool)
            has[labelled_slices(volume)] = True
            for start in range(depth - self.video_length + 1):
                if not labelled_only or has[start:start + self.video_length].any():
                    self.index.append((volume.case, start))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        case, start = self.index[i]
        volume = self.volumes.get(case)
        stop = start + self.video_length
        return {"image": self._image(volume, start, stop), "label": self._label(volume, start, stop),
                "case": case, "start": start}


class BTCVSlices(_VolumeItems):
    """Single axial slices (2D baselines); with ``labelled_only`` only slices holding an organ."""

    def __init__(self, volumes: BTCVVolumes, image_size: int, labelled_only: bool = True) -> None:
        super().__init__(volumes, image_size, labelled_only)
        self.index = [(v.case, int(i)) for v in volumes
                      for i in (labelled_slices(v) if labelled_only else range(v.image.shape[0]))]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        case, index = self.index[i]
        volume = self.volumes.get(case)
        return {"image": self._image(volume, index, index + 1)[0],
                "label": self._label(volume, index, index + 1)[0], "case": case, "index": index}

