"""The one scoring path: hand-computed cases, HD95 units, and every trainer going through it.

The last test runs each of the four trainers once (tiny sizes, CPU, random SAM2 Hiera-T) with
the data loaders and the scorer instrumented: it shows that all of them score through
``Scorer.add``, on the test cases only, and that no test case is read before the final
evaluation (selection reads val only).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medsam2_hpc import scoring
from medsam2_hpc.data import btcv, synthetic
from medsam2_hpc.data.refuge import RefugeDataset
from medsam2_hpc.scoring import Scorer, resize_scores
from medsam2_hpc.task import RunDir, Task


def test_dice_iou_and_summary_by_hand():
    scorer = Scorer("px", hd95=False)
    truth = np.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]]], bool)  # class b absent
    pred = np.array([[[1, 0], [0, 0]], [[0, 0], [0, 1]]], bool)  # b predicted anyway
    record = scorer.add("c1", pred, truth, ["a", "b"])
    assert record["dice"]["a"] == pytest.approx(2 / 3) and record["iou"]["a"] == pytest.approx(1 / 2)
    assert record["dice"]["b"] == 0.0  # a false positive on an absent class is an error
    scorer.add("c2", truth, truth, ["a", "b"])  # perfect a; b absent in both: NaN, dropped
    s = scorer.summary()
    assert s.per_case == {"c1": {"a": pytest.approx(2 / 3), "b": 0.0}, "c2": {"a": 1.0}}
    assert s.per_class == {"a": pytest.approx(5 / 6), "b": 0.0}
    assert s.dice_mean == pytest.approx(5 / 12)  # mean over classes of the per-class means
    assert s.hd95_mean is None and s.fields()["hd95_unit"] == "px" and "dice_mean_per_slice" not in s.fields()


def test_volumes_volumetric_vs_per_slice_dice():
    truth = np.zeros((3, 2, 2), np.uint8)
    truth[0] = [[1, 1], [0, 0]]
    truth[1] = [[1, 0], [0, 0]]
    pred = np.zeros_like(truth)
    pred[0] = [[1, 1], [0, 0]]  # slice Dice 1
    pred[1] = [[1, 1], [0, 0]]  # slice Dice 2*1/(2+1)
    pred[2] = [[1, 0], [0, 2]]  # a false positive of organ 1 on a slice the truth lacks it
    scorer = Scorer("px", hd95=False, per_slice=True)
    record = scorer.add_labels("v", torch.from_numpy(pred), truth, {1: "a", 2: "b", 3: "c"})
    assert record["dice"]["a"] == pytest.approx(2 * 3 / 8)  # truth 3 voxels, pred 5, overlap 3
    assert record["per_slice"]["a"] == pytest.approx((1.0 + 2 / 3) / 2)  # slices 0 and 1 only
    assert record["dice"]["b"] == 0.0 and math.isnan(record["per_slice"]["b"])
    assert math.isnan(record["dice"]["c"]) and math.isnan(record["hd95"]["a"])  # hd95 not asked for
    assert scorer.summary().dice_mean_per_slice == pytest.approx((1.0 + 2 / 3) / 2)


def _one_voxel_nifti(root: Path, spacing_xyz: tuple[float, float, float]) -> Path:
    """A raw-layout BTCV copy whose only test case has one voxel of organ 1 (diagonal RAS affine)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    affine = np.diag([*spacing_xyz, 1.0])
    label = np.zeros((8, 8, 8), np.uint8)
    label[4, 4, 2] = 1  # (x, y, z)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), affine), root / "imagesTr/img0001.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), root / "labelsTr/label0001.nii.gz")
    entry = {"image": "imagesTr/img0001.nii.gz", "label": "labelsTr/label0001.nii.gz"}
    (root / "dataset_0.json").write_text(json.dumps({"training": [], "validation": [entry]}))
    return root


def test_hd95_in_mm_on_an_anisotropic_nifti(tmp_path: Path):
    volumes = btcv.BTCVVolumes(_one_voxel_nifti(tmp_path, (1.0, 1.0, 3.0)), "test")
    volume = volumes[0]
    assert volumes.hd95_unit == "mm" and volume.spacing == pytest.approx((3.0, 1.0, 1.0))  # (d, h, w)
    (z, y, x), = np.argwhere(volume.label == 1)
    pred = np.zeros_like(volume.label)
    pred[z + 2, y, x] = 1  # two slices away: 2 x 3 mm
    scorer = Scorer(volumes.hd95_unit)
    assert scorer.add_labels("img0001", pred, volume.label, {1: "spleen"}, volume.spacing)["hd95"]["spleen"] \
        == pytest.approx(6.0)
    pred = np.zeros_like(volume.label)
    pred[z, y + 2, x] = 1  # two rows away: 2 x 1 mm
    assert scorer.add_labels("b", pred, volume.label, {1: "spleen"}, volume.spacing)["hd95"]["spleen"] \
        == pytest.approx(2.0)
    assert scorer.summary().hd95_mean == pytest.approx(4.0)  # per class over cases, then over classes


