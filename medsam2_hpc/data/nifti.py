"""NIfTI volumes to and from the (D,H,W) arrays the models see.

Reading reorients to RAS (``nibabel.as_closest_canonical``) and lays the axial slices out
in radiological display order: D runs inferior -> superior, rows anterior -> posterior,
columns patient right -> left. ``to_source`` inverts exactly that, so a prediction written
with the source affine overlays the source image voxel for voxel, whatever orientation
the scanner stored.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from ..atomic import atomic_write
from ..errors import InputError

__all__ = ["read_nifti", "to_display", "to_source", "write_nifti", "CT_WINDOW"]

CT_WINDOW = (-175.0, 250.0)  # Hounsfield units mapped to [0, 1] for abdominal CT


def read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Decode ``path`` -> (RAS-canonical float32 data (x,y,z), source affine, (d,h,w) spacing mm)."""
    try:
        img = nib.load(str(path))
        canonical = nib.as_closest_canonical(img)
        data = np.asarray(canonical.dataobj, dtype=np.float32)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ImageFileError, ValueError) as exc:
        raise InputError(f"{path}: corrupt or unreadable NIfTI ({exc})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3D volume, got shape {data.shape}")
    zooms = canonical.header.get_zooms()[:3]
    return data, np.asarray(img.affine, dtype=np.float64), (float(zooms[2]), float(zooms[1]), float(zooms[0]))


def to_display(canonical: np.ndarray) -> np.ndarray:
    """RAS (x,y,z) -> (D,H,W): slices along z, rows A->P, columns R->L."""
    return np.ascontiguousarray(canonical[::-1, ::-1, :].transpose(2, 1, 0))


def to_source(display: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Inverse of ``to_display`` then of the RAS reorientation: back to the stored array order."""
    canonical = display.transpose(2, 1, 0)[::-1, ::-1, :]
    source_ornt = nib.orientations.io_orientation(affine)
    ras = nib.orientations.axcodes2ornt("RAS")
    return np.ascontiguousarray(nib.orientations.apply_orientation(
        canonical, nib.orientations.ornt_transform(ras, source_ornt)))


def write_nifti(path: Path, display: np.ndarray, affine: np.ndarray) -> Path:
    """Write a (D,H,W) label volume as .nii.gz on the grid of the source with ``affine``."""
    img = nib.Nifti1Image(to_source(display, affine), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return atomic_write(path, lambda fh: fh.write(gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)))
