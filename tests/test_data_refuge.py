"""REFUGE loader: both layouts from the generator, a hand-checkable rater vote, a real photograph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medsam2_hpc.data.refuge import RefugeDataset
from medsam2_hpc.errors import InputError


def test_multirater_layout_returns_cases_with_shapes(refuge_multirater: Path) -> None:
    train = RefugeDataset(refuge_multirater, "train", image_size=64, out_size=32)
    test = RefugeDataset(refuge_multirater, "test", image_size=64, out_size=32)
    assert (train.layout, train.classes) == ("multirater", ("cup",))
    assert train.names == ["g0001", "g0003", "n0002"]
    assert RefugeDataset(refuge_multirater, "val").names == ["n0004"]  # carved from Training-400
    assert test.names == ["T0001", "T0002"]
    item = train[1]
    assert item["name"] == "g0003"
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["mask"].shape == (1, 32, 32)
    assert set(item["mask"].unique().tolist()) == {0.0, 1.0}


def test_root_may_be_the_parent_of_the_refuge_dir(refuge_multirater: Path, tmp_path: Path) -> None:
    (tmp_path / "REFUGE").symlink_to(refuge_multirater)
    assert RefugeDataset(tmp_path, "test", 32, 32).names == ["T0001", "T0002"]


def _write_case(root: Path, name: str, image: np.ndarray, raters: list[np.ndarray]) -> None:
    case = root / "Test-400" / name
    case.mkdir(parents=True)
    Image.fromarray(image).save(case / f"{name}_cropped.jpg", quality=100)
    for r, mask in enumerate(raters, start=1):
        Image.fromarray(mask).save(case / f"{name}_seg_cup_{r}_cropped.jpg", quality=100)


def test_ground_truth_is_the_majority_of_seven_raters(tmp_path: Path) -> None:
    # Rater r marks the left 8*r columns, so column c is marked by 7 - c // 8 raters:
    # at least 4 of 7 (mean >= 0.5) exactly for c < 32.
    raters = []
    for r in range(1, 8):
        mask = np.zeros((64, 64), np.uint8)
        mask[:, : 8 * r] = 255
        raters.append(mask)
    _write_case(tmp_path, "vote", np.full((64, 64, 3), 100, np.uint8), raters)
    mask = RefugeDataset(tmp_path, "test", image_size=64, out_size=64)[0]["mask"][0]
    expected = torch.zeros(64, 64)
    expected[:, :32] = 1
    assert torch.equal(mask, expected)
    # Shrinking keeps the vote: area resize of the soft mask, then >= 0.5.
    small = RefugeDataset(tmp_path, "test", image_size=32, out_size=16)[0]["mask"][0]
    assert small[:, :8].all() and not small[:, 8:].any()


def test_multirater_mask_matches_the_drawn_cup(refuge_multirater: Path) -> None:
    ds = RefugeDataset(refuge_multirater, "train", image_size=128, out_size=128)
    case_dir = refuge_multirater / "Training-400" / ds.names[0]
    raters = np.stack([np.asarray(Image.open(p).convert("L")) / 255.0
                       for p in sorted(case_dir.glob("*_seg_cup_*"))])
    assert len(raters) == 7
    assert np.array_equal(ds[0]["mask"][0].numpy() > 0, raters.mean(0) >= 0.5)


def test_challenge_layout_reads_cup_and_disc_from_bmp(refuge_challenge: Path) -> None:
    ds = RefugeDataset(refuge_challenge, "train", image_size=64, out_size=128)
    assert (ds.layout, ds.classes) == ("challenge", ("cup", "disc"))
    assert ds.names == ["g0001", "g0003", "n0002"]
    bmp = np.asarray(Image.open(refuge_challenge / "Annotation-Training400" / "Disc_Cup_Masks" / "Glaucoma"
                                / "g0001.bmp"))
    cup, disc = ds[0]["mask"].numpy() > 0
    assert np.array_equal(cup, bmp == 0)
    assert np.array_equal(disc, bmp <= 128)
    assert cup.sum() > 0 and (disc & cup).sum() == cup.sum() and disc.sum() > cup.sum()
    test = RefugeDataset(refuge_challenge, "test", image_size=64, out_size=64, classes=["cup"])
    assert test.names == ["V0001", "V0002"] and test[0]["mask"].shape == (1, 64, 64)


def test_unknown_class_is_refused_by_name(refuge_multirater: Path) -> None:
    with pytest.raises(InputError, match="'disc'"):
        RefugeDataset(refuge_multirater, "train", 32, 32, classes=("disc",))
    with pytest.raises(InputError, match="split"):
        RefugeDataset(refuge_multirater, "validation", 32, 32)


def test_retina_photograph_with_a_drawn_cup(tmp_path: Path) -> None:
    """A real fundus photograph (scikit-image) goes through the multi-rater path unchanged."""
    from skimage.data import retina

    photo = retina()  # 1411 x 1411 RGB
    yy, xx = np.mgrid[: photo.shape[0], : photo.shape[1]]
    cy, cx, radius = 700, 980, 90
    raters = [((((yy - cy) ** 2 + (xx - cx - dx) ** 2) <= radius ** 2) * 255).astype(np.uint8)
              for dx in (-4, -2, -1, 0, 1, 2, 4)]
    _write_case(tmp_path, "retina", photo, raters)
    item = RefugeDataset(tmp_path, "test", image_size=256, out_size=256)[0]
    image, mask = item["image"], item["mask"][0]
    assert item["name"] == "retina" and image.shape == (3, 256, 256)
    reference = np.asarray(Image.fromarray(photo).resize((256, 256), Image.BILINEAR)) / 255.0
    assert abs(float(image.mean()) - reference.mean()) < 0.01
    scale = 256 / photo.shape[0]
    assert float(mask.sum()) == pytest.approx(np.pi * (radius * scale) ** 2, rel=0.05)
    rows, cols = torch.nonzero(mask, as_tuple=True)
    assert float(cols.float().mean()) == pytest.approx(cx * scale, abs=1.0)
    assert float(rows.float().mean()) == pytest.approx(cy * scale, abs=1.0)
