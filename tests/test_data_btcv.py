"""BTCV volumes, clips and slices over both layouts; NIfTI geometry round trips; real MNI152 data."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medsam2_hpc.data import btcv, synthetic
from medsam2_hpc.errors import InputError


def test_slices_layout_reads_what_was_written(btcv_slices: Path) -> None:
    volumes = btcv.BTCVVolumes(btcv_slices, "train")
    assert volumes.layout == "slices"
    assert volumes.cases == ["img0001", "img0002", "img0003"]
    assert btcv.BTCVVolumes(btcv_slices, "val").cases == ["img0004"]  # carved from Training/
    assert btcv.BTCVVolumes(btcv_slices, "test").cases == ["img0005", "img0006"]
    volume = volumes.get("img0002")
    assert volume.image.shape == volume.label.shape == (20, 96, 96)
    assert volume.image.dtype == np.float32 and 0.0 <= volume.image.min() and volume.image.max() <= 1.0
    assert volume.label.dtype == np.uint8 and set(np.unique(volume.label)) == {0, 1, 2, 3, 6}
    assert volume.spacing == (1.0, 1.0, 1.0) and volume.affine is None
    # Slices are ordered numerically (10.npy after 9.npy, not after 1.npy).
    for i in (1, 2, 10, 19):
        assert np.array_equal(volume.label[i], np.load(btcv_slices / "Training/mask/img0002" / f"{i}.npy"))
    labelled = btcv.labelled_slices(volume)
    assert 0 not in labelled and 19 not in labelled and len(labelled) > 5


def test_nifti_layout_keeps_geometry_and_matches_slices_layout(btcv_nifti: Path, btcv_slices: Path) -> None:
    volumes = btcv.BTCVVolumes(btcv_nifti, "train")
    assert volumes.layout == "nifti" and volumes.cases == ["img0001", "img0002", "img0003"]
    assert btcv.BTCVVolumes(btcv_nifti, "test").cases == ["img0005", "img0006"]
    volume = volumes[0]
    source = nib.load(btcv_nifti / "imagesTr/img0001.nii.gz")
    assert np.allclose(volume.affine, source.affine)
    assert volume.spacing == pytest.approx(synthetic.SLICE_SPACING_MM)
    assert volume.source == btcv_nifti / "imagesTr/img0001.nii.gz"
    # Same seed, same volumes: the LPS NIfTI reoriented to display order equals the slice copy.
    twin = btcv.BTCVVolumes(btcv_slices, "train")[0]
    assert np.array_equal(volume.label, twin.label)
    assert np.abs(volume.image - twin.image).max() < 0.05  # JPEG rounding only


def test_ct_window_maps_hounsfield_units(tmp_path: Path) -> None:
    hu = np.array([-1000, -175, 37.5, 250, 3000], np.float32).reshape(5, 1, 1) * np.ones((1, 2, 2))
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    nib.save(nib.Nifti1Image(hu.transpose(2, 1, 0), affine), tmp_path / "imagesTr/img0001.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 5), np.uint8), affine), tmp_path / "labelsTr/label0001.nii.gz")
    (tmp_path / "dataset_0.json").write_text(json.dumps({"validation": [
        {"image": "imagesTr/img0001.nii.gz", "label": "labelsTr/label0001.nii.gz"}], "training": []}))
    image = btcv.BTCVVolumes(tmp_path, "test").get("img0001").image
    assert image[:, 0, 0] == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0])


def _reoriented_copy(src: Path, dst: Path, ornt: np.ndarray) -> None:
    """Store the same anatomy with another voxel order (e.g. RAS, or axes permuted)."""
    for sub in ("imagesTr", "labelsTr"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
        for path in (src / sub).glob("*.nii.gz"):
            img = nib.load(path)
            nib.save(img.as_reoriented(ornt), dst / sub / path.name)
    shutil.copy(src / "dataset_0.json", dst / "dataset_0.json")


@pytest.mark.parametrize("ornt", [[[0, -1], [1, -1], [2, 1]], [[1, 1], [0, -1], [2, -1]]],
                         ids=["to-RAS", "permuted"])
def test_orientation_is_undone_and_predictions_overlay_the_source(btcv_nifti: Path, tmp_path: Path,
                                                                  ornt: list) -> None:
    _reoriented_copy(btcv_nifti, tmp_path / "copy", np.array(ornt))
    reference = btcv.BTCVVolumes(btcv_nifti, "test")[0]
    volume = btcv.BTCVVolumes(tmp_path / "copy", "test")[0]
    assert np.array_equal(volume.label, reference.label)
    assert np.allclose(volume.image, reference.image)
    written = btcv.write_prediction(volume, volume.label, tmp_path / "pred")
    assert [p.name for p in written] == ["img0005.npy", "img0005.nii.gz"]
    source = nib.load(tmp_path / "copy/labelsTr/label0005.nii.gz")
    pred = nib.load(written[1])
    assert pred.shape == source.shape and np.allclose(pred.affine, source.affine)
    assert np.array_equal(np.asarray(pred.dataobj), np.asarray(source.dataobj))
    assert np.array_equal(np.load(written[0]), volume.label)


def test_volumes_are_decoded_once_and_cached(tmp_path: Path) -> None:
    root = synthetic.make_btcv(tmp_path / "b", "nifti", n_train=2, n_test=1, depth=8, size=32)
    volumes = btcv.BTCVVolumes(root, "train")
    first = volumes.get("img0001")
    shutil.rmtree(root / "imagesTr")  # later reads must not touch the disk
    assert volumes.get("img0001") is first and volumes[0] is first


def test_lru_cache_bound_evicts_the_oldest(tmp_path: Path) -> None:
    root = synthetic.make_btcv(tmp_path, "slices", n_train=3, n_test=1, depth=8, size=32)
    volumes = btcv.BTCVVolumes(root, "train", cache_size=1)
    volumes.get("img0001")
    second = volumes.get("img0002")
    shutil.rmtree(root / "Training/image/img0001")
    assert volumes.get("img0002") is second
    with pytest.raises(InputError, match="img0001"):
        volumes.get("img0001")


def test_clips_cover_labelled_windows(btcv_slices: Path) -> None:
    volumes = btcv.BTCVVolumes(btcv_slices, "test")
    clips = btcv.BTCVClips(volumes, video_length=4, image_size=48)
    everything = btcv.BTCVClips(volumes, video_length=4, image_size=48, labelled_only=False)
    assert everything.index == [(case, s) for case in volumes.cases for s in range(20 - 4 + 1)]
    labelled = {v.case: set(btcv.labelled_slices(v).tolist()) for v in volumes}
    assert clips.index == [(c, s) for c, s in everything.index if labelled[c] & set(range(s, s + 4))]
    pairs = btcv.BTCVClips(volumes, video_length=2, image_size=48)
    assert len(pairs) < 2 * 19 and all(labelled[c] & {s, s + 1} for c, s in pairs.index)
    item = clips[0]
    assert item["image"].shape == (4, 3, 48, 48) and item["image"].dtype == torch.float32
    assert item["label"].shape == (4, 48, 48) and item["label"].dtype == torch.long
    assert item["case"] == "img0005" and item["label"].any()
    volume = volumes.get(item["case"])
    start = item["start"]
    assert torch.equal(item["image"][:, 0], item["image"][:, 2])  # grey repeated on 3 channels
    native = btcv.BTCVClips(volumes, video_length=4, image_size=96)[0]
    assert np.array_equal(native["label"].numpy(), volume.label[start:start + 4])
    assert np.allclose(native["image"][:, 0].numpy(), volume.image[start:start + 4])
    with pytest.raises(InputError, match="video_length"):
        btcv.BTCVClips(volumes, video_length=21, image_size=48)


def test_slices_cover_every_labelled_slice(btcv_nifti: Path) -> None:
    volumes = btcv.BTCVVolumes(btcv_nifti, "test")
    slices = btcv.BTCVSlices(volumes, image_size=64)
    expected = [(v.case, int(i)) for v in volumes for i in btcv.labelled_slices(v)]
    assert [(slices[k]["case"], slices[k]["index"]) for k in range(len(slices))] == expected
    assert len(btcv.BTCVSlices(volumes, 64, labelled_only=False)) == 40
    item = slices[3]
    assert item["image"].shape == (3, 64, 64) and item["label"].shape == (64, 64)
    assert set(item["label"].unique().tolist()) <= {0, 1, 2, 3, 6}


def test_split_is_generated_without_dataset_json(btcv_nifti: Path, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    for sub in ("imagesTr", "labelsTr"):
        shutil.copytree(btcv_nifti / sub, tmp_path / sub)
    with caplog.at_level(logging.WARNING):
        train = btcv.BTCVVolumes(tmp_path, "train")
    assert "generated split" in caplog.text
    assert train.cases == ["img0001", "img0002", "img0003", "img0004"]
    assert btcv.BTCVVolumes(tmp_path, "val").cases == ["img0005"]  # carved from the first 80 %
    assert btcv.BTCVVolumes(tmp_path, "test").cases == ["img0006"]  # the last 20 %


def test_mni152_brain_through_the_nifti_path(tmp_path: Path) -> None:
    """Real MRI (nilearn's MNI152 template) with a grey/white-matter label volume."""
    from nilearn import datasets

    template = datasets.load_mni152_template(resolution=2)
    grey = np.asarray(datasets.load_mni152_gm_mask(resolution=2).dataobj) > 0
    white = np.asarray(datasets.load_mni152_wm_mask(resolution=2).dataobj) > 0
    labels = np.where(white, 2, np.where(grey, 1, 0)).astype(np.uint8)
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    nib.save(template, tmp_path / "imagesTr/img0001.nii.gz")
    nib.save(nib.Nifti1Image(labels, template.affine), tmp_path / "labelsTr/label0001.nii.gz")
    entry = {"image": "imagesTr/img0001.nii.gz", "label": "labelsTr/label0001.nii.gz"}
    (tmp_path / "dataset_0.json").write_text(json.dumps({"training": [entry], "validation": [entry]}))

    volume = btcv.BTCVVolumes(tmp_path, "test", window=None)[0]
    assert volume.image.shape == (95, 117, 99)  # (z, y, x) of the 99 x 117 x 95 template
    assert volume.image.min() == 0.0 and volume.image.max() == 1.0
    assert volume.spacing == (2.0, 2.0, 2.0)
    assert np.count_nonzero(volume.label == 1) == np.count_nonzero(labels == 1)
    assert np.count_nonzero(volume.label == 2) == np.count_nonzero(labels == 2)
    # White matter is brighter than grey matter on T1.
    assert volume.image[volume.label == 2].mean() > volume.image[volume.label == 1].mean()
    written = btcv.write_prediction(volume, torch.from_numpy(volume.label), tmp_path / "pred")
    back = nib.load(written[1])
    assert back.shape == template.shape and np.allclose(back.affine, template.affine)
    assert np.array_equal(np.asarray(back.dataobj), labels)


@pytest.mark.parametrize("layout", ["slices", "nifti"])
def test_generator_is_reproducible(tmp_path: Path, layout: str) -> None:
    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    first = synthetic.make_btcv(tmp_path / "a", layout, n_train=1, n_test=1, depth=8, size=32, seed=3)
    again = synthetic.make_btcv(tmp_path / "b", layout, n_train=1, n_test=1, depth=8, size=32, seed=3)
    other = synthetic.make_btcv(tmp_path / "c", layout, n_train=1, n_test=1, depth=8, size=32, seed=4)
    assert files(first) == files(again) != files(other)


def test_unlabelled_nifti_test_scans_from_dataset_json(tmp_path: Path) -> None:
    root = synthetic.make_btcv(tmp_path, "nifti", n_train=1, n_test=1, depth=8, size=32, unlabelled=2)
    listing = json.loads((root / "dataset_0.json").read_text())
    assert listing["test"] == ["imagesTs/img0003.nii.gz", "imagesTs/img0004.nii.gz"]
    # "unlabelled" = the json's test scans; test keeps "validation"; labels="required" refuses them
    assert btcv.BTCVVolumes(root, "test").cases == ["img0002"]
    with pytest.raises(InputError, match=r"imagesTs/img0003.nii.gz: case img0003 has no label file"):
        btcv.BTCVVolumes(root, "unlabelled")
    test = btcv.BTCVVolumes(root, "unlabelled", labels="optional")
    assert test.cases == ["img0003", "img0004"]
    volume = test.get("img0004")
    assert volume.label is None and volume.image.shape == (8, 32, 32)
    assert volume.source == root / "imagesTs/img0004.nii.gz"
    assert np.allclose(volume.affine, nib.load(volume.source).affine)
    assert btcv.labelled_slices(volume).size == 0
    # the optional policy changes nothing for labelled cases
    assert np.array_equal(btcv.BTCVVolumes(root, "test", labels="optional")[0].label,
                          btcv.BTCVVolumes(root, "test")[0].label)


def test_json_test_entries_may_be_objects_with_labels(tmp_path: Path) -> None:
    root = synthetic.make_btcv(tmp_path, "nifti", n_train=1, n_test=1, depth=8, size=32, unlabelled=1)
    listing = json.loads((root / "dataset_0.json").read_text())
    listing["test"] = [{"image": "imagesTs/img0003.nii.gz"}, dict(listing["validation"][0])]
    (root / "dataset_0.json").write_text(json.dumps(listing))
    volumes = btcv.BTCVVolumes(root, "unlabelled", labels="optional")
    assert [v.case for v in volumes] == ["img0003", "img0002"]
    assert volumes.get("img0003").label is None and volumes.get("img0002").label is not None
    listing["test"] = []  # an empty list: no unlabelled scans; the scored test split is unchanged
    (root / "dataset_0.json").write_text(json.dumps(listing))
    assert btcv.BTCVVolumes(root, "test").cases == ["img0002"]
    with pytest.raises(InputError, match="split 'unlabelled' has no cases"):
        btcv.BTCVVolumes(root, "unlabelled", labels="optional")


def test_unlabelled_slices_case_and_bare_folders(tmp_path: Path) -> None:
    root = synthetic.make_btcv(tmp_path / "s", "slices", n_train=1, n_test=1, depth=8, size=32, unlabelled=1)
    with pytest.raises(InputError, match="case img0003 has images but no masks"):
        btcv.BTCVVolumes(root, "test")
    test = btcv.BTCVVolumes(root, "test", labels="optional")
    assert test.cases == ["img0002", "img0003"]
    assert test.get("img0003").label is None and test.get("img0003").image.shape == (8, 32, 32)
    assert test.get("img0002").label.shape == (8, 32, 32)
    assert btcv.BTCVVolumes(root, "unlabelled", labels="optional").cases == ["img0003"]

    nifti_root = synthetic.make_btcv(tmp_path / "n", "nifti", n_train=2, n_test=1, depth=8, size=32)
    # imagesTr/ without labelsTr/ (and no split file): the generated split, every case unlabelled
    shutil.copytree(nifti_root / "imagesTr", tmp_path / "tr" / "imagesTr")
    assert [v.label for v in btcv.BTCVVolumes(tmp_path / "tr", "test", labels="optional")] == [None]
    with pytest.raises(InputError, match="img0001.nii.gz: case has an image but no label"):
        btcv.BTCVVolumes(tmp_path / "tr", "test")
    # a bare folder of scans: every split lists all of them, unlabelled
    bare = shutil.copytree(nifti_root / "imagesTr", tmp_path / "bare")
    volumes = btcv.BTCVVolumes(bare, "test", labels="optional")
    assert volumes.layout == "nifti" and volumes.cases == ["img0001", "img0002", "img0003"]
    assert volumes[1].label is None and volumes[1].affine is not None
    with pytest.raises(InputError, match="bare/img0001.nii.gz: case img0001 has no label file"):
        btcv.BTCVVolumes(bare, "train")
