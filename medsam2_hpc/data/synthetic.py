"""Small, learnable synthetic data written in the real REFUGE and BTCV on-disk layouts.

Tests and the demo run the same loaders users run on the real downloads, so the generator
writes files exactly where and how those downloads keep them (see ``refuge.py`` and
``btcv.py`` for the layouts). Everything is drawn from one seeded numpy Generator, so the
same arguments give byte-identical files.

REFUGE: a fundus-like RGB photograph (orange retina, bright optic disc, brighter cup), with
7 rater cup masks jittered by a pixel or two (multi-rater layout) or one BMP per image with
0 cup / 128 disc / 255 background (challenge layout).

BTCV: CT-like volumes in Hounsfield units (air, body, several ellipsoid organs under the
real BTCV label ids, each with its own intensity), with the first and last slices free of
organs. Written as JPEG slices + ``.npy`` label maps, or as ``.nii.gz`` with an LPS-like
affine (x and y flipped, anisotropic spacing) plus ``dataset_0.json``. ``unlabelled=N`` adds
N test scans without labels, where the real downloads keep them: ``imagesTs/`` listed under
dataset_0.json's "test" (NIfTI), or ``Test/image/<case>/`` with no ``Test/mask/<case>/``
(slices; that copy's val and test are the same folder, so val then needs ``labels="optional"`` too).
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from ..atomic import atomic_write, write_text
from ..errors import InputError

__all__ = ["make_refuge", "make_btcv", "REFUGE_LAYOUTS", "BTCV_LAYOUTS", "DEFAULT_ORGANS"]

REFUGE_LAYOUTS = ("multirater", "challenge")
BTCV_LAYOUTS = ("slices", "nifti")
# spleen, right kidney, left kidney, liver: large enough to learn at 96-128 px.
DEFAULT_ORGANS = (1, 2, 3, 6)
# Hounsfield units per organ id; distinct after the -175..250 window so a model can learn them.
_ORGAN_HU = {1: 120.0, 2: 200.0, 3: 200.0, 4: -40.0, 5: 20.0, 6: 70.0, 7: 0.0, 8: 240.0,
             9: 160.0, 10: 180.0, 11: 100.0, 12: 140.0, 13: 140.0}
# Where each organ sits in the (row, col) plane, as a fraction of the slice size.
_ORGAN_CENTRE = {1: (0.55, 0.75), 2: (0.65, 0.35), 3: (0.65, 0.65), 4: (0.45, 0.35), 5: (0.3, 0.5),
                 6: (0.45, 0.3), 7: (0.4, 0.65), 8: (0.55, 0.5), 9: (0.5, 0.42), 10: (0.42, 0.5),
                 11: (0.5, 0.58), 12: (0.35, 0.38), 13: (0.35, 0.62)}
SLICE_SPACING_MM = (2.5, 0.8, 0.8)  # (d, h, w) of the generated NIfTI volumes


def _save_image(path: Path, image: Image.Image, fmt: str, **kwargs) -> None:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    atomic_write(path, lambda fh: fh.write(buf.getvalue()))


def _ellipse(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _check(value: int, minimum: int, flag: str) -> None:
    if int(value) < minimum:
        raise InputError(f"{flag}: must be >= {minimum}, got {value}")


# ---------------------------------------------------------------- REFUGE

def _fundus(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, tuple]:
    """RGB fundus-like image and the (cup, disc) ellipse parameters used to draw it."""
    s = size
    cy, cx = rng.uniform(0.4, 0.6, 2) * s
    disc_r = rng.uniform(0.16, 0.22) * s
    cup = (cy + rng.uniform(-0.03, 0.03) * s, cx + rng.uniform(-0.03, 0.03) * s,
           disc_r * rng.uniform(0.4, 0.65), disc_r * rng.uniform(0.4, 0.65))
    disc = (cy, cx, disc_r, disc_r * rng.uniform(0.85, 1.0))
    img = np.zeros((s, s, 3), np.float32)
    img[...] = (150, 60, 30)
    img[_ellipse((s, s), s / 2, s / 2, 0.49 * s, 0.49 * s) == 0] = (5, 5, 5)
    img[_ellipse((s, s), *disc)] = (230, 170, 90)
    img[_ellipse((s, s), *cup)] = (252, 235, 170)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), np.asarray(cup), disc


def make_refuge(out: str | Path, layout: str = "multirater", *, n_train: int = 4, n_test: int = 2,
                size: int = 128, seed: int = 0, raters: int = 7) -> Path:
    """Write a small REFUGE copy under ``out`` in ``layout``; return the root to pass to the loader."""
    if layout not in REFUGE_LAYOUTS:
        raise InputError(f"--layout: {layout!r} is not a REFUGE layout ({', '.join(REFUGE_LAYOUTS)})")
    for value, flag, low in ((n_train, "--cases", 1), (n_test, "n_test", 1), (size, "--size", 16),
                             (raters, "raters", 1)):
        _check(value, low, flag)
    out = Path(out)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(1, n + 1):
            image, cup, disc = _fundus(rng, size)
            if layout == "multirater":
                _write_multirater(out, split, i, image, cup, rng, raters)
            else:
                _write_challenge(out, split, i, image, cup, disc)
    return out


def _write_multirater(out: Path, split: str, i: int, image: np.ndarray, cup: np.ndarray,
                      rng: np.random.Generator, raters: int) -> None:
    name = f"{'T' if split == 'test' else 'g' if i % 2 else 'n'}{i:04d}"
    case = out / ("Training-400" if split == "train" else "Test-400") / name
    _save_image(case / f"{name}_cropped.jpg", Image.fromarray(image), "JPEG", quality=95)
    for r in range(1, raters + 1):
        jittered = cup + np.concatenate([rng.uniform(-1.5, 1.5, 2), rng.uniform(-1.0, 1.0, 2)])
        mask = _ellipse(image.shape[:2], *jittered).astype(np.uint8) * 255
        _save_image(case / f"{name}_seg_cup_{r}_cropped.jpg", Image.fromarray(mask), "JPEG", quality=95)


def _write_challenge(out: Path, split: str, i: int, image: np.ndarray, cup: np.ndarray, disc: tuple) -> None:
    label = np.full(image.shape[:2], 255, np.uint8)
    label[_ellipse(label.shape, *disc)] = 128
    label[_ellipse(label.shape, *cup)] = 0
    if split == "train":
        group, name = ("Glaucoma", f"g{i:04d}") if i % 2 else ("Non-Glaucoma", f"n{i:04d}")
        img_path = out / "Training400" / group / f"{name}.jpg"
        mask_path = out / "Annotation-Training400" / "Disc_Cup_Masks" / group / f"{name}.bmp"
    else:
        name = f"V{i:04d}"
        img_path = out / "REFUGE-Validation400" / f"{name}.jpg"
        mask_path = out / "REFUGE-Validation400-GT" / "Disc_Cup_Masks" / f"{name}.bmp"
    _save_image(img_path, Image.fromarray(image), "JPEG", quality=95)
    _save_image(mask_path, Image.fromarray(label), "BMP")


# ---------------------------------------------------------------- BTCV

def _ct_volume(rng: np.random.Generator, depth: int, size: int, organs: Sequence[int], body_hu: float,
               radius: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(D,H,W) HU volume (int16) and label map (uint8); the first and last slices hold no organ."""
    hu = np.full((depth, size, size), -1000.0, np.float32)
    label = np.zeros((depth, size, size), np.uint8)
    body = _ellipse((size, size), size / 2, size / 2, 0.42 * size, 0.47 * size)
    hu[:, body] = body_hu
    zz = np.arange(depth)[:, None, None]
    margin = max(2, depth // 8)
    for organ in organs:
        fy, fx = _ORGAN_CENTRE[organ]
        cy, cx = (np.array([fy, fx]) + rng.uniform(-0.03, 0.03, 2)) * size
        ry, rx = rng.uniform(*radius, 2) * size
        cz = rng.uniform(depth * 0.4, depth * 0.6)
        rz = rng.uniform(0.5, 1.0) * (depth / 2 - margin)
        grid = np.arange(size, dtype=np.float64)
        plane = ((grid[None, :, None] - cy) / ry) ** 2 + ((grid[None, None, :] - cx) / rx) ** 2
        blob = plane + ((zz - cz) / rz) ** 2 <= 1.0
        blob[:margin] = blob[depth - margin:] = False
        hu[blob] = _ORGAN_HU[organ]
        label[blob] = organ
    hu += rng.normal(0, 12, hu.shape)
    return np.round(hu).astype(np.int16), label


def _window_u8(hu: np.ndarray) -> np.ndarray:
    return np.round(np.clip((hu + 175.0) / 425.0, 0, 1) * 255).astype(np.uint8)


def _lps_affine(spacing: Sequence[float]) -> np.ndarray:
    """An LPS-like affine (x and y reversed), as DICOM converters often write."""
    d, h, w = spacing
    return np.array([[-w, 0, 0, 150.0], [0, -h, 0, 120.0], [0, 0, d, -300.0], [0, 0, 0, 1]])


def _dhw_to_file(arr: np.ndarray) -> np.ndarray:
    """(D,H,W) in display order -> the (x,y,z) array stored with ``_lps_affine``.

    Display rows run anterior -> posterior and columns patient right -> left; with the
    LPS affine, array x runs right -> left and y anterior -> posterior.
    """
    return np.ascontiguousarray(arr.transpose(2, 1, 0))


def _save_nifti(path: Path, arr: np.ndarray, affine: np.ndarray) -> None:
    img = nib.Nifti1Image(arr, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    atomic_write(path, lambda fh: fh.write(gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)))


def make_btcv(out: str | Path, layout: str = "slices", *, n_train: int = 4, n_test: int = 2,
              depth: int = 20, size: int = 96, organs: Sequence[int] = DEFAULT_ORGANS,
              seed: int = 0, unlabelled: int = 0, body_hu: float = 30.0,
              organ_radius: tuple[float, float] = (0.07, 0.12)) -> Path:
    """Write a small BTCV copy under ``out`` in ``layout``; return the root to pass to the loader.

    ``unlabelled`` extra test scans are written without labels (module docstring), numbered
    after the labelled cases, so prompt-file inference has real "no ground truth" input.
    ``body_hu`` is the tissue around the organs (30: soft tissue, the liver only 40 HU brighter;
    -100: fat, every organ in clear contrast) and ``organ_radius`` the range of the organs' in-plane
    radii as a fraction of ``size``: the demo uses both to be learnable in minutes.
    """
    if layout not in BTCV_LAYOUTS:
        raise InputError(f"--layout: {layout!r} is not a BTCV layout ({', '.join(BTCV_LAYOUTS)})")
    for value, flag, low in ((n_train, "--cases", 1), (n_test, "n_test", 1), (size, "--size", 16),
                             (depth, "depth", 6), (unlabelled, "unlabelled", 0)):
        _check(value, low, flag)
    low, high = (float(r) for r in organ_radius)
    if not 0 < low <= high <= 0.25:
        raise InputError(f"organ_radius: ({low}, {high}) must satisfy 0 < low <= high <= 0.25")
    bad = [o for o in organs if o not in _ORGAN_HU]
    if bad:
        raise InputError(f"organs: {bad[0]} is not a BTCV label id (1..13)")
    out = Path(out)
    rng = np.random.default_rng(seed)
    entries: dict[str, list[dict[str, str]]] = {"training": [], "validation": []}
    for split, n, first in (("train", n_train, 1), ("test", n_test, n_train + 1)):
        for number in range(first, first + n):
            hu, label = _ct_volume(rng, depth, size, organs, body_hu, (low, high))
            if layout == "slices":
                top = out / ("Training" if split == "train" else "Test")
                case = f"img{number:04d}"
                for i in range(depth):
                    _save_image(top / "image" / case / f"{i}.jpg", Image.fromarray(_window_u8(hu[i])),
                                "JPEG", quality=95)
                    atomic_write(top / "mask" / case / f"{i}.npy", lambda fh, a=label[i]: np.save(fh, a))
            else:
                image_rel = f"imagesTr/img{number:04d}.nii.gz"
                label_rel = f"labelsTr/label{number:04d}.nii.gz"
                affine = _lps_affine(SLICE_SPACING_MM)
                _save_nifti(out / image_rel, _dhw_to_file(hu), affine)
                _save_nifti(out / label_rel, _dhw_to_file(label), affine)
                entries["training" if split == "train" else "validation"].append(
                    {"image": image_rel, "label": label_rel})
    test_scans = []
    for number in range(n_train + n_test + 1, n_train + n_test + 1 + unlabelled):
        hu, _ = _ct_volume(rng, depth, size, organs, body_hu, (low, high))
        case = f"img{number:04d}"
        if layout == "slices":
            for i in range(depth):
                _save_image(out / "Test" / "image" / case / f"{i}.jpg", Image.fromarray(_window_u8(hu[i])),
                            "JPEG", quality=95)
        else:
            test_scans.append(f"imagesTs/{case}.nii.gz")
            _save_nifti(out / test_scans[-1], _dhw_to_file(hu), _lps_affine(SLICE_SPACING_MM))
    if layout == "nifti":
        listing = {**entries, "test": test_scans} if test_scans else entries
        write_text(out / "dataset_0.json", json.dumps(listing, indent=2) + "\n")
    return out