def test_hd95_in_pixels_on_slices(tmp_path: Path):
    root = synthetic.make_btcv(tmp_path, "slices", n_train=2, n_test=1, depth=8, size=32)
    volumes = btcv.BTCVVolumes(root, "test")
    assert volumes.hd95_unit == "px" and volumes[0].spacing == (1.0, 1.0, 1.0)
    truth = np.zeros((1, 16, 16), bool)
    truth[0, 5, 5] = True
    pred = np.zeros_like(truth)
    pred[0, 5, 8] = True  # three pixels away
    scorer = Scorer("px")
    assert scorer.add("a", pred, truth, ["cup"], spacing=(9.0, 9.0))["hd95"]["cup"] == pytest.approx(3.0)
    assert scorer.summary().fields()["hd95_unit"] == "px"
    with pytest.raises(ValueError, match="'cm'"):
        Scorer("cm")


def test_resize_scores_is_bilinear_to_the_truth_grid():
    x = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    up = resize_scores(x[None, None], (2, 4))
    assert up.shape == (1, 1, 2, 4)
    assert up[0, 0, 0].tolist() == pytest.approx([0.0, 0.25, 0.75, 1.0])  # align_corners=False
    assert resize_scores(x, 2) is not None and torch.equal(resize_scores(x, 2), x)


@pytest.fixture
def instrumented(monkeypatch):
    """Log every case a loader decodes and every case the scorer scores, in order, from the moment
    the run directory is made (after the pre-flight check) to the end of the run."""
    events: list[tuple[str, str, str]] = []
    get, item, add = btcv.BTCVVolumes.get, RefugeDataset.__getitem__, Scorer.add

    def logged_get(self, case):
        events.append(("read", self.split, case))
        return get(self, case)

    def logged_item(self, index):
        events.append(("read", self.split, self.names[index]))
        return item(self, index)

    def logged_add(self, case, *args, **kwargs):
        events.append(("score", "", case))
        return add(self, case, *args, **kwargs)

    def started(self, task):  # the pre-flight (check) decodes one item of each split: not selection
        events.clear()
        return prepare(self, task)

    prepare = RunDir.prepare
    monkeypatch.setattr(btcv.BTCVVolumes, "get", logged_get)
    monkeypatch.setattr(RefugeDataset, "__getitem__", logged_item)
    monkeypatch.setattr(scoring.Scorer, "add", logged_add)
    monkeypatch.setattr(RunDir, "prepare", started)
    return events


TINY_SAM2 = {"epochs": 1, "image_size": 64, "sam_ckpt": "none", "num_workers": 0, "amp": "none",
             "device": "cpu"}


@pytest.mark.slow
@pytest.mark.parametrize("model, dataset, layout, hparams", [
    ("sam2-2d", "refuge", "multirater", {**TINY_SAM2, "out_size": 64, "memory_bank_size": 0}),
    ("sam2-3d", "btcv", "nifti", {**TINY_SAM2, "video_length": 2, "clips_per_epoch": 2, "hd95": False}),
    ("resnet", "refuge", "challenge", {"epochs": 1, "image_size": 64, "num_workers": 0, "batch_size": 2}),
    ("yolo", "btcv", "slices", {"epochs": 1, "image_size": 64, "num_workers": 0, "batch_size": 4,
                                "plots": False}),
])
def test_every_trainer_scores_test_once_through_the_scorer_after_selecting_on_val(
        model, dataset, layout, hparams, instrumented, tmp_path):
    from medsam2_hpc.runner import run_task

    if dataset == "refuge":
        root = synthetic.make_refuge(tmp_path / "data", layout, n_train=3, n_test=2, size=64, seed=1)
    else:
        root = synthetic.make_btcv(tmp_path / "data", layout, n_train=3, n_test=2, depth=8, size=48, seed=1)
    variant = {"resnet": "resnet18", "yolo": "yolo11n-seg"}.get(model, "hiera_t")
    prompt = {"sam2-2d": "click", "sam2-3d": "bbox"}.get(model, "none")
    task = Task(model=model, variant=variant, dataset=dataset, data_path=str(root),
                output_root=str(tmp_path / "runs"), prompt=prompt, hparams=hparams)
    metrics = run_task(task)
    test_cases = set(metrics["per_case"])
    assert metrics["split"] == "test" and metrics["selection_split"] == "val"
    assert test_cases and not test_cases & set(metrics["selection_cases"])
    test_reads = [i for i, (kind, split, _) in enumerate(instrumented) if kind == "read" and split == "test"]
    assert test_reads, "the test split was never read"
    first = test_reads[0]
    # before the first test read: training and selection, which never touch a test case
    assert all(case not in test_cases for _, _, case in instrumented[:first])
    assert {split for kind, split, _ in instrumented[:first] if kind == "read"} <= {"train", "val"}
    # from there on: only the test cases, each read and scored once
    tail = instrumented[first:]
    assert all(split in ("test", "") for _, split, _ in tail)
    scored = [case for kind, _, case in tail if kind == "score"]
    assert sorted(scored) == sorted(test_cases)
