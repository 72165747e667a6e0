"""Metrics on arrays small enough to check by eye, including every empty case."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medsam2_hpc import metrics


def test_dice_and_iou_on_2x2() -> None:
    pred = np.array([[1, 1], [0, 0]])
    truth = np.array([[1, 0], [0, 0]])
    assert metrics.dice(pred, truth) == pytest.approx(2 * 1 / (2 + 1))
    assert metrics.iou(pred, truth) == pytest.approx(1 / 2)
    assert metrics.dice(truth, truth) == pytest.approx(1.0)


def test_dice_accepts_torch_and_4x4() -> None:
    truth = torch.zeros(4, 4)
    truth[:2, :2] = 1  # 4 pixels
    pred = torch.zeros(4, 4)
    pred[1:3, 1:3] = 1  # 4 pixels, 1 shared
    assert metrics.dice(pred, truth) == pytest.approx(2 * 1 / 8)
    assert metrics.iou(pred, truth) == pytest.approx(1 / 7)


@pytest.mark.parametrize("fn", [metrics.dice, metrics.iou])
def test_empty_cases(fn) -> None:
    empty, full = np.zeros((2, 2)), np.ones((2, 2))
    assert math.isnan(fn(empty, empty))  # absent in both: excluded from means
    assert fn(full, empty) == 0.0  # absent in truth but predicted: an error
    assert fn(empty, full) == 0.0  # missed entirely


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shape"):
        metrics.dice(np.zeros((2, 2)), np.zeros((2, 3)))


def test_probs_to_mask_applies_sigmoid_first() -> None:
    logits = torch.tensor([-1.0, 0.0, 0.2, 3.0])
    assert metrics.probs_to_mask(logits).tolist() == [False, False, True, True]
    # a raw-logit threshold of 0.5 would drop logit 0.2 (p = 0.55); p > 0.9 needs logit > 2.197
    assert metrics.probs_to_mask(np.array([0.2, 2.0, 2.3]), threshold=0.9).tolist() == [False, False, True]


def test_hd95_parallel_lines_with_anisotropic_spacing() -> None:
    truth = np.zeros((8, 8), bool)
    pred = truth.copy()
    truth[2, 1:7] = True
    pred[5, 1:7] = True  # 3 rows away; rows are 2 mm apart -> every surface point is 6 mm off
    assert metrics.hd95(pred, truth, spacing=(2.0, 0.5)) == pytest.approx(6.0, rel=1e-5)
    assert metrics.hd95(pred, truth) == pytest.approx(3.0, rel=1e-5)  # no spacing: voxels


def test_hd95_offset_slabs_3d_and_single_points() -> None:
    truth = np.zeros((6, 8, 8), bool)
    pred = truth.copy()
    truth[1, 2:6, 2:6] = True
    pred[4, 2:6, 2:6] = True  # 3 slices of 2.5 mm
    assert metrics.hd95(pred, truth, spacing=(2.5, 1.0, 1.0)) == pytest.approx(7.5, rel=1e-5)
    a, b = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    a[0, 0], b[3, 4] = True, True
    assert metrics.hd95(a, b, spacing=(2.0, 0.5)) == pytest.approx(math.hypot(6.0, 2.0), rel=1e-5)


def test_hd95_nan_when_either_side_is_empty() -> None:
    empty, one = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    one[1, 1] = True
    assert math.isnan(metrics.hd95(empty, one, (1.0, 1.0)))
    assert math.isnan(metrics.hd95(one, empty, (1.0, 1.0)))
    assert math.isnan(metrics.hd95(empty, empty, (1.0, 1.0)))


def _volumes() -> tuple[np.ndarray, np.ndarray]:
    """3 slices of 2x2. Organ 1 in slices 0-1 of the truth; organ 2 only predicted; organ 3 nowhere."""
    truth = np.zeros((3, 2, 2), np.uint8)
    truth[0] = [[1, 1], [0, 0]]
    truth[1] = [[1, 0], [0, 0]]
    pred = np.zeros((3, 2, 2), np.uint8)
    pred[0] = [[1, 1], [0, 0]]  # slice Dice 1
    pred[1] = [[1, 1], [0, 0]]  # slice Dice 2*1/(2+1)
    pred[2] = [[1, 0], [0, 2]]  # a false positive of organ 1 on a slice the truth lacks it
    return pred, truth


def test_volume_scores_volumetric_vs_per_slice() -> None:
    pred, truth = _volumes()
    scores = metrics.volume_scores(pred, truth, {1: "a", 2: "b", 3: "c"}, spacing=(1, 1, 1))
    # volumetric: truth 3 voxels, pred 5 voxels, overlap 3
    assert scores["dice"]["a"] == pytest.approx(2 * 3 / 8)
    assert scores["iou"]["a"] == pytest.approx(3 / 5)
    # per slice: mean over slices 0 and 1 only (where the truth has the organ)
    assert scores["per_slice"]["a"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert scores["dice"]["b"] == 0.0 and math.isnan(scores["per_slice"]["b"])
    assert math.isnan(scores["dice"]["c"]) and math.isnan(scores["iou"]["c"])
    assert all(math.isnan(v) for v in scores["hd95"].values())  # not asked for


def test_volume_scores_hd95_on_request() -> None:
    pred, truth = _volumes()
    scores = metrics.volume_scores(torch.from_numpy(pred), torch.from_numpy(truth), {1: "a", 2: "b"},
                                   spacing=(3.0, 1.0, 1.0), hd95=True)
    assert scores["hd95"]["a"] == pytest.approx(metrics.hd95(pred == 1, truth == 1, (3.0, 1.0, 1.0)))
    assert scores["hd95"]["a"] > 0.0  # the stray voxel of slice 2 is a surface error
    assert math.isnan(scores["hd95"]["b"])


def test_summarise_skips_nan_and_none() -> None:
    per_case = {
        "c1": {"a": 0.8, "b": math.nan},
        "c2": {"a": 0.6, "b": 0.5},
        "c3": {"a": None, "b": 0.7, "c": math.nan},
    }
    per_class, mean = metrics.summarise(per_case)
    assert per_class["a"] == pytest.approx(0.7)
    assert per_class["b"] == pytest.approx(0.6)
    assert math.isnan(per_class["c"])
    assert mean == pytest.approx(0.65)  # mean over classes that were scored
    assert math.isnan(metrics.summarise({"c1": {"a": None}})[1])
