"""Every data error of issue 2 item 7: one stderr line naming the file, exit code 2."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medsam2_hpc import cli
from medsam2_hpc.data import check_dataset, synthetic
from medsam2_hpc.errors import InputError


def _check(capsys: pytest.CaptureFixture, dataset: str, path: Path) -> str:
    """Run `medsam2-hpc data check`; assert exit 2 and one line; return that line."""
    assert cli.main(["data", "check", "--dataset", dataset, str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("medsam2-hpc: error: ")
    return err


def _btcv(tmp_path: Path, layout: str) -> Path:
    return synthetic.make_btcv(tmp_path / layout, layout, n_train=2, n_test=1, depth=8, size=32)


def _refuge(tmp_path: Path, layout: str) -> Path:
    return synthetic.make_refuge(tmp_path / layout, layout, n_train=2, n_test=1, size=32)


@pytest.mark.parametrize("dataset", ["refuge", "btcv"])
def test_missing_and_empty_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture, dataset: str) -> None:
    assert f"{tmp_path / 'nope'}: " in _check(capsys, dataset, tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert f"{tmp_path / 'empty'}: no " in _check(capsys, dataset, tmp_path / "empty")


def test_empty_split_dir(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "Training" / "image").mkdir(parents=True)
    assert "Training/image: no BTCV cases" in _check(capsys, "btcv", tmp_path)


def test_btcv_case_with_images_but_no_masks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _btcv(tmp_path, "slices")
    shutil.rmtree(root / "Training/mask/img0002")
    assert "img0002 has images but no masks" in _check(capsys, "btcv", root)
    (root / "Training/mask/img0002").mkdir()
    np.save(root / "Training/mask/img0002/0.npy", np.zeros((32, 32), np.uint8))
    assert "Training/mask/img0002/1.npy: mask missing" in _check(capsys, "btcv", root)


def test_nifti_case_with_image_but_no_label(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _btcv(tmp_path, "nifti")
    (root / "labelsTr/label0002.nii.gz").unlink()
    assert "labelsTr/label0002.nii.gz: label file missing" in _check(capsys, "btcv", root)
    (root / "dataset_0.json").unlink()
    assert "imagesTr/img0002.nii.gz: case has an image but no label" in _check(capsys, "btcv", root)


def test_refuge_case_with_image_but_no_masks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _refuge(tmp_path, "multirater")
    for path in (root / "Test-400/T0001").glob("*_seg_cup_*"):
        path.unlink()
    assert "case T0001 has an image but no cup masks" in _check(capsys, "refuge", root)
    root = _refuge(tmp_path, "challenge")
    (root / "REFUGE-Validation400-GT/Disc_Cup_Masks/V0001.bmp").unlink()
    assert "REFUGE-Validation400/V0001.jpg: image has no mask" in _check(capsys, "refuge", root)


@pytest.mark.parametrize("dataset,layout,victim", [
    ("btcv", "slices", "Training/image/img0001/3.jpg"),
    ("refuge", "multirater", "Training-400/g0001/g0001_cropped.jpg"),
    ("refuge", "challenge", "Annotation-Training400/Disc_Cup_Masks/Non-Glaucoma/n0002.bmp"),
])
@pytest.mark.parametrize("cut", ["header", "data"])
def test_corrupt_image(tmp_path: Path, capsys: pytest.CaptureFixture, dataset: str, layout: str,
                       victim: str, cut: str) -> None:
    root = _btcv(tmp_path, layout) if dataset == "btcv" else _refuge(tmp_path, layout)
    path = root / victim
    data = path.read_bytes()
    path.write_bytes(data[:40] if cut == "header" else data[: len(data) // 2])
    assert f"{path}: corrupt or unreadable image" in _check(capsys, dataset, root)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_nifti(tmp_path: Path, capsys: pytest.CaptureFixture, damage: str) -> None:
    root = _btcv(tmp_path, "nifti")
    path = root / "imagesTr/img0002.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else gzip.compress(b"not a nifti" * 50))
    assert f"{path}: corrupt or unreadable NIfTI" in _check(capsys, "btcv", root)


def test_corrupt_npy(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _btcv(tmp_path, "slices")
    path = root / "Test/mask/img0003/5.npy"
    path.write_bytes(b"\x93NUMPY garbage")
    assert f"{path}: corrupt or unreadable .npy" in _check(capsys, "btcv", root)


def test_shape_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _btcv(tmp_path, "slices")
    path = root / "Training/mask/img0001/2.npy"
    np.save(path, np.zeros((32, 30), np.uint8))
    assert f"{path}: mask shape (32, 30) != image shape (32, 32)" in _check(capsys, "btcv", root)

    root = _btcv(tmp_path, "nifti")
    path = root / "labelsTr/label0003.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 7), np.uint8), nib.load(path).affine), path)
    assert f"{path}: label shape" in _check(capsys, "btcv", root)

    root = _refuge(tmp_path, "multirater")
    path = root / "Training-400/n0002/n0002_seg_cup_4_cropped.jpg"
    Image.new("L", (16, 32)).save(path)
    assert f"{path}: mask is 16x32 but its image" in _check(capsys, "refuge", root)


def test_label_values_outside_the_organ_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _btcv(tmp_path, "slices")
    path = root / "Test/mask/img0003/4.npy"
    label = np.load(path)
    label[0, 0] = 14
    np.save(path, label)
    assert f"{path}: label value 14 outside the BTCV organ ids 0..13" in _check(capsys, "btcv", root)

    root = _btcv(tmp_path, "nifti")
    path = root / "labelsTr/label0001.nii.gz"
    img = nib.load(path)
    data = np.asarray(img.dataobj).astype(np.int16)
    data[0, 0, 0] = -1
    nib.save(nib.Nifti1Image(data, img.affine), path)
    assert f"{path}: label value -1 outside" in _check(capsys, "btcv", root)


def test_unknown_dataset_name(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert "--dataset: 'btvc' is not one of refuge, btcv (did you mean 'btcv'?)" in _check(
        capsys, "btvc", tmp_path)
    assert check_dataset("REFUGE") == "refuge"
    with pytest.raises(InputError, match="-dataset: 'isic'"):
        check_dataset("isic")


def test_synth_refuses_a_wrong_layout_or_a_full_directory(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    out = str(tmp_path)
    assert cli.main(["data", "synth", "--kind", "btcv", "--layout", "multirater", "--out", out]) == 2
    assert "--layout (for --kind btcv)" in capsys.readouterr().err
    (tmp_path / "keep.txt").write_text("x")
    assert cli.main(["data", "synth", "--kind", "refuge", "--out", str(tmp_path)]) == 2
    assert "--out" in capsys.readouterr().err and sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_synth_then_check_succeeds(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "btcv"
    assert cli.main(["data", "synth", "--kind", "btcv", "--layout", "nifti", "--out", str(out),
                     "--cases", "2", "--size", "32", "--depth", "8"]) == 0
    assert cli.main(["data", "check", "--dataset", "btcv", str(out)]) == 0
    assert '"layout": "nifti"' in capsys.readouterr().out


def test_unlabelled_policy_and_bad_test_list(tmp_path: Path) -> None:
    from medsam2_hpc.data.btcv import BTCVVolumes

    root = _btcv(tmp_path, "nifti")
    with pytest.raises(InputError, match="labels: 'maybe' is not one of required, optional"):
        BTCVVolumes(root, "test", labels="maybe")
    split_file = root / "dataset_0.json"
    listing = json.loads(split_file.read_text())
    for bad, message in (({"path": "imagesTs/x.nii.gz"}, r"test\[0\] must be an image path"),
                         ("imagesTs/img0009.nii.gz", "imagesTs/img0009.nii.gz: image file missing")):
        split_file.write_text(json.dumps({**listing, "test": [bad]}))
        with pytest.raises(InputError, match=message):
            BTCVVolumes(root, "unlabelled", labels="optional")
    split_file.write_text(json.dumps({**listing, "test": "imagesTs"}))
    with pytest.raises(InputError, match="key 'test' must be a list"):
        BTCVVolumes(root, "unlabelled", labels="optional")
    # a label the data names stays required even when labels are optional: that copy is broken
    (root / "labelsTr/label0003.nii.gz").unlink()
    split_file.write_text(json.dumps(listing))
    with pytest.raises(InputError, match="labelsTr/label0003.nii.gz: label file missing"):
        BTCVVolumes(root, "test", labels="optional")
    # a mask folder with a missing slice is broken too
    root = _btcv(tmp_path, "slices")
    (root / "Test/mask/img0003/2.npy").unlink()
    with pytest.raises(InputError, match="img0003/2.npy: mask missing"):
        BTCVVolumes(root, "test", labels="optional")


def test_corrupt_image_after_ultralytics_patched_pil(tmp_path: Path) -> None:
    """Ultralytics replaces PIL's Image.open on import (YOLO runs, and this test session): a
    corrupt JPEG must still be one line naming the file, not ModuleNotFoundError: pi_heif."""
    import ultralytics.utils.patches  # noqa: F401  the patch applies on import

    from medsam2_hpc.data.images import read_image

    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(InputError, match=r"x\.jpg: corrupt or unreadable image"):
        read_image(bad, "RGB")
